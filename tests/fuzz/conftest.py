"""Hypothesis profiles for the fuzz tests.

* ``ci`` (the default): a few dozen examples per target, derandomized, so every fuzz
  test together takes well under a minute on two cores and a failure reproduces.
* ``fuzz`` (``HYPOTHESIS_PROFILE=fuzz``, ``just fuzz``): thousands of examples per
  target, random, with failures kept in ``.cache/hypothesis`` to replay first next time.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=2000,  # ms per example; the invariant's own time bound is in fuzzkit
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "fuzz",
    max_examples=5000,
    deadline=5000,
    database=DirectoryBasedExampleDatabase(
        str(Path(__file__).resolve().parents[2] / ".cache" / "hypothesis")
    ),
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
