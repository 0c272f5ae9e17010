"""The asyncio client against a real daemon (conftest.py)."""

import asyncio
import os

import pytest

import purveyor
from purveyor import aio


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_concurrent_requests_on_one_connection(daemon):
    async def main():
        async with await aio.connect(daemon.socket) as c:
            got = await asyncio.gather(*[c.get("system.process", pid=os.getpid()) for _ in range(50)])
            assert all(g["pid"] == os.getpid() for g in got)
            rows = await c.query("SELECT count(*) AS n FROM system.process")
            assert rows.rows[0][0] > 1
            with pytest.raises(purveyor.NotFound):
                await c.get("nope.nothing")

    run(main())


def test_async_subscription_and_writes(daemon):
    async def main():
        async with await aio.connect(daemon.socket) as c:
            sub = await c.subscribe("config.setting", event="changed", filter=[("action", "eq", "created")])
            await c.put("config.setting", name="py_async", value="1")
            event = await sub.next(10)
            assert event is not None and event.data["name"] == "py_async"
            await sub.close()
            assert await c.call("config.setting", "rename", {"name": "py_async"}, to="py_async2") is None
            await c.delete("config.setting", name="py_async2")

    run(main())


def test_async_dialog_callback(daemon):
    async def ui(dialog):
        await asyncio.sleep(0.01)
        return {"button": "no"}

    async def main():
        async with await aio.connect(daemon.socket, ui=ui) as c:
            assert await c.call("demo.dialog_probe", "ask") == "no"

    run(main())
