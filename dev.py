#!/usr/bin/env python3
"""Set up and run cacheme from a fresh clone, with only Python 3.10+.

    python3 dev.py demo     # the embedded demo: no server needed
    python3 dev.py test     # the whole test suite (needs the servers in README)

Both create ./.venv on first use and install every distribution of the
repository into it in editable mode, with the test tools.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".cacheme-installed"

DISTRIBUTIONS = [
    "cacheme-core",
    "cacheme-local",
    "cacheme-redis[hiredis]",
    "cacheme-sql[sqlite,postgres,mysql]",
    "cacheme-mongo",
    "cacheme-prometheus",
    "cacheme-opentelemetry",
]
TEST_REQUIREMENTS = ROOT / "requirements-test.txt"


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def installed_distributions() -> list[str]:
    return [d for d in DISTRIBUTIONS if (ROOT / d.split("[")[0] / "pyproject.toml").exists()]


def ensure_environment() -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py must explain itself on old Pythons
        sys.exit(f"cacheme needs Python 3.10 or newer; this is {sys.version.split()[0]}")
    wanted = "\n".join(installed_distributions()) + "\n" + TEST_REQUIREMENTS.read_text()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    editable: list[str] = []
    for distribution in installed_distributions():
        editable += ["-e", f"./{distribution}"]
    print("installing cacheme and its test tools into .venv", flush=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", *editable, "-r", TEST_REQUIREMENTS)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command not in {"demo", "test"}:
        print(__doc__)
        return 2
    ensure_environment()
    if command == "demo":
        return subprocess.run([str(PYTHON), str(ROOT / "examples" / "demo.py"), *argv[1:]]).returncode
    result = subprocess.run([str(PYTHON), "-m", "pytest", *argv[1:]], cwd=ROOT).returncode
    if result == 5:
        print("dev.py: pytest collected no tests; that is a failure", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
