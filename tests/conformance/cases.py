"""The storages the conformance suite runs against.

Each backend adds a module ``tests/conformance/backend_<name>.py`` that
defines ``CASES: list[StorageCase]``. A case builds a connected storage that
starts empty (its own table, key prefix or database) for one test; it may ask
pytest for fixtures (a server started for the run) through ``request``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from cacheme.storage import BaseStorage


@dataclass(frozen=True)
class StorageCase:
    id: str
    make: Callable[[pytest.FixtureRequest], Awaitable[BaseStorage]]
    # Extra time a server may keep an expired key visible (e.g. a TTL monitor).
    expiry_slack_seconds: float = 0.0


def all_cases() -> list[StorageCase]:
    import tests.conformance as package

    cases: list[StorageCase] = []
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name.startswith("backend_"):
            module = importlib.import_module(f"tests.conformance.{module_info.name}")
            cases.extend(module.CASES)
    return cases
