"""The asyncio client: the same requests as [`purveyor.Client`], as coroutines. Many may
be in flight at once on one connection (``asyncio.gather``); one task reads the
connection and hands each reply to its request and each push to its subscription."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import ssl
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional, Union

from . import _core
from ._core import ConnectionClosed, Dialog, Filter, Push, Rows

#: An in-call dialog callback, plain or a coroutine function: the input to send, or
#: ``None`` to close the dialog unanswered.
AsyncUi = Callable[[Dialog], Union[Optional[Mapping[str, Any]], Awaitable[Optional[Mapping[str, Any]]]]]


async def connect(
    socket_path: Optional[str] = None,
    *,
    client: str = "purveyor-python",
    ui: Optional[AsyncUi] = None,
    timeout: Optional[float] = 30.0,
    remote: Optional[str] = None,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
) -> "AsyncClient":
    """As [`purveyor.connect`], for asyncio: ``async with await aio.connect() as c``;
    ``remote=`` (or ``$PURVEYOR_REMOTE``) reaches a daemon on another machine over TLS."""
    far = None if socket_path else _core.remote(remote, ca, cert, key)
    try:
        if far is None:
            path = socket_path or _core.default_socket()
            opened = asyncio.open_unix_connection(path)
        else:
            opened = asyncio.open_connection(far.host, far.port, ssl=far.context(), server_hostname=far.host)
        reader, writer = await asyncio.wait_for(opened, timeout)
    except ssl.SSLError as e:
        if far is None:
            raise
        raise _core.tls_error(far, e) from e
    try:
        writer.write(_core.frame(_core.hello(client, ui is not None)))
        await writer.drain()
        welcome = _core.welcome(await asyncio.wait_for(_read(reader), timeout))
    except (ssl.SSLError, ConnectionError) as e:
        writer.close()
        if far is None:
            raise
        # The daemon may have refused the handshake before the hello got through: the
        # reader holds the TLS alert it sent.
        alert = reader.exception()
        raise _core.tls_error(far, alert if isinstance(alert, ssl.SSLError) else e) from e
    except BaseException:
        writer.close()
        raise
    return AsyncClient(reader, writer, welcome, ui)


async def _read(reader: asyncio.StreamReader) -> Dict[str, Any]:
    try:
        n = _core.frame_length(await reader.readexactly(4))
        return json.loads(await reader.readexactly(n))
    except asyncio.IncompleteReadError as e:
        raise ConnectionClosed("protocol", "the daemon closed the connection") from e


class AsyncSubscription:
    """Pushes of one subscription: ``async for push in sub``; ``await sub.close()``."""

    def __init__(self, client: "AsyncClient", handle: int) -> None:
        self._client = client
        self.handle = handle
        self._queue: "asyncio.Queue[Union[Push, ConnectionClosed]]" = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[Push]:
        return self

    async def __anext__(self) -> Push:
        item = await self._queue.get()
        if isinstance(item, ConnectionClosed):
            self._queue.put_nowait(item)
            raise item
        return item

    async def next(self, timeout: Optional[float] = None) -> Optional[Push]:
        """The next push, or ``None`` if none came within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except asyncio.TimeoutError:
            return None

    async def close(self) -> None:
        if self._client._subs.pop(self.handle, None) is not None and not self._client.closed:
            await self._client._call({"unsubscribe": {"handle": self.handle}}, lambda ok: None)

    async def __aenter__(self) -> "AsyncSubscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClient:
    """A connection to the daemon for asyncio. Requests may run concurrently."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        welcome: Dict[str, Any],
        ui: Optional[AsyncUi],
    ) -> None:
        self.welcome = welcome
        self._reader = reader
        self._writer = writer
        self._ui = ui
        self._ids = itertools.count(1)
        self._waiting: Dict[int, "asyncio.Future[Dict[str, Any]]"] = {}
        self._subs: Dict[int, AsyncSubscription] = {}
        self._dialogs: Dict[int, Dialog] = {}
        self._schemas: Dict[str, Dict[str, Any]] = {}
        self._ended: Optional[ConnectionClosed] = None
        self._tasks: set = set()
        self._reading = asyncio.get_running_loop().create_task(self._read_all())

    async def get(self, class_: str, key: Optional[Mapping[str, Any]] = None, **props: Any) -> Dict[str, Any]:
        key = {**(key or {}), **props}
        return await self._call(*_core.get(class_, key, await self._schema_if(class_, key)))

    async def enumerate(
        self, class_: str, selector: Optional[Mapping[str, Any]] = None, **props: Any
    ) -> List[Dict[str, Any]]:
        selector = {**(selector or {}), **props}
        return await self._call(*_core.enumerate_(class_, selector, await self._schema_if(class_, selector)))

    async def describe(self, class_: str) -> Dict[str, Any]:
        schema = await self._call(*_core.describe(class_))
        self._schemas[class_] = schema
        return schema

    async def list_classes(self, namespace: Optional[str] = None) -> _core.ClassList:
        return await self._call(*_core.list_classes(namespace))

    async def query(self, sql: str, *, plan: bool = False) -> Rows:
        return await self._call(*_core.query(sql, plan))

    async def status(self) -> Dict[str, Any]:
        return await self._call(*_core.simple("status"))

    async def list_providers(self) -> List[Dict[str, Any]]:
        return await self._call(*_core.simple("list_providers"))

    async def ping(self) -> None:
        await self._call(*_core.simple("ping"))

    async def reload(self) -> Dict[str, Any]:
        return await self._call(*_core.simple("reload"))

    async def put(self, class_: str, values: Optional[Mapping[str, Any]] = None, **props: Any) -> None:
        values = {**(values or {}), **props}
        await self._call(*_core.put(class_, values, await self._schema_if(class_, values)))

    async def delete(self, class_: str, key: Optional[Mapping[str, Any]] = None, **props: Any) -> None:
        key = {**(key or {}), **props}
        await self._call(*_core.delete(class_, key, await self._schema_if(class_, key)))

    async def call(
        self,
        class_: str,
        method: str,
        key: Optional[Mapping[str, Any]] = None,
        args: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        args = {**(args or {}), **kwargs}
        schema = await self._schema_if(class_, key, args)
        return await self._call(*_core.call(class_, method, key, args, schema))

    async def subscribe(self, class_: str, event: Optional[str] = None, filter: Filter = None) -> AsyncSubscription:
        schema = await self._schema(class_) if _core.filter_untagged(filter) else None
        return self._subscribed(await self._call(*_core.subscribe(class_, event, filter, schema)))

    async def watch_changes(
        self, class_: str, *, interval: float = 1.0, filter: Filter = None, counters: bool = False
    ) -> AsyncSubscription:
        schema = await self._schema(class_) if _core.filter_untagged(filter) else None
        built = _core.watch_changes(class_, filter, interval, counters, schema)
        return self._subscribed(await self._call(*built))

    async def request(self, body: Any) -> Any:
        """Any request in its JSON form; its reply's ``ok`` body."""
        return await self._call(body, lambda ok: ok)

    @property
    def closed(self) -> bool:
        return self._ended is not None

    async def close(self) -> None:
        self._end(ConnectionClosed("protocol", "the client closed the connection"))
        self._reading.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- inside -----------------------------------------------------------------------

    def _subscribed(self, handle: int) -> AsyncSubscription:
        sub = AsyncSubscription(self, handle)
        self._subs[handle] = sub
        return sub

    async def _schema(self, class_: str) -> Dict[str, Any]:
        schema = self._schemas.get(class_)
        return schema if schema is not None else await self.describe(class_)

    async def _schema_if(self, class_: str, *maps: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        return await self._schema(class_) if _core.untagged(*maps) else None

    async def _call(self, body: Any, decode: Callable[[Any], Any]) -> Any:
        future = await self._send(body)
        return decode(_core.answer(await future))

    async def _send(self, body: Any) -> "asyncio.Future[Dict[str, Any]]":
        if self._ended is not None:
            raise self._ended
        id = next(self._ids) & 0xFFFFFFFF
        future: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()
        self._waiting[id] = future
        self._writer.write(_core.frame({"request": {"id": id, "request": body}}))
        await self._writer.drain()
        return future

    def _end(self, why: ConnectionClosed) -> None:
        if self._ended is None:
            self._ended = why
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(why)
        self._waiting.clear()
        for sub in self._subs.values():
            sub._queue.put_nowait(why)

    async def _read_all(self) -> None:
        try:
            while True:
                message = await _read(self._reader)
                if "reply" in message:
                    reply = message["reply"]
                    future = self._waiting.pop(int(reply["id"]), None)
                    if future is not None and not future.done():
                        future.set_result(reply["outcome"])
                elif "push" in message:
                    self._pushed(int(message["push"]["handle"]), message["push"]["push"])
                elif "goodbye" in message:
                    raise ConnectionClosed.from_wire(message["goodbye"].get("error", {}))
        except ConnectionClosed as e:
            self._end(e)
        except (OSError, ValueError) as e:
            self._end(ConnectionClosed("protocol", f"the connection failed: {e}"))

    def _pushed(self, handle: int, body: Mapping[str, Any]) -> None:
        dialog = _core.route(handle, body, self._dialogs, self._deliver)
        if dialog is not None:
            task = asyncio.get_running_loop().create_task(self._answer(dialog))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _deliver(self, handle: int, item: Push) -> None:
        sub = self._subs.get(handle)
        if sub is not None:
            sub._queue.put_nowait(item)

    async def _answer(self, dialog: Dialog) -> None:
        handle = dialog.handle
        try:
            await self._fire({"dialog_ready": {"handle": handle}})
            answer = self._ui(dialog) if self._ui is not None else None
            if inspect.isawaitable(answer):
                answer = await answer
        except ConnectionClosed:
            return
        except Exception:
            answer = None
        if handle not in self._dialogs or self._ended is not None:
            return
        if answer is None:
            await self._fire({"dialog_close": {"handle": handle}})
        else:
            await self._fire({"dialog_send": {"handle": handle, "input": _core.dialog_input(dialog, answer)}})

    async def _fire(self, body: Any) -> None:
        """Sends a request whose reply nobody waits for."""
        future = await self._send(body)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
