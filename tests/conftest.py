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
