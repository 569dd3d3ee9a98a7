"""The recurrent cells tinyrnn knows, described once: their gates, the gates' names, order,
titles and activations, and how their weights are split into accumulators.

Every stage reads this table: the frontend (torch's packed gate order), the IR, quantization,
the float and integer references, the lowering, the templates' comments, ``tinyrnn profile``
(MACs) and the benchmark. Nothing else spells out a gate count or a gate name list.

torch packs the gate rows of ``weight_ih``/``weight_hh`` as LSTM ``i, f, g, o``, GRU
``r, z, n`` and RNN ``h``. Each gate sums ``W_x x + W_h h + b``, except a *split* gate (GRU
``n``): torch multiplies the reset gate into ``W_hn h + b_hn`` alone, so its x part and h part
are two accumulators (``n`` and ``nh``), each with its own bias.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CELLS", "CellSpec", "GateSpec", "cell_spec", "recurrent_macs"]


@dataclass(frozen=True)
class GateSpec:
    """One gate: its name in the IR and the generated C, its title, its activation."""

    name: str
    title: str
    activation: str  # "sigmoid", "tanh" or "relu"
    split: bool = False  # x and h parts are separate accumulators (GRU n)

    @property
    def accumulators(self) -> tuple[str, ...]:
        """The names of its accumulators: ``(name,)``, or ``(name, name + "h")`` when split."""
        return (self.name, self.name + "h") if self.split else (self.name,)


@dataclass(frozen=True)
class CellSpec:
    """One recurrent cell kind (``CellKind`` of the IR)."""

    kind: str  # "lstm", "gru", "rnn_tanh", "rnn_relu"
    family: str  # the torch module family: "lstm", "gru", "rnn"
    title: str  # "LSTM", "GRU", "Elman RNN"
    module: str  # the torch module
    gates: tuple[GateSpec, ...]
    math: tuple[str, ...]  # the float step, one line each (comments of the generated C)
    cell_state: bool = False  # LSTM: c beside h
    projection: bool = False  # LSTM: proj_size > 0 projects h
    bounded: bool = True  # |h| < 1 without a projection (tanh or sigmoid products); relu: no

    @property
    def gate_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.gates)

    @property
    def G(self) -> int:
        """Gate rows per unit: what the matrix-vector kernels sum per unit."""
        return len(self.gates)

    @property
    def accumulators(self) -> tuple[str, ...]:
        """Every accumulator's name, in gate order (GRU: r z n nh)."""
        return tuple(a for g in self.gates for a in g.accumulators)

    def gate(self, name: str) -> GateSpec:
        return next(g for g in self.gates if g.name == name)

    @property
    def state_names(self) -> tuple[str, ...]:
        """The recurrent state vectors, in torch's order of (h0, c0) and (h_n, c_n)."""
        return ("h", "c") if self.cell_state else ("h",)


_LSTM_GATES = (
    GateSpec("i", "input gate", "sigmoid"),
    GateSpec("f", "forget gate", "sigmoid"),
    GateSpec("g", "cell gate", "tanh"),
    GateSpec("o", "output gate", "sigmoid"),
)
_GRU_GATES = (
    GateSpec("r", "reset gate", "sigmoid"),
    GateSpec("z", "update gate", "sigmoid"),
    GateSpec("n", "new gate", "tanh", split=True),
)

CELLS: dict[str, CellSpec] = {spec.kind: spec for spec in (
    CellSpec("lstm", "lstm", "LSTM", "torch.nn.LSTM", _LSTM_GATES, (
        "i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)",
        "f = sigmoid(W_if x + b_if + W_hf h + b_hf)",
        "g = tanh(W_ig x + b_ig + W_hg h + b_hg)",
        "o = sigmoid(W_io x + b_io + W_ho h + b_ho)",
        "c = f * c + i * g",
        "h = o * tanh(c)",
    ), cell_state=True, projection=True),
    CellSpec("gru", "gru", "GRU", "torch.nn.GRU", _GRU_GATES, (
        "r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)",
        "z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)",
        "n = tanh(W_in x + b_in + r * (W_hn h + b_hn))",
        "h = (1 - z) * n + z * h",
    )),
    CellSpec("rnn_tanh", "rnn", "Elman RNN", "torch.nn.RNN", (
        GateSpec("h", "", "tanh"),), ("h = tanh(W_ih x + b_ih + W_hh h + b_hh)",)),
    CellSpec("rnn_relu", "rnn", "Elman RNN", "torch.nn.RNN", (
        GateSpec("h", "", "relu"),), ("h = relu(W_ih x + b_ih + W_hh h + b_hh)",),
        bounded=False),
)}

PROJECTION_MATH = "h = W_hr h (projection)"


def cell_spec(kind: str) -> CellSpec:
    """The spec of ``kind`` ("lstm", "gru", "rnn_tanh", "rnn_relu"; "rnn" means "rnn_tanh")."""
    if kind == "rnn":
        kind = "rnn_tanh"
    try:
        return CELLS[kind]
    except KeyError:
        raise ValueError(f"unknown recurrent cell {kind!r}; known: {', '.join(CELLS)}") from None


def recurrent_macs(kind: str, input_size: int, hidden: int, state: int | None = None) -> int:
    """Multiply-accumulates of one step of one direction: G * H * (I + P), plus the projection
    P * H of a projected LSTM (``state`` = P, the size of h; default H)."""
    spec = cell_spec(kind)
    state = hidden if state is None else state
    macs = spec.G * hidden * (input_size + state)
    if spec.projection and state != hidden:
        macs += state * hidden
    return macs
