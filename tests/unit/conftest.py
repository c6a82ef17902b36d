import pytest

from edge.outbox import EdgeStore


@pytest.fixture
def store(tmp_path):
    """An open device store in a fresh SQLite file (test_escalation_service overrides it with the hub's)."""
    s = EdgeStore(tmp_path / "edge.db")
    s.open()
    yield s
    s.close()
