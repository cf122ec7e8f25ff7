"""The peers' virtual environments, built from PyPI on first use (stdlib only).

- ``.venv-peers``: aiocache and cashews (current releases) with redis-py and hiredis;
- ``.venv-cacheme030``: the original cacheme 0.3.0 with the versions it supports (pydantic 1, theine 0.3,
  redis-py 4), plus hiredis so that every library parses Redis replies with the same C parser.

A stamp file in each environment records what was installed; a changed requirement list rebuilds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent

ENVIRONMENTS: dict[str, list[str]] = {
    "peers": ["aiocache>=0.12", "cashews>=7", "redis>=5", "hiredis"],
    "cacheme030": ["cacheme==0.3.0", "pydantic>=1.10,<2", "theine>=0.3.3,<0.4", "redis>=4.6,<5", "hiredis"],
}


def env_dir(name: str) -> Path:
    return HERE / f".venv-{name}"


def env_python(name: str) -> Path:
    return env_dir(name) / ("Scripts" if os.name == "nt" else "bin") / "python"


def ensure(name: str, log: bool = True) -> Path:
    """The environment's interpreter, after building or updating the environment if needed."""
    requirements = ENVIRONMENTS[name]
    stamp = env_dir(name) / ".benchmark-requirements"
    wanted = "\n".join(requirements) + "\n"
    python = env_python(name)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if log:
        print(f"building {env_dir(name)}: {' '.join(requirements)}", file=sys.stderr, flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir(name))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def installed_version(python: Path, distribution: str) -> str:
    code = f"from importlib.metadata import version; print(version({distribution!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "not installed"


if __name__ == "__main__":
    for environment in ENVIRONMENTS:
        print(environment, ensure(environment))
