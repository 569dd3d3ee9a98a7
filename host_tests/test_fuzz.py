"""Property tests of the generated C (see fuzz_models.py for what is drawn and checked).

Hypothesis draws batches of random models and, for each model, random inputs: special float
values for the float API, int16 extremes for the int16 API. The run is derandomized (the same
examples on every machine) and bounded (FUZZ_EXAMPLES batches of MODELS_PER_BATCH models);
``bench/fuzz.py`` runs the same property for longer with fresh seeds.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_models import check_batch, specs

FUZZ_EXAMPLES = 2
MODELS_PER_BATCH = 6
SANITIZER_STEPS = 2_000  # per model

_counter = itertools.count()


@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(batch=st.lists(specs(), min_size=MODELS_PER_BATCH, max_size=MODELS_PER_BATCH,
                     unique=True),
       data=st.data())
def test_random_models_keep_the_c_contract(batch, data, tmp_path_factory):
    n = next(_counter)
    root = tmp_path_factory.mktemp(f"fuzz{n}")
    check_batch(batch, data, root, sanitizer_steps=SANITIZER_STEPS)
