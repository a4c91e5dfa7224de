"""Shared test set-up: hypothesis profiles.

``ci`` (the default): no deadlines or slowness checks (shared, noisy machines) and derandomized, so a commit's test
run draws the same examples every time and CI's verdict is the commit's, not the draw's. ``fuzz``
(``make fuzz``): fresh random examples, ten times as many (where a test sets no number of its own); run it to look for new failures, and pin what it finds
as a regression test.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

_NOISY_MACHINES = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=60, derandomize=True, **_NOISY_MACHINES)
settings.register_profile("fuzz", max_examples=600, **_NOISY_MACHINES)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
