"""Issue 10, point 2: a program that never closes its storages exits at once and prints nothing.

Before, a program with an ``sqlite://`` storage never exited (aiosqlite's
worker threads are not daemon threads) and one with ``mysql://`` printed
``Exception ignored in Connection.__del__ ... Event loop is closed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loops.conftest import Backend

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_SUM = sum(i % 50 + 1 for i in range(200)) + sum(i + 1 for i in range(100))


@pytest.mark.parametrize("ending", ["never-close", "close", "unregister"])
def test_program_exits_at_once_and_prints_nothing(backend: Backend, ending: str) -> None:
    environment = {**os.environ, "PYTHONWARNINGS": "default"}  # a ResourceWarning would show too
    for _ in range(2):  # the second run reads what the first wrote
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.loops.exit_child",
                backend.url,
                json.dumps(backend.options),
                ending,
            ],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=5,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert done.stdout.strip() == str(EXPECTED_SUM)
