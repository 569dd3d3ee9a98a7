"""Weight layouts of the recurrent kernels: the order in which each kernel family reads a
layer's integer weights, and the inverse of each layout (what the plan evaluator reads back).

The portable C kernels and the DSP unit kernels (:mod:`tinyrnn.backend.dspasm`) read one stream per
direction, :func:`kernel_layout`; the ARMv6-M unit kernels read their own copy
(:meth:`tinyrnn.backend.v6masm.V6MUnitKernel.layout`, inverse :func:`decode_v6m_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KERNEL_GROUP = 4
"""Columns one step of a recurrent kernel reads: two 32-bit words of int16 activations."""

SXTB16_ORDER = (0, 2, 1, 3)
"""Byte order of four int8 weights in one word: SXTB16 sign-extends bytes 0 and 2 into a
halfword pair (columns 0, 1: the first activation word), SXTB16 of the word rotated by 8
bytes 1 and 3 (columns 2, 3: the second)."""


def padded(cols: int) -> int:
    """``cols`` rounded up to a multiple of :data:`KERNEL_GROUP`."""
    return -(-cols // KERNEL_GROUP) * KERNEL_GROUP


def kernel_layout(gates: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """The weights of one input part (x or h) of all gates, in the order the kernel reads them.

    ``gates``: one ``(units, cols)`` integer matrix per gate (LSTM i f g o, GRU r z n, RNN h).
    Returns ``(units, groups, gates, 4)``: for each unit, for each group of 4 columns (the last
    one padded with zero weights), the 4 weights of each gate's row. 8-bit weights are stored
    in :data:`SXTB16_ORDER` within each group. A zero weight makes the padded columns'
    activations irrelevant, and the sums stay the same integers (exact, any order).
    """
    units, cols = gates[0].shape
    w = np.zeros((units, len(gates), padded(cols)), dtype=np.int64)
    for g, matrix in enumerate(gates):
        w[:, g, :cols] = matrix
    w = w.reshape(units, len(gates), -1, KERNEL_GROUP).transpose(0, 2, 1, 3)
    if bits == 8:
        w = w[..., list(SXTB16_ORDER)]
    return np.ascontiguousarray(w)


def conv_layout(weights: np.ndarray, bits: int) -> np.ndarray:
    """The integer weights of a Conv1d with one group and dilation 1, ``(out, kernel * in)``,
    as the blocked conv helpers read them: the rows in blocks of 4 output channels (the last
    block padded with zero rows), per block :func:`kernel_layout` of its 4 rows, i.e.
    ``(blocks, groups, 4, 4)``: per group of 4 columns (the last one padded with zero columns)
    one word of 4 weights per channel (int8 in :data:`SXTB16_ORDER`)."""
    rows = -(-weights.shape[0] // KERNEL_GROUP) * KERNEL_GROUP
    w = np.zeros((rows, weights.shape[1]), dtype=np.int64)
    w[:weights.shape[0]] = weights
    return kernel_layout([w[r::KERNEL_GROUP] for r in range(KERNEL_GROUP)], bits)


def decode_conv_layout(blocked: np.ndarray, out: int, cols: int, bits: int) -> np.ndarray:
    """The inverse of :func:`conv_layout`: ``(out, cols)`` weights, the padding dropped."""
    order = np.argsort(SXTB16_ORDER) if bits == 8 else np.arange(KERNEL_GROUP)
    blocks, groups = -(-out // KERNEL_GROUP), padded(cols) // KERNEL_GROUP
    w = np.asarray(blocked).reshape(blocks, groups, KERNEL_GROUP, KERNEL_GROUP)[..., order]
    w = w.transpose(0, 2, 1, 3).reshape(blocks * KERNEL_GROUP, groups * KERNEL_GROUP)
    return w[:out, :cols]


def direction_stream(x_gates: Sequence[np.ndarray], h_gates: Sequence[np.ndarray],
                     bits: int) -> np.ndarray:
    """One direction's weights as the C and DSP kernels read them: per unit, the x part's
    groups, then the h part's, ``(units, unit elements)``."""
    units = x_gates[0].shape[0]
    return np.concatenate([kernel_layout(x_gates, bits).reshape(units, -1),
                           kernel_layout(h_gates, bits).reshape(units, -1)], axis=1)


