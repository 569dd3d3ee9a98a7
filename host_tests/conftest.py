import sys
from pathlib import Path

# host_tests/models.py is imported by the tests as a plain module
sys.path.insert(0, str(Path(__file__).parent))


# The modules whose fixtures build hundreds of exports, longest first. pytest-xdist
# (--dist loadfile) hands whole modules to the workers in collection order; starting the
# longest ones first keeps one worker from picking up a long module near the end while the
# other sits idle (longest-first scheduling). Only the order changes, not what runs.
LONGEST_FIRST = ("test_quant_table_gru_rnn.py", "test_quant_table_lstm.py",
                 "test_float_table.py", "test_quant_japanese_vowels.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept
