"""Both clients to a daemon over TLS (docs/remote.md): ``remote=`` with a CA and a client
certificate. Needs ``PURVEYOR_TEST_TLS`` (conftest.py), which the Rust test sets."""

import asyncio
import os

import pytest

import purveyor
from purveyor import aio

TLS = os.environ.get("PURVEYOR_TEST_TLS")
pytestmark = pytest.mark.skipif(not TLS, reason="PURVEYOR_TEST_TLS names no certificates")


def remote(daemon, who="operator"):
    kw = {"remote": f"127.0.0.1:{daemon.tls_port}", "ca": f"{TLS}/ca.crt"}
    if who:
        kw.update(cert=f"{TLS}/{who}.crt", key=f"{TLS}/{who}.key")
    return kw


def test_remote_reads_writes_calls_and_events(daemon):
    with purveyor.connect(client="pytest-remote", **remote(daemon)) as c:
        assert c.socket_path == f"tls://127.0.0.1:{daemon.tls_port}"
        assert c.get("purveyor.host")["mode"] == "daemon"
        with c.subscribe("config.setting", filter={"name": "py_remote"}) as sub:
            c.put("config.setting", {"name": "py_remote", "type": "i64", "value": "3"})
            event = sub.next(timeout=10)
            assert event is not None and event.data["name"] == "py_remote"
        c.put("config.setting", {"name": "py_remote_b", "type": "i64", "value": "0"})
        assert c.call("config.setting", "transfer", {"name": "py_remote"}, to="py_remote_b", amount=1) == 2
        for name in ("py_remote", "py_remote_b"):
            c.delete("config.setting", name=name)


def test_no_certificate_or_a_strangers_is_refused(daemon):
    with pytest.raises(purveyor.AccessDenied) as e:
        purveyor.connect(**remote(daemon, who=None))
    assert "requires a client certificate" in e.value.message
    with pytest.raises(purveyor.AccessDenied) as e:
        purveyor.connect(**remote(daemon, who="stranger"))
    assert "refused this client's certificate" in e.value.message


def test_the_environment_names_the_remote_daemon(daemon, monkeypatch):
    monkeypatch.setenv("PURVEYOR_REMOTE", f"127.0.0.1:{daemon.tls_port}")
    monkeypatch.setenv("PURVEYOR_TLS_CA", f"{TLS}/ca.crt")
    monkeypatch.setenv("PURVEYOR_TLS_CERT", f"{TLS}/operator.crt")
    monkeypatch.setenv("PURVEYOR_TLS_KEY", f"{TLS}/operator.key")
    with purveyor.connect() as c:
        assert c.remote is not None and c.status()["mode"] == "daemon"


def test_async_remote(daemon):
    async def main():
        async with await aio.connect(**remote(daemon)) as c:
            got = await asyncio.gather(*[c.get("purveyor.host") for _ in range(20)])
            assert all(g["mode"] == "daemon" for g in got)
        with pytest.raises(purveyor.AccessDenied):
            async with await aio.connect(**remote(daemon, who=None)) as c:
                await c.get("purveyor.host")

    asyncio.run(asyncio.wait_for(main(), 60))
