"""The blocking client against a real daemon (conftest.py)."""

import os
import time

import pytest

import purveyor


@pytest.fixture
def c(daemon):
    with purveyor.connect(daemon.socket, client="pytest") as client:
        yield client


def test_reads_come_back_as_plain_values(c):
    assert c.welcome["minor"] >= 10
    load = c.get("system.load")
    assert isinstance(load["load1"], float) and isinstance(load["runnable"], int)
    me = c.get("system.process", pid=os.getpid())
    assert me["pid"] == os.getpid()
    assert any(p["pid"] == os.getpid() for p in c.enumerate("system.process"))
    assert [p["pid"] for p in c.enumerate("system.process", pid=os.getpid())] == [os.getpid()]
    schema = c.describe("config.setting")
    assert [p["name"] for p in schema["properties"]][:3] == ["name", "type", "value"]
    classes = c.list_classes("config")
    assert [k["path"] for k in classes] == ["config.setting"] and classes.problems == []
    assert c.status()["mode"] == "daemon"
    assert any(p["name"] == "config" for p in c.list_providers())
    c.ping()
    assert c.reload()["changed"] == []


def test_writes_and_methods(c):
    c.put("config.setting", name="py_color", value="blue")
    got = c.get("config.setting", name="py_color")
    assert got["value"] == "blue" and got["version"] >= 1
    assert purveyor.to_datetime(got["updated"]).year >= 2024
    assert c.call("config.setting", "rename", {"name": "py_color"}, to="py_colour") is None
    assert c.get("config.setting", name="py_colour")["value"] == "blue"
    c.put("config.setting", {"name": "py_a", "type": "i64", "value": "10"})
    c.put("config.setting", {"name": "py_b", "type": "i64", "value": "0"})
    assert c.call("config.setting", "transfer", {"name": "py_a"}, to="py_b", amount=4) == 6
    for name in ("py_colour", "py_a", "py_b"):
        c.delete("config.setting", name=name)
    with pytest.raises(purveyor.NotFound) as e:
        c.get("config.setting", name="py_colour")
    assert e.value.code == "not_found"


def test_errors_carry_the_protocols_codes(c):
    with pytest.raises(purveyor.NotFound) as e:
        c.get("nope.nothing")
    assert e.value.code == "not_found" and "nope.nothing" in e.value.message
    with pytest.raises(purveyor.InvalidRequest) as e:
        c.put("config.setting", name="x", colour="red")
    assert 'property "colour" is not in the schema of config.setting' in e.value.message
    with pytest.raises(purveyor.InvalidRequest) as e:
        c.query("SELECT pid FROM system.process WHERE rss > 'lots'")
    assert "type mismatch" in e.value.message
    assert isinstance(e.value, purveyor.PurveyorError)


def test_a_subscription_is_an_iterator(c):
    with c.subscribe("config.setting", filter={"action": "deleted"}) as sub:
        c.put("config.setting", name="py_ev", value="1")
        c.delete("config.setting", name="py_ev")
        event = sub.next(timeout=10)
        assert isinstance(event, purveyor.Event)
        assert event.data["action"] == "deleted" and event.data["name"] == "py_ev"
        assert sub.next(timeout=0.2) is None  # the put's event was filtered out
    with pytest.raises(purveyor.NotFound):
        sub.next(0)


def test_change_events_for_a_class(c):
    with c.watch_changes("config.setting", interval=0.1, filter={"name": "py_watch"}) as w:
        time.sleep(0.3)  # the first poll is the baseline
        c.put("config.setting", name="py_watch", value="1")
        created = w.next(timeout=10)
        assert isinstance(created, purveyor.Change) and created.kind == "created"
        c.put("config.setting", name="py_watch", value="2")
        modified = w.next(timeout=10)
        assert modified.kind == "modified"
        assert ("value", "1", "2") in modified.changed
        c.delete("config.setting", name="py_watch")
        assert w.next(timeout=10).kind == "deleted"


def test_queries(c):
    rows = c.query(f"SELECT pid, name FROM system.process WHERE pid = {os.getpid()}", plan=True)
    assert [col.name for col in rows.columns] == ["pid", "name"]
    assert rows.columns[0].type == "u64"
    assert rows.rows == [(os.getpid(), c.get("system.process", pid=os.getpid())["name"])]
    assert rows.plan == [f"system.process: get pid={os.getpid()} → 1 instance"]
    assert c.query("SELECT count(*) AS n FROM system.process").dicts()[0]["n"] > 1


def test_pipelining_keeps_requests_apart(c):
    p = c.pipeline()
    pending = [p.get("system.process", pid=os.getpid()) for _ in range(100)]
    pending.append(p.get("nope.nothing"))
    pending.append(p.query("SELECT 1 AS one"))
    assert len({x.id for x in pending}) == len(pending)
    assert pending[-1].result().rows == [(1,)]
    with pytest.raises(purveyor.NotFound):
        pending[-2].result()
    assert all(x.result()["pid"] == os.getpid() for x in pending[:100])


def test_in_call_dialogs_go_to_the_callback(daemon):
    seen = []

    def ui(dialog):
        seen.append((dialog.title, dialog.buttons, dialog.provider))
        return {"button": "yes"}

    with purveyor.connect(daemon.socket, ui=ui) as c:
        assert c.call("demo.dialog_probe", "ask") == "yes"
    assert seen == [("Pick one", ["yes", "no"], "confirm")]
    # A callback that declines closes the dialog: the provider says so.
    with purveyor.connect(daemon.socket, ui=lambda d: None) as c:
        with pytest.raises(purveyor.PurveyorError) as e:
            c.call("demo.dialog_probe", "ask")
    # Without a callback no dialog is shown at all.
    with purveyor.connect(daemon.socket) as c:
        with pytest.raises(purveyor.PurveyorError) as e2:
            c.call("demo.dialog_probe", "ask")
        assert "no UI available" in e2.value.message
    assert e.value.code == "provider_failed"
    assert "the user closed the dialog" in e.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_the_access_policy_refuses_another_user(daemon):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody, with no groups
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with purveyor.connect(daemon.socket) as c:
                c.enumerate("config.setting")  # read: every local user
                try:
                    c.put("config.setting", name="py_nobody", value="x")
                    os.write(write, b"allowed")
                except purveyor.AccessDenied as e:
                    os.write(write, f"{e.code}|{e.message}".encode())
            code = 0
        except BaseException as e:  # report anything else to the parent
            os.write(write, f"error|{e!r}".encode())
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    said = os.read(read, 4096).decode()
    os.close(read)
    assert os.WEXITSTATUS(status) == 0, said
    code, message = said.split("|", 1)
    assert code == "access_denied", said
    assert "config.setting" in message


def test_the_default_socket_follows_the_environment(monkeypatch, daemon):
    monkeypatch.setenv("PURVEYOR_SOCKET", daemon.socket)
    assert purveyor.default_socket() == daemon.socket
    with purveyor.connect() as c:
        c.ping()
    monkeypatch.delenv("PURVEYOR_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert purveyor.default_socket() == "/run/user/1000/purveyor/purveyor.sock"


def test_a_missing_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(OSError):
        purveyor.connect(str(tmp_path / "none.sock"))
