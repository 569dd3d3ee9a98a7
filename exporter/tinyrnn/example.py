"""The built-in example: a small LSTM gesture-like classifier, trained in seconds on a
synthetic task, then exported, compiled on the host and verified against torch.

``tinyrnn example --out DIR`` runs it end to end and prints a short report.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import TinyRNNError

CLASSES = ("sine", "square", "sawtooth", "chirp")
FEATURES = 3
SEQ_LEN = 24


class GestureLSTM(nn.Module):
    """batch_first LSTM -> Linear on the last step -> softmax."""

    def __init__(self, features: int = FEATURES, hidden: int = 16, classes: int = len(CLASSES)):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return torch.softmax(self.head(out[:, -1]), dim=-1)


def make_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 3-axis waveforms of four shapes with random frequency, phase and amplitude."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), size=n)
    t = np.arange(SEQ_LEN, dtype=np.float64)[None, :, None]
    freq = rng.uniform(0.05, 0.15, size=(n, 1, FEATURES))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, FEATURES))
    amp = rng.uniform(0.5, 1.5, size=(n, 1, FEATURES))
    arg = 2 * np.pi * freq * t + phase
    shapes = {
        0: np.sin(arg),
        1: np.sign(np.sin(arg)),
        2: 2 * ((arg / (2 * np.pi)) % 1.0) - 1,
        3: np.sin(arg * (1 + t / SEQ_LEN)),
    }
    x = np.zeros((n, SEQ_LEN, FEATURES))
    for k, wave in shapes.items():
        x[labels == k] = wave[labels == k]
    x = amp * x + rng.normal(0, 0.1, size=x.shape)
    return x.astype(np.float32), labels


def train(seed: int = 0, steps: int = 300) -> tuple[GestureLSTM, float]:
    """Train the example model; returns it and the seconds it took."""
    torch.manual_seed(seed)
    x, y = make_task(1024, seed)
    model = GestureLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=torch.Generator().manual_seed(step))
        probs = model(xt[idx])
        loss = nn.functional.nll_loss(torch.log(probs + 1e-9), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), time.perf_counter() - start


def main(out_dir: Path, board: str = "mps2-an386", fmt: str = "w8a16",
         layer_formats: dict[str, str] | None = None) -> int:
    """Train, save as .pt2, export, compile on the host, verify, run on a board; report.

    The files appear in ``out_dir`` when the run is complete (:mod:`tinyrnn.outputs`)."""
    from .api import FORMATS
    from .outputs import output_folder
    from .passes.quantize import check_layer_formats
    from .targets.boards import load_board

    if fmt not in FORMATS:
        raise TinyRNNError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_layer_formats(fmt, layer_formats)  # before the work: a float32 export takes none
    load_board(board)  # an unknown board fails before the training
    with output_folder(out_dir, "--out") as work:
        return _run(work, Path(out_dir), board, fmt, layer_formats)


def _run(out_dir: Path, shown: Path, board: str, fmt: str,
         layer_formats: dict[str, str] | None = None) -> int:
    """:func:`main` in the staging folder ``out_dir``; messages name ``shown``."""
    from .api import export_program
    from .check.verify import torch_outputs, verify
    from .frontend.reader import archive_bytes, load_program, trace
    from .targets.host import load

    model, seconds = train()
    x_calib, _ = make_task(256, seed=2)
    x_test, y_test = make_task(256, seed=1)
    np.save(out_dir / "x_test.npy", x_test)
    np.save(out_dir / "x_calibration.npy", x_calib)
    archive = out_dir / "gesture.pt2"
    archive.write_bytes(archive_bytes(trace(model, (torch.from_numpy(x_test[:2]),))))
    print(f"trained GestureLSTM (LSTM 3->16, Linear 16->4, softmax) in {seconds:.1f} s; "
          f"saved {shown / archive.name}")

    c_dir = out_dir / "c"
    manifest = export_program(load_program(archive), c_dir, format=fmt, name="gesture",
                              calibration=None if fmt == "float32" else [x_calib],
                              layer_formats=layer_formats)
    sizes = manifest["sizes"]
    print(f"exported {shown / c_dir.name}/gesture.c, gesture.h, gesture.json ({fmt}; weights "
          f"{sizes['weights_bytes']} B, state {sizes['state_bytes']} B, scratch "
          f"{sizes['scratch_bytes']} B)")

    print(f"compiled on the host with gcc -std=c99 -O2 -Wall -Wextra -Werror -pedantic; "
          f"tinyrnn verify on {len(x_test)} test sequences:")
    report = verify(archive, c_dir, out_dir / "x_test.npy")
    for line in report["lines"][1:]:
        print("  " + line)
    (probs_c,) = load(c_dir).run(x_test)
    (probs_t,) = torch_outputs(load_program(archive), [x_test], manifest["interface"])
    acc_t = float(np.mean(probs_t.argmax(1) == y_test))
    acc_c = float(np.mean(probs_c.argmax(1) == y_test))
    agree = float(np.mean(probs_t.argmax(1) == probs_c.argmax(1)))
    print(f"  accuracy: torch {acc_t:.1%}, C {acc_c:.1%}; prediction agreement {agree:.1%}")
    ok = report["ok"]
    ok &= on_board(c_dir, x_test, probs_c, probs_t, board, exact=fmt != "float32")
    print("RESULT: OK" if ok else "RESULT: MISMATCH")
    return 0 if ok else 1


def on_board(c_dir: Path, x: np.ndarray, host_out: np.ndarray, torch_out: np.ndarray,
             board_name: str, exact: bool) -> bool:
    """Build for ``board_name``, run the test set under QEMU, compare with host and torch."""
    from .check.verify import sqnr_db
    from .targets.boards import load_board
    from .targets.cross import run

    board = load_board(board_name)
    (probs_b,), firmware, result = run(c_dir, board, [x])
    sizes = firmware.sizes
    vs_host = float(np.max(np.abs(probs_b - host_out)))
    print(f"built for {board.name} ({board.description}) with arm-none-eabi-gcc and ran the "
          f"{len(x)} sequences under QEMU in {result.seconds:.2f} s:")
    same = np.array_equal(probs_b, host_out) if exact else vs_host <= 1e-6
    equal = "bit for bit equal" if np.array_equal(probs_b, host_out) else (
        f"max abs difference {vs_host:.2e}")
    vs_torch = float(np.max(np.abs(probs_b - torch_out)))
    print(f"  board vs host: {equal}; board vs torch: SQNR {sqnr_db(torch_out, probs_b):.1f} dB, "
          f"max abs error {vs_torch:.2e}")
    print(f"  flash: model code {sizes.model_code} B + weights {sizes.weights} B "
          f"(whole image {sizes.flash_used} B of {board.flash.length} B); RAM: model state + "
          f"scratch {sizes.state} B, stack used {result.stack_peak} B")
    if same:
        print(f"{board.name}: output equals the host's{' bit for bit' if exact else ''}, so the "
              "comparison with the reference and torch above holds on the board")
    else:
        print(f"{board.name}: MISMATCH with the host")
    return bool(same)
