"""Fixtures shared by tests that talk to a real server process, and CI's rule on skipped tests."""
import os

import pytest

from tests.servers import ROOT, free_port, start_server, stop_server

ARTIFACTS = ROOT / "test-artifacts"
__all__ = ["ARTIFACTS", "ROOT", "free_port", "start_server", "stop_server"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with its own data dir for the module's tests; yields its base URL."""
    url, process = start_server(tmp_path_factory.mktemp("data"))
    yield url
    stop_server(process)


# With CI=true a skipped test fails the run: CI installs everything the suite needs (Redis, Chromium),
# so a skip there means a part was not tested. Tests named here may skip, each for a stated reason.
ALLOWED_SKIPS: dict[str, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        if not any(item.nodeid.startswith(prefix) for prefix in ALLOWED_SKIPS):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"skipped under CI=true, which must test everything: {reason}"
