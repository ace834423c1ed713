import os

import pytest
from hypothesis import HealthCheck, settings

# Reproducible property tests in CI (same examples every run); a local run may explore.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser):
    parser.addoption("--heavy", action="store_true", help="also run the long checks marked heavy")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--heavy"):
        return
    skip = pytest.mark.skip(reason="heavy check: run with --heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
