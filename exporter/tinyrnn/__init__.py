"""tinyrnn: PyTorch RNN/LSTM/GRU models to C for microcontrollers, proven equal to torch."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import export  # noqa: E402
from .errors import TinyRNNError  # noqa: E402

__all__ = ["TinyRNNError", "export", "__version__"]
