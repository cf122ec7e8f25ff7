"""Storages are found through entry points; a third party needs no change to the core."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cacheme
from cacheme import plugins

THIRD_PARTY_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"

[project.entry-points."cacheme.storages"]
{entry} = "{package}.plugin"

[tool.setuptools]
packages = ["{package}"]
"""

DICT_PLUGIN = """
from cacheme import hookimpl

@hookimpl
def cacheme_storage_schemes():
    return {"dictstore": "cacheme_dictstore.storage:DictStorage"}
"""

DICT_STORAGE = """
from cacheme import MISSING, LocalStorage

class DictStorage(LocalStorage):
    def __init__(self, url, **options):
        super().__init__(url)
        self.options = options
        self.data = {}

    async def close(self):
        self.data.clear()

    def get_sync(self, key):
        return self.data.get(key, MISSING)

    def set_sync(self, key, value, ttl):
        self.data[key] = value

    def delete_sync(self, key):
        self.data.pop(key, None)
"""


def build_distribution(root: Path, name: str, package: str, entry: str, files: dict[str, str]) -> Path:
    source = root / "src" / name
    (source / package).mkdir(parents=True)
    (source / "pyproject.toml").write_text(
        THIRD_PARTY_PYPROJECT.format(name=name, package=package, entry=entry)
    )
    (source / package / "__init__.py").write_text("")
    for filename, text in files.items():
        (source / package / filename).write_text(textwrap.dedent(text))
    return source


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two throwaway distributions, built and installed by pip into a directory of their own."""
    root = tmp_path_factory.mktemp("plugins")
    good = build_distribution(
        root,
        "cacheme-dictstore",
        "cacheme_dictstore",
        "dictstore",
        {"plugin.py": DICT_PLUGIN, "storage.py": DICT_STORAGE},
    )
    broken = build_distribution(
        root,
        "cacheme-broken",
        "cacheme_broken",
        "broken",
        {"plugin.py": "raise ImportError('broken on purpose')\n"},
    )
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(good),
            str(broken),
        ],
        check=True,
    )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    plugins.reload_plugins()
    yield site
    sys.path.remove(str(site))
    importlib.invalidate_caches()
    plugins.reload_plugins()


async def test_a_third_party_storage_is_found_and_used(
    third_party_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cacheme"):
        plugins.reload_plugins()
        schemes = cacheme.installed_schemes()
    assert schemes["dictstore"] == "cacheme_dictstore.storage:DictStorage"
    assert "local" in schemes  # the broken plugin did not stop the others
    assert "broken" in caplog.text and "failed to load" in caplog.text

    storage = cacheme.Storage("dictstore://anything", flavour="plain")
    assert type(storage).__name__ == "DictStorage"
    await cacheme.register_storage("dict", storage)

    class Thing(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"thing:{self.id}"

        async def load(self) -> str:
            return f"thing-{self.id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache("dict", None)]

    try:
        assert await cacheme.get(Thing(id=1)) == "thing-1"
        assert await cacheme.get(Thing(id=1)) == "thing-1"
        data = storage.data  # type: ignore[attr-defined]
        assert list(data) == ["cacheme:thing:1:v1"]
        assert data["cacheme:thing:1:v1"].value == "thing-1"  # an Entry: the value and its age
        assert cacheme.stats(Thing).hit_count() == 1
    finally:
        await cacheme.unregister_storage("dict")


def test_unknown_scheme_names_the_scheme_the_installed_ones_and_the_distribution() -> None:
    with pytest.raises(cacheme.StorageConfigError) as caught:
        cacheme.Storage("nosuch://host")
    message = str(caught.value)
    assert "'nosuch'" in message and "local" in message
    plugins.reload_plugins()
    schemes = cacheme.installed_schemes()
    if "redis" not in schemes:
        with pytest.raises(cacheme.StorageConfigError, match="cacheme-redis"):
            cacheme.Storage("redis://localhost")


def test_malformed_urls_and_options_are_refused() -> None:
    for url in ["", "local", "://x", 42]:
        with pytest.raises(cacheme.StorageConfigError):
            cacheme.Storage(url)  # type: ignore[arg-type]
    with pytest.raises(cacheme.StorageConfigError, match="size"):
        cacheme.Storage("local://tlfu")
    with pytest.raises(cacheme.StorageConfigError, match="size must be a positive int"):
        cacheme.Storage("local://lru", size=0)
    with pytest.raises(cacheme.StorageConfigError, match="unknown local policy"):
        cacheme.Storage("local://fifo", size=10)
    with pytest.raises(cacheme.StorageConfigError, match="unknown option"):
        cacheme.Storage("local://lru", size=10, colour="red")


def test_entry_point_modules_do_not_import_drivers() -> None:
    code = (
        "import sys, cacheme; cacheme.installed_schemes(); "
        "drivers = ('theine', 'redis', 'asyncpg', 'aiomysql', 'aiosqlite', 'pymongo'); "
        "print(sorted(m for m in drivers if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
