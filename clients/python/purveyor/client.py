"""The blocking client: one Unix-socket connection to the daemon, JSON encoding."""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Set

from . import _core
from ._core import ConnectionClosed, Dialog, Filter, Push, PurveyorError, Rows

#: An in-call dialog callback: the input to send, or ``None`` to close it unanswered.
Ui = Callable[[Dialog], Optional[Mapping[str, Any]]]


def connect(
    socket_path: Optional[str] = None,
    *,
    client: str = "purveyor-python",
    ui: Optional[Ui] = None,
    timeout: Optional[float] = 30.0,
    remote: Optional[str] = None,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
) -> "Client":
    """Connects to the daemon at ``socket_path`` (default: ``$PURVEYOR_SOCKET``, then
    ``$XDG_RUNTIME_DIR/purveyor/purveyor.sock``, then ``/run/purveyor/purveyor.sock``) —
    or, with ``remote="HOST:PORT"`` (or ``$PURVEYOR_REMOTE``) and no ``socket_path``, to a
    daemon on another machine over TLS 1.3 with the CA ``ca`` and this client's ``cert``
    and ``key`` (or ``$PURVEYOR_TLS_CA``, ``_CERT``, ``_KEY``; ``docs/remote.md``).
    ``ui`` answers in-call dialogs (without it, a provider's dialog is refused "no UI
    available"); ``timeout`` bounds the connect and the hello, in seconds."""
    far = None if socket_path else _core.remote(remote, ca, cert, key)
    return Client(socket_path, client=client, ui=ui, timeout=timeout, remote=far)


class Pending:
    """A request sent and not yet answered (pipelining): ``result()`` waits for it."""

    def __init__(self, client: "Client", id: int, decode: Callable[[Any], Any]) -> None:
        self._client = client
        self.id = id
        self._decode = decode

    def result(self, timeout: Optional[float] = None) -> Any:
        """The answer, or its error raised; ``TimeoutError`` if none within ``timeout``
        seconds (the request stays in flight)."""
        return self._decode(_core.answer(self._client._wait(self.id, timeout)))


