"""Fixtures shared by tests that talk to a real server process."""
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