def decode_stream(stream: np.ndarray, G: int, x_cols: int, h_cols: int, bits: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`direction_stream`: ``(units, G, x_cols)`` and ``(units, G, h_cols)``
    weights, the padding dropped."""
    units = stream.shape[0]
    order = np.argsort(SXTB16_ORDER) if bits == 8 else np.arange(KERNEL_GROUP)
    parts = []
    start = 0
    for cols in (x_cols, h_cols):
        groups = padded(cols) // KERNEL_GROUP
        size = groups * G * KERNEL_GROUP
        block = stream[:, start:start + size].reshape(units, groups, G, KERNEL_GROUP)
        block = block[..., order].transpose(0, 2, 1, 3).reshape(units, G, -1)
        parts.append(block[:, :, :cols])
        start += size
    if start != stream.shape[1]:
        raise ValueError(f"a stream of {stream.shape[1]} weights per unit holds {start}")
    return parts[0], parts[1]


def float_layout(gates: Sequence[np.ndarray]) -> np.ndarray:
    """The float32 weights of one input part (x or h) of all gates, in the order the float
    kernel reads them: per unit, for each full group of 4 columns the 4 weights of each gate's
    row, then the last ``cols % 4`` columns of each gate's row (no padding: a zero weight times
    an infinite activation would be NaN). Returns ``(units, G * cols)``."""
    units, cols = gates[0].shape
    w = np.stack(gates, axis=1)  # (units, G, cols)
    full = cols - cols % KERNEL_GROUP
    groups = w[:, :, :full].reshape(units, len(gates), -1, KERNEL_GROUP).transpose(0, 2, 1, 3)
    return np.concatenate([groups.reshape(units, -1), w[:, :, full:].reshape(units, -1)], axis=1)


def float_stream(x_gates: Sequence[np.ndarray], h_gates: Sequence[np.ndarray]) -> np.ndarray:
    """One direction's float32 weights as the float kernel reads them: per unit, the x part
    (:func:`float_layout`), then the h part, ``(units, G * (x_cols + h_cols))``."""
    return np.concatenate([float_layout(x_gates), float_layout(h_gates)], axis=1)


def decode_float_stream(stream: np.ndarray, G: int, x_cols: int, h_cols: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`float_stream`: ``(units, G, x_cols)`` and ``(units, G, h_cols)``."""
    units = stream.shape[0]
    parts = []
    start = 0
    for cols in (x_cols, h_cols):
        full = cols - cols % KERNEL_GROUP
        block = stream[:, start:start + G * full].reshape(units, -1, G, KERNEL_GROUP)
        tail = stream[:, start + G * full:start + G * cols].reshape(units, G, cols - full)
        parts.append(np.concatenate([block.transpose(0, 2, 1, 3).reshape(units, G, full), tail],
                                    axis=2))
        start += G * cols
    if start != stream.shape[1]:
        raise ValueError(f"a stream of {stream.shape[1]} weights per unit holds {start}")
    return parts[0], parts[1]


def decode_v6m_layout(kernel, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :meth:`tinyrnn.backend.v6masm.V6MUnitKernel.layout`: ``(units, G, nx)`` and
    ``(units, G, nh)``, read at the byte positions the kernel reads."""
    units = data.shape[0]
    out = []
    for part, n in enumerate((kernel.nx, kernel.nh)):
        rows = np.zeros((units, kernel.G, n), dtype=np.int64)
        for row in range(kernel.G):
            for column, at in enumerate(kernel.positions(part, row)):
                rows[:, row, column] = data[:, at]
        out.append(rows)
    return out[0], out[1]


MVE_CHUNK = 8
"""Columns one step of an MVE (Helium) kernel reads: one 128-bit vector of 8 int16 activations."""


def mve_layout(gates: Sequence[np.ndarray]) -> np.ndarray:
    """The weights of one input part (x or h) of all gates, in the order the MVE kernels read
    them (:mod:`tinyrnn.backend.render`, ``kernels.c.j2``: ``mve_kernels``).

    Returns ``(units, chunks, gates, 8)``: for each unit, for each chunk of 8 columns (the last
    one padded with zero weights), the 8 weights of each gate's row in column order, so one
    widening vector load (``VLDRB.S16`` or ``VLDRH.S16``) reads one row's chunk. The kernel
    loads a last partial chunk's activations under a tail predicate (zeros past the end)."""
    units, cols = gates[0].shape
    chunks = -(-cols // MVE_CHUNK)
    w = np.zeros((units, len(gates), chunks * MVE_CHUNK), dtype=np.int64)
    for g, matrix in enumerate(gates):
        w[:, g, :cols] = matrix
    return np.ascontiguousarray(w.reshape(units, len(gates), chunks, MVE_CHUNK)
                                .transpose(0, 2, 1, 3))


def mve_stream(x_gates: Sequence[np.ndarray], h_gates: Sequence[np.ndarray]) -> np.ndarray:
    """One direction's weights as the MVE kernels read them: per unit, the x part's chunks,
    then the h part's, ``(units, unit elements)``."""
    units = x_gates[0].shape[0]
    return np.concatenate([mve_layout(x_gates).reshape(units, -1),
                           mve_layout(h_gates).reshape(units, -1)], axis=1)


def decode_mve_stream(stream: np.ndarray, G: int, x_cols: int, h_cols: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`mve_stream`: ``(units, G, x_cols)`` and ``(units, G, h_cols)``."""
    units = stream.shape[0]
    parts = []
    start = 0
    for cols in (x_cols, h_cols):
        chunks = -(-cols // MVE_CHUNK)
        size = chunks * G * MVE_CHUNK
        block = stream[:, start:start + size].reshape(units, chunks, G, MVE_CHUNK)
        parts.append(block.transpose(0, 2, 1, 3).reshape(units, G, -1)[:, :, :cols])
        start += size
    if start != stream.shape[1]:
        raise ValueError(f"a stream of {stream.shape[1]} weights per unit holds {start}")
    return parts[0], parts[1]