class Subscription:
    """Events (``subscribe``) or changes (``watch_changes``) as an iterator. Iterating
    blocks for the next push; ``next(timeout)`` waits at most that long. ``close()`` (or
    leaving a ``with`` block) unsubscribes."""

    def __init__(self, client: "Client", handle: int) -> None:
        self._client = client
        self.handle = handle

    def __iter__(self) -> Iterator[Push]:
        return self

    def __next__(self) -> Push:
        got = self.next(None)
        assert got is not None
        return got

    def next(self, timeout: Optional[float] = None) -> Optional[Push]:
        """The next push, or ``None`` if none came within ``timeout`` seconds."""
        return self._client._next_push(self.handle, timeout)

    def close(self) -> None:
        if self._client._subs.pop(self.handle, None) is not None and not self._client.closed:
            self._client._call({"unsubscribe": {"handle": self.handle}}, lambda ok: None)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """A connection to the daemon. Not thread-safe: use one per thread, or
    [`purveyor.aio.AsyncClient`] for concurrency. Every method raises
    [`purveyor.PurveyorError`] (a subclass by code) for an error the daemon answers."""

    def __init__(
        self,
        socket_path: Optional[str] = None,
        *,
        client: str = "purveyor-python",
        ui: Optional[Ui] = None,
        timeout: Optional[float] = 30.0,
        remote: Optional[_core.Remote] = None,
    ) -> None:
        self.socket_path = str(remote) if remote else (socket_path or _core.default_socket())
        self.remote = remote
        self._sock = self._open(remote, timeout)
        self._buf = bytearray()
        self._ids = itertools.count(1)
        self._replies: Dict[int, Dict[str, Any]] = {}
        self._unwanted: Set[int] = set()
        self._subs: Dict[int, Deque[Push]] = {}
        self._dialogs: Dict[int, Dialog] = {}
        self._schemas: Dict[str, Dict[str, Any]] = {}
        self._ui = ui
        self._ended: Optional[ConnectionClosed] = None
        try:
            self._sock.settimeout(timeout)
            if remote is None:
                self._sock.connect(self.socket_path)
            try:
                self._sock.sendall(_core.frame(_core.hello(client, ui is not None)))
            except OSError as e:
                if remote is None:
                    raise
                raise self._refusal(remote, e) from e
            deadline = None if timeout is None else time.monotonic() + timeout
            message = self._read(deadline)
            if message is None:
                raise ConnectionClosed("timeout", f"no welcome from {self.socket_path} within {timeout}s")
            self.welcome = _core.welcome(message)
        except BaseException:
            self._sock.close()
            raise

    def _refusal(self, remote: _core.Remote, e: OSError) -> PurveyorError:
        """Why a remote daemon dropped the connection before the hello got through: the
        TLS alert it sent, if it can still be read, else the failure itself."""
        try:
            self._sock.recv(1)
        except ssl.SSLError as alert:
            return _core.tls_error(remote, alert)
        except OSError:
            pass
        return _core.tls_error(remote, e)

    @staticmethod
    def _open(remote: Optional[_core.Remote], timeout: Optional[float]) -> socket.socket:
        """A Unix socket to connect, or a TLS connection to the remote daemon."""
        if remote is None:
            return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw = socket.create_connection((remote.host, remote.port), timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return remote.context().wrap_socket(raw, server_hostname=remote.host)
        except ssl.SSLError as e:
            raw.close()
            raise _core.tls_error(remote, e) from e
        except BaseException:
            raw.close()
            raise

    # -- reads ----------------------------------------------------------------------

    def get(self, class_: str, key: Optional[Mapping[str, Any]] = None, **props: Any) -> Dict[str, Any]:
        """The instance of ``class_`` with this key (``get("system.process", pid=1)``;
        nothing for a singleton class)."""
        return self.pipeline().get(class_, key, **props).result()

    def enumerate(
        self, class_: str, selector: Optional[Mapping[str, Any]] = None, **props: Any
    ) -> List[Dict[str, Any]]:
        """Every instance of ``class_`` whose properties equal the selector's."""
        return self.pipeline().enumerate(class_, selector, **props).result()

    def describe(self, class_: str) -> Dict[str, Any]:
        """The class's schema (JSON form: ``properties``, ``methods``, ``events``)."""
        schema = self._call(*_core.describe(class_))
        self._schemas[class_] = schema
        return schema

    def list_classes(self, namespace: Optional[str] = None) -> _core.ClassList:
        return self._call(*_core.list_classes(namespace))

    def query(self, sql: str, *, plan: bool = False) -> Rows:
        """SQL over classes (``docs/query.md``)."""
        return self._call(*_core.query(sql, plan))

    def status(self) -> Dict[str, Any]:
        return self._call(*_core.simple("status"))

    def list_providers(self) -> List[Dict[str, Any]]:
        return self._call(*_core.simple("list_providers"))

    def ping(self) -> None:
        self._call(*_core.simple("ping"))

    def reload(self) -> Dict[str, Any]:
        """Makes the daemon re-read its manifests, access policy and ``http.toml``: the
        report (``added``, ``removed``, ``changed``, ``policy``, ``http``)."""
        return self._call(*_core.simple("reload"))

    # -- writes ---------------------------------------------------------------------

    def put(self, class_: str, values: Optional[Mapping[str, Any]] = None, **props: Any) -> None:
        """Creates or replaces an instance; returns once the provider committed it."""
        self.pipeline().put(class_, values, **props).result()

    def delete(self, class_: str, key: Optional[Mapping[str, Any]] = None, **props: Any) -> None:
        self.pipeline().delete(class_, key, **props).result()

    def call(
        self,
        class_: str,
        method: str,
        key: Optional[Mapping[str, Any]] = None,
        args: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        """Calls ``method`` (on the instance with ``key``, or the class), with ``args``
        and keyword arguments as its parameters; returns its result (``None`` if it
        declares none)."""
        return self.pipeline().call(class_, method, key, args, **kwargs).result()

    # -- subscriptions --------------------------------------------------------------

    def subscribe(self, class_: str, event: Optional[str] = None, filter: Filter = None) -> Subscription:
        """Events the class's provider raises (``event``: one of them, else all),
        filtered by ``{"name": value}`` or ``[("prop", "gt", value)]``."""
        schema = self._schema(class_) if _core.filter_untagged(filter) else None
        handle = self._call(*_core.subscribe(class_, event, filter, schema))
        self._subs.setdefault(handle, deque())
        return Subscription(self, handle)

    def watch_changes(
        self, class_: str, *, interval: float = 1.0, filter: Filter = None, counters: bool = False
    ) -> Subscription:
        """``created``, ``deleted`` and ``modified`` for any readable class, polled every
        ``interval`` seconds by the daemon (shared by every watcher of the class)."""
        schema = self._schema(class_) if _core.filter_untagged(filter) else None
        handle = self._call(*_core.watch_changes(class_, filter, interval, counters, schema))
        self._subs.setdefault(handle, deque())
        return Subscription(self, handle)

    # -- pipelining, raw requests, lifetime -------------------------------------------

    def pipeline(self) -> "Pipeline":
        """The same requests, sent without waiting: each returns a [`Pending`]."""
        return Pipeline(self)

    def request(self, body: Any) -> Any:
        """Any request in its JSON form (``{"get": {...}}``); its reply's ``ok`` body."""
        return self._call(body, lambda ok: ok)

    @property
    def closed(self) -> bool:
        return self._ended is not None

    def close(self) -> None:
        if self._ended is None:
            self._ended = ConnectionClosed("protocol", "the client closed the connection")
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside -----------------------------------------------------------------------

    def _schema(self, class_: str) -> Dict[str, Any]:
        schema = self._schemas.get(class_)
        return schema if schema is not None else self.describe(class_)

    def _call(self, body: Any, decode: Callable[[Any], Any]) -> Any:
        return Pending(self, self._send(body), decode).result()

    def _send(self, body: Any) -> int:
        if self._ended is not None:
            raise self._ended
        id = next(self._ids) & 0xFFFFFFFF
        self._sock.settimeout(None)
        self._sock.sendall(_core.frame({"request": {"id": id, "request": body}}))
        return id

    def _wait(self, id: int, timeout: Optional[float]) -> Dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while id not in self._replies:
            if self._ended is not None:
                raise self._ended
            if not self._pump(deadline):
                raise TimeoutError(f"no reply to request {id} within {timeout}s")
        return self._replies.pop(id)

    def _next_push(self, handle: int, timeout: Optional[float]) -> Optional[Push]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            queue = self._subs.get(handle)
            if queue is None:
                raise _core.NotFound("not_found", f"no subscription {handle} on this connection")
            if queue:
                return queue.popleft()
            if self._ended is not None:
                raise self._ended
            if not self._pump(deadline):
                return None

    def _pump(self, deadline: Optional[float]) -> bool:
        """Reads and handles one message; False if none came by ``deadline``."""
        message = self._read(deadline)
        if message is None:
            return False
        if "reply" in message:
            reply = message["reply"]
            id = int(reply["id"])
            if id in self._unwanted:
                self._unwanted.discard(id)
            else:
                self._replies[id] = reply["outcome"]
        elif "push" in message:
            self._pushed(int(message["push"]["handle"]), message["push"]["push"])
        elif "goodbye" in message:
            self._ended = ConnectionClosed.from_wire(message["goodbye"].get("error", {}))  # type: ignore[assignment]
            self._sock.close()
        return True

    def _pushed(self, handle: int, body: Mapping[str, Any]) -> None:
        dialog = _core.route(handle, body, self._dialogs, self._deliver)
        if dialog is None:
            return
        self._unwanted.add(self._send({"dialog_ready": {"handle": handle}}))
        try:
            answer = self._ui(dialog) if self._ui is not None else None
        except BaseException:
            self._unwanted.add(self._send({"dialog_close": {"handle": handle}}))
            raise
        if handle not in self._dialogs:
            return
        if answer is None:
            self._unwanted.add(self._send({"dialog_close": {"handle": handle}}))
        else:
            input = _core.dialog_input(dialog, answer)
            self._unwanted.add(self._send({"dialog_send": {"handle": handle, "input": input}}))

    def _deliver(self, handle: int, item: Push) -> None:
        queue = self._subs.get(handle)
        if queue is not None:
            queue.append(item)

    def _read(self, deadline: Optional[float]) -> Optional[Dict[str, Any]]:
        """One whole message, or None by ``deadline``; a partial frame is kept."""
        while True:
            if len(self._buf) >= 4:
                n = _core.frame_length(bytes(self._buf[:4]))
                if len(self._buf) >= 4 + n:
                    payload = bytes(self._buf[4 : 4 + n])
                    del self._buf[: 4 + n]
                    return json.loads(payload)
            if deadline is None:
                self._sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                return None
            except OSError as e:
                if self.remote is not None and isinstance(e, ssl.SSLError):
                    self._ended = _core.tls_error(self.remote, e)
                else:
                    self._ended = ConnectionClosed("protocol", f"the connection failed: {e}")
                raise self._ended from e
            if not chunk:
                self._ended = ConnectionClosed("protocol", "the daemon closed the connection")
                raise self._ended
            self._buf += chunk


class Pipeline:
    """Requests sent at once, answered later: ``a = p.get(...); b = p.get(...);
    a.result(); b.result()``. Replies come in completion order; each ``Pending`` takes
    its own."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def _submit(self, built: _core.Built) -> Pending:
        body, decode = built
        return Pending(self._c, self._c._send(body), decode)

    def _schema_if(self, class_: str, *maps: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        return self._c._schema(class_) if _core.untagged(*maps) else None

    def get(self, class_: str, key: Optional[Mapping[str, Any]] = None, **props: Any) -> Pending:
        key = {**(key or {}), **props}
        return self._submit(_core.get(class_, key, self._schema_if(class_, key)))

    def enumerate(self, class_: str, selector: Optional[Mapping[str, Any]] = None, **props: Any) -> Pending:
        selector = {**(selector or {}), **props}
        return self._submit(_core.enumerate_(class_, selector, self._schema_if(class_, selector)))

    def put(self, class_: str, values: Optional[Mapping[str, Any]] = None, **props: Any) -> Pending:
        values = {**(values or {}), **props}
        return self._submit(_core.put(class_, values, self._schema_if(class_, values)))

    def delete(self, class_: str, key: Optional[Mapping[str, Any]] = None, **props: Any) -> Pending:
        key = {**(key or {}), **props}
        return self._submit(_core.delete(class_, key, self._schema_if(class_, key)))

    def call(
        self,
        class_: str,
        method: str,
        key: Optional[Mapping[str, Any]] = None,
        args: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> Pending:
        args = {**(args or {}), **kwargs}
        schema = self._schema_if(class_, key, args)
        return self._submit(_core.call(class_, method, key, args, schema))

    def query(self, sql: str, *, plan: bool = False) -> Pending:
        return self._submit(_core.query(sql, plan))
