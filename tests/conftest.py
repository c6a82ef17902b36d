"""Fixtures shared by unit and integration tests."""

from pathlib import Path

import pytest

from tools.demo_models import build


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> Path:
    """The demo models and held-out stream, built once per test session (about 3 s)."""
    out = tmp_path_factory.mktemp("demo")
    build(out)
    return out


@pytest.fixture(scope="session")
def ocr_models() -> Path:
    """PP-OCRv4 det/rec ONNX files from rapidocr-onnxruntime's wheel (fetched once per checkout by tools/test)."""
    from tools.ocr_models import fetch

    return fetch(Path(__file__).resolve().parents[1] / ".tandem" / "ocr")


@pytest.fixture(scope="session")
def detect_models() -> Path:
    """The detection demo's light and strong detectors and scenes (tools/test builds them before pytest; built here
    when missing, about 4 minutes, when pytest runs alone)."""
    from tools.detection_models import ensure

    return ensure(Path(__file__).resolve().parents[1] / ".tandem" / "detect")


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the session (Debian's postgresql package; tools/test installs it)."""
    from tandem.postgres import PostgresServer, find_bindir

    if find_bindir() is None:
        pytest.fail("PostgreSQL is not installed: sudo apt-get install -y postgresql (tools/test does this)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres, request) -> str:
    """A new, empty database on the session's server, named after the test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40] + f"_{id(request):x}"
    return postgres.create_database(name)


def pytest_terminal_summary(terminalreporter) -> None:
    """The fault tests' own account: what each injected and what it counted (tests/support/report.py)."""
    from tests.support.report import LINES

    if LINES:
        terminalreporter.section("faults injected, and what was counted")
        for line in LINES:
            terminalreporter.write_line(line)
