"""Hypothesis profiles of the parser fuzz tests (python-services/docs/testing.md, "Fuzzing").

* ``ci`` (the default): a few dozen inputs per parser, derandomized so a run is
  reproducible and all fuzz tests together take seconds.
* ``long``: ``VMCLIENT_FUZZ=long`` (``VMCLIENT_FUZZ_EXAMPLES`` inputs per
  parser, 20000 unless set), random seeds, failures kept in the example
  database under ``.hypothesis/`` so a rerun starts from them.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True)
settings.register_profile(
    "long", max_examples=int(os.environ.get("VMCLIENT_FUZZ_EXAMPLES", "20000")),
    deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
settings.load_profile("long" if os.environ.get("VMCLIENT_FUZZ") == "long" else "ci")
