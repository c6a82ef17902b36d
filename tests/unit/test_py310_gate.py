"""The Python 3.10 gate in tools/test must fail on 3.11-only code, or it guards nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

VERMIN = Path(sys.executable).with_name("vermin")


def vermin(folder: Path) -> subprocess.CompletedProcess:
    command = [str(VERMIN), "--target=3.10-", "--violations", "--no-tips", "--eval-annotations", str(folder)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "source",
    [
        "import tomllib\n",
        "import asyncio\nasync def f():\n    async with asyncio.TaskGroup() as g:\n        pass\n",
        "try:\n    pass\nexcept* ValueError:\n    pass\n",
    ],
)
def test_gate_rejects_311_features(tmp_path, source):
    (tmp_path / "mod.py").write_text(source)
    assert vermin(tmp_path).returncode != 0


def test_gate_passes_the_device_code():
    root = Path(__file__).resolve().parents[2]
    assert vermin(root / "edge").returncode == 0
