"""The quant table (host_tests/quant_table.py) for the LSTM cells, with and without projection."""

from quant_table import make

globals().update(make(("lstm", "lstm_proj")))
