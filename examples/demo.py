"""cacheme demo: thousands of concurrent requests, one call of a slow source per key.

Runs with no server: an in-process tier in front of a SQLite file.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import cacheme
from cacheme.serializer import MsgPackSerializer

SOURCE_CALLS: dict[str, int] = {}
HAS_SQLITE = "sqlite" in cacheme.installed_schemes()


class WeatherNode(cacheme.Node):
    city: str

    def key(self) -> str:
        return f"weather:{self.city}"

    async def load(self) -> dict[str, str | int]:
        SOURCE_CALLS[self.city] = SOURCE_CALLS.get(self.city, 0) + 1
        await asyncio.sleep(0.5)  # a slow source: a remote API, a heavy query
        return {"city": self.city, "celsius": 15 + len(self.city)}

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="local", ttl=timedelta(seconds=30))]
        if HAS_SQLITE:
            caches.append(cacheme.Cache(storage="sqlite", ttl=timedelta(minutes=10)))
        serializer = MsgPackSerializer()


CITIES = ["Oslo", "Lima", "Kyiv", "Accra", "Quito"]


async def burst(label: str, requests: int) -> None:
    started = time.perf_counter()
    nodes = [WeatherNode(city=CITIES[i % len(CITIES)]) for i in range(requests)]
    results = await asyncio.gather(*(cacheme.get(node) for node in nodes))
    elapsed = time.perf_counter() - started
    assert all(result["city"] == node.city for result, node in zip(results, nodes, strict=True))
    print(f"{label:<44} {requests:>6} requests in {elapsed:6.3f} s")


def print_stats() -> None:
    metrics = cacheme.stats(WeatherNode)
    rows = [
        ("request_count", metrics.request_count()),
        ("hit_count", metrics.hit_count()),
        ("miss_count", metrics.miss_count()),
        ("hit_rate", f"{metrics.hit_rate():.4f}"),
        ("load_count", metrics.load_count()),
        ("load_success_count", metrics.load_success_count()),
        ("load_failure_count", metrics.load_failure_count()),
        ("average_load_time", f"{metrics.average_load_time() / 1e6:.1f} ms"),
        ("storage_error_count", metrics.storage_error_count()),
    ]
    print("\ncacheme.stats(WeatherNode)")
    print(f"+{'-' * 22}+{'-' * 14}+")
    for name, value in rows:
        print(f"| {name:<20} | {value!s:>12} |")
    print(f"+{'-' * 22}+{'-' * 14}+")
    print(f"source calls per city: {SOURCE_CALLS}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        await cacheme.register_storage("local", cacheme.Storage("local://tlfu", size=10_000))
        if HAS_SQLITE:
            database = Path(folder) / "demo.db"
            await cacheme.register_storage("sqlite", cacheme.Storage(f"sqlite:///{database}"))
            print(f"tiers: local://tlfu -> sqlite:///{database}\n")
        else:
            print("tiers: local://tlfu (install cacheme-sql[sqlite] for a second tier)\n")

        await burst("cold: 5 cities, each loaded once (0.5 s)", 10_000)
        await burst("warm: every request a local hit", 10_000)
        if HAS_SQLITE:
            # A fresh process has an empty local tier: SQLite answers and back-fills it.
            await cacheme.register_storage("local", cacheme.Storage("local://tlfu", size=10_000))
            await burst("local tier emptied: SQLite hits, back-filled", 10_000)
        print_stats()
        for name in list(cacheme.registered_storages()):
            await cacheme.unregister_storage(name)


if __name__ == "__main__":
    asyncio.run(main())
