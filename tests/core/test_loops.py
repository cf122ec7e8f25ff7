"""cacheme.loops.PerLoop: one resource per event loop, closed with its loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cacheme.loops import PerLoop


class Resource:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed = False
        self.abandoned = False


class Recorder:
    """open/close/abandon functions that record what they did."""

    def __init__(self, fail_opens: int = 0) -> None:
        self.opened: list[Resource] = []
        self.fail_opens = fail_opens

    async def open(self) -> Resource:
        await asyncio.sleep(0)  # a real open awaits I/O
        if self.fail_opens:
            self.fail_opens -= 1
            raise ConnectionError("refused")
        resource = Resource(asyncio.get_running_loop())
        self.opened.append(resource)
        return resource

    async def close(self, resource: Resource) -> None:
        assert asyncio.get_running_loop() is resource.loop  # closed inside its own loop
        await asyncio.sleep(0)
        resource.closed = True

    def abandon(self, resource: Resource) -> None:
        resource.abandoned = True

    def per_loop(self) -> PerLoop[Resource]:
        return PerLoop(self.open, self.close, abandon=self.abandon, name="test resource")


def test_concurrent_first_uses_share_one_open_and_the_loop_closes_it() -> None:
    recorder = Recorder()
    per_loop = recorder.per_loop()

    async def main() -> list[Resource]:
        assert per_loop.current() is None
        got = list(await asyncio.gather(*(per_loop.get() for _ in range(100))))
        assert per_loop.current() is got[0]
        return got

    got = asyncio.run(main())
    assert len(recorder.opened) == 1
    assert all(resource is got[0] for resource in got)
    assert got[0].closed  # by asyncio.run's shutdown of async generators
    assert len(per_loop) == 0


def test_each_loop_gets_its_own_resource() -> None:
    recorder = Recorder()
    per_loop = recorder.per_loop()
    first = asyncio.run(per_loop.get())
    second = asyncio.run(per_loop.get())
    assert first is not second
    assert first.closed and second.closed


def test_threads_each_get_their_own_and_close_closes_only_the_calling_loops() -> None:
    recorder = Recorder()
    per_loop = recorder.per_loop()
    ready = threading.Barrier(4)
    release = threading.Event()
    seen: list[Resource] = []

    still_own: list[bool] = []

    def thread() -> None:
        async def main() -> None:
            own = await per_loop.get()
            seen.append(own)
            ready.wait()
            # This loop stays alive (and answers) until released.
            await asyncio.get_running_loop().run_in_executor(None, release.wait)
            still_own.append(per_loop.current() is own and not own.closed)

        asyncio.run(main())

    threads = [threading.Thread(target=thread) for _ in range(3)]
    for t in threads:
        t.start()
    ready.wait()
    assert len({id(resource) for resource in seen}) == 3

    async def close_mine() -> Resource:
        mine = await per_loop.get()
        await per_loop.close()
        return mine

    mine = asyncio.run(close_mine())
    assert mine.closed
    assert not any(resource.closed for resource in seen)  # in use by their running loops
    release.set()
    for t in threads:
        t.join(10)
    assert still_own == [True, True, True]
    assert all(resource.closed for resource in seen)  # each by its loop's shutdown


def test_a_failed_open_is_retried_by_the_next_use() -> None:
    recorder = Recorder(fail_opens=1)
    per_loop = recorder.per_loop()

    async def main() -> Resource:
        results = await asyncio.gather(per_loop.get(), per_loop.get(), return_exceptions=True)
        assert all(isinstance(result, ConnectionError) for result in results)  # one open, shared
        return await per_loop.get()

    resource = asyncio.run(main())
    assert recorder.opened == [resource]


def test_a_cancelled_caller_does_not_cancel_the_open_others_wait_for() -> None:
    recorder = Recorder()
    per_loop = recorder.per_loop()

    async def main() -> Resource:
        first = asyncio.ensure_future(per_loop.get())
        second = asyncio.ensure_future(per_loop.get())
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    resource = asyncio.run(main())
    assert recorder.opened == [resource]


def test_close_then_use_opens_again() -> None:
    recorder = Recorder()
    per_loop = recorder.per_loop()

    async def main() -> None:
        first = await per_loop.get()
        await per_loop.close()
        assert first.closed and per_loop.current() is None
        second = await per_loop.get()
        assert second is not first and not second.closed

    asyncio.run(main())
    assert all(resource.closed for resource in recorder.opened)


def test_a_loop_closed_without_shutting_down_its_generators_has_its_resource_abandoned() -> None:
    recorder = Recorder()
    per_loop = recorder.per_loop()
    loop = asyncio.new_event_loop()
    old = loop.run_until_complete(per_loop.get())
    loop.close()  # no shutdown_asyncgens(): nothing could close the resource inside its loop
    assert not old.closed
    asyncio.run(per_loop.get())  # the next use notices, and hands the old one to abandon()
    assert old.abandoned and not old.closed
