"""The README's examples run, in order, as one program: the README cannot drift from the code."""

from __future__ import annotations

import ast
import re
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import cacheme

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    return [code for info, code in BLOCK.findall(README.read_text()) if "no-run" not in info.split()]


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 6


async def test_readme_examples_run() -> None:
    source = "\n".join(python_blocks())
    code = compile(source, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    module = types.ModuleType("readme_examples")
    sys.modules[module.__name__] = module
    namespace: dict[str, Any] = module.__dict__
    # A prefix of its own, so that keys left in the shared Redis by other runs are not read.
    cacheme.set_prefix(f"readme-{uuid.uuid4().hex}")
    try:
        result = eval(code, namespace)
        if result is not None:
            await result
    finally:
        cacheme.set_prefix("cacheme")
        del sys.modules[module.__name__]
        for name in ("local", "my-redis"):
            if name in cacheme.registered_storages():
                await cacheme.unregister_storage(name)
