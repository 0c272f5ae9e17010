"""What the blocking and the asyncio clients share: framing, the hello, values, requests
and answers. Nothing here does I/O.

The wire is `docs/protocol.md` of the Purveyor repository: frames of a 32-bit
little-endian length and a JSON payload; values tagged with their type
(``{"u64": 5}``), converted here to and from plain Python values by the class's schema.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "PROTOCOL",
    "MINOR",
    "PurveyorError",
    "ConnectionClosed",
    "Event",
    "Change",
    "Lost",
    "Column",
    "Rows",
    "Dialog",
    "ClassList",
    "default_socket",
]

PROTOCOL = 1
#: The minor version this client speaks (queries and change events: 10; reload: 11).
MINOR = 11
#: The largest reply accepted, as the Rust client (16 MiB).
MAX_REPLY = 16 * 1024 * 1024
_HEADER = struct.Struct("<I")
_SCALARS = ("i64", "u64", "f64", "bool", "string", "bytes", "timestamp")
_TAGS = frozenset(_SCALARS + ("array",))


def default_socket() -> str:
    """The daemon's socket as the Rust client finds it: ``$PURVEYOR_SOCKET``, else
    ``$XDG_RUNTIME_DIR/purveyor/purveyor.sock``, else ``/run/purveyor/purveyor.sock``."""
    path = os.environ.get("PURVEYOR_SOCKET")
    if path:
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "purveyor", "purveyor.sock")
    return "/run/purveyor/purveyor.sock"


@dataclass
class Remote:
    """A daemon on another machine, over TLS 1.3 (``docs/remote.md``): its address, the CA
    that issued its certificate, and this client's certificate and key (the certificate's
    common name is the user the daemon acts for)."""

    host: str
    port: int
    ca: str
    cert: Optional[str] = None
    key: Optional[str] = None

    def context(self) -> "ssl.SSLContext":
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(self.ca)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols(["purveyor/1"])
        return ctx

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tls://{host}:{self.port}"


def remote(
    address: Optional[str] = None,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
) -> Optional[Remote]:
    """The remote daemon to use: ``address`` (``HOST:PORT``, ``tls://HOST:PORT``, or a port
    on loopback), else ``$PURVEYOR_REMOTE``; the CA, certificate and key from the arguments,
    else ``$PURVEYOR_TLS_CA``, ``$PURVEYOR_TLS_CERT``, ``$PURVEYOR_TLS_KEY``. ``None`` when
    neither names a daemon."""
    address = address or os.environ.get("PURVEYOR_REMOTE")
    if not address:
        return None
    rest = address[len("tls://"):] if address.startswith("tls://") else address
    if rest.isdigit():
        host, port = "127.0.0.1", rest
    else:
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not a daemon address: expected HOST:PORT, tls://HOST:PORT or a port")
    ca = ca or os.environ.get("PURVEYOR_TLS_CA")
    if not ca:
        raise ValueError(f"no CA for {address}: pass ca= or set PURVEYOR_TLS_CA")
    cert = cert or os.environ.get("PURVEYOR_TLS_CERT")
    key = key or os.environ.get("PURVEYOR_TLS_KEY")
    return Remote(host, int(port), ca, cert, key)


def tls_error(where: Remote, e: BaseException) -> "PurveyorError":
    """What a TLS failure means to the caller, as the Rust client says it."""
    text = str(e)
    if "CERTIFICATE_REQUIRED" in text.upper() or "certificate required" in text.lower():
        return AccessDenied(
            "access_denied",
            f"the daemon at {where} requires a client certificate: pass cert= and key= "
            "(or set PURVEYOR_TLS_CERT and PURVEYOR_TLS_KEY)",
        )
    if "ALERT" in text.upper():
        return AccessDenied("access_denied", f"the daemon at {where} refused this client's certificate ({text})")
    return ConnectionClosed("protocol", f"the TLS connection to {where} failed: {text}")


# ---------------------------------------------------------------------------------------
# Errors


class PurveyorError(Exception):
    """An error the daemon answered: ``code`` is the protocol's (``not_found``,
    ``access_denied``, ``provider_failed``, ``timeout``, ``invalid_request``,
    ``unsupported``, ``shutting_down``, ``protocol``, ``internal``, ``limit_exceeded``),
    ``provider`` the provider at fault when there is one."""

    code: str
    message: str
    provider: Optional[str]

    def __init__(self, code: str, message: str, provider: Optional[str] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.provider = provider

    @staticmethod
    def from_wire(err: Mapping[str, Any]) -> "PurveyorError":
        code = str(err.get("code", "internal"))
        cls = _BY_CODE.get(code, PurveyorError)
        return cls(code, str(err.get("message", "")), err.get("provider"))


class NotFound(PurveyorError):
    """``not_found``: no such class, instance, method or handle."""


class AccessDenied(PurveyorError):
    """``access_denied``: the access policy refuses this caller."""


class InvalidRequest(PurveyorError):
    """``invalid_request``: the request is wrong (the message says how)."""


class ProviderFailed(PurveyorError):
    """``provider_failed``: the provider answered an error, crashed or is quarantined."""


class Timeout(PurveyorError):
    """``timeout``: the provider did not answer within its deadline."""


class LimitExceeded(PurveyorError):
    """``limit_exceeded``: a documented limit was reached (the message names it)."""


class ConnectionClosed(PurveyorError):
    """The connection ended: the daemon's ``goodbye`` (its code and message) or the
    socket closing (code ``protocol``). Requests in flight end with it."""


_BY_CODE = {
    "not_found": NotFound,
    "access_denied": AccessDenied,
    "invalid_request": InvalidRequest,
    "provider_failed": ProviderFailed,
    "timeout": Timeout,
    "limit_exceeded": LimitExceeded,
}


# ---------------------------------------------------------------------------------------
# Frames


def frame(message: Mapping[str, Any]) -> bytes:
    """One frame: the length, then the JSON payload."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    """The payload length a header announces, refused before the payload is read if
    it is 0 or past [`MAX_REPLY`]."""
    (n,) = _HEADER.unpack(header)
    if n == 0 or n > MAX_REPLY:
        raise ConnectionClosed("protocol", f"the daemon sent a frame of {n} bytes")
    return n


def hello(client: str, ui: bool) -> Dict[str, Any]:
    message: Dict[str, Any] = {
        "protocol": PROTOCOL,
        "minor": MINOR,
        "encoding": "json",
        "client": client,
    }
    if ui:
        message["ui"] = True
    return message


def welcome(message: Mapping[str, Any]) -> Dict[str, Any]:
    """The server's answer to the hello, or the error of its goodbye."""
    if "goodbye" in message:
        raise ConnectionClosed.from_wire(message["goodbye"].get("error", {}))
    if message.get("protocol") != PROTOCOL:
        raise ConnectionClosed("protocol", f"not a Purveyor welcome: {str(message)[:200]}")
    return dict(message)


# ---------------------------------------------------------------------------------------
# Values


def to_python(value: Any) -> Any:
    """A tagged value (``{"u64": 5}``) as a plain Python value: numbers, ``bool``,
    ``str``, ``bytes``, a ``timestamp`` as integer nanoseconds since the epoch (UTC; see
    [`to_datetime`]), an array as a list. ``None`` stays ``None``."""
    if value is None:
        return None
    (tag, inner), = value.items()
    if tag == "bytes":
        return bytes(inner)
    if tag == "array":
        return [to_python(v) for v in inner]
    return inner


def to_datetime(nanoseconds: int) -> _dt.datetime:
    """A ``timestamp`` value as an aware UTC datetime (to the microsecond)."""
    return _dt.datetime.fromtimestamp(nanoseconds / 1e9, tz=_dt.timezone.utc)


def instance(values: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """A tagged instance as a dict of plain values."""
    return {name: to_python(v) for name, v in (values or {}).items()}


def _guess(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "i64" if value < 0 else "u64"
    if isinstance(value, float):
        return "f64"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, _dt.datetime):
        return "timestamp"
    if isinstance(value, (list, tuple)):
        inner = _guess(value[0]) if value else "string"
        return f"array<{inner}>"
    return "string"


def tagged(value: Any, ty: Optional[str]) -> Dict[str, Any]:
    """A plain value as the tagged value of type ``ty`` (``"u64"``, ``"array<string>"``…;
    ``None``: guessed from the value). A value already tagged is sent as it is."""
    if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in _TAGS:
        return dict(value)
    ty = ty or _guess(value)
    if ty.startswith("array<") and ty.endswith(">"):
        inner = ty[len("array<") : -1]
        return {"array": [tagged(v, inner) for v in value]}
    if ty in ("i64", "u64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer for a {ty}, got {value!r}")
        return {ty: value}
    if ty == "f64":
        return {ty: float(value)}
    if ty == "bool":
        return {ty: bool(value)}
    if ty == "bytes":
        return {ty: list(bytes(value))}
    if ty == "timestamp":
        if isinstance(value, _dt.datetime):
            value = int(value.timestamp() * 1_000_000) * 1000
        return {ty: int(value)}
    if ty == "string":
        if not isinstance(value, str):
            raise TypeError(f"expected a str for a string, got {value!r}")
        return {ty: value}
    raise TypeError(f"unknown value type {ty!r}")


def _types(schema: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """Property name → type, from a class schema (JSON form)."""
    if not schema:
        return {}
    return {p["name"]: p["type"] for p in schema.get("properties", [])}


def tag_all(values: Optional[Mapping[str, Any]], types: Mapping[str, str]) -> Dict[str, Any]:
    return {name: tagged(v, types.get(name)) for name, v in (values or {}).items()}


# ---------------------------------------------------------------------------------------
# What comes back


class ClassList(List[Dict[str, Any]]):
    """The classes' schemas (JSON form); ``problems`` are the providers that could not
    say theirs, as [`PurveyorError`]s."""

    problems: List[PurveyorError]

    def __init__(self, classes: Iterable[Dict[str, Any]], problems: Iterable[PurveyorError]):
        super().__init__(classes)
        self.problems = list(problems)


@dataclass
class Column:
    """A query's result column: its property's ``type`` and ``unit`` when it is one as it
    is, else ``None``."""

    name: str
    type: Optional[str]
    unit: Optional[str]


@dataclass
class Rows:
    """A query's answer: ``rows`` are tuples in ``columns`` order (``None`` is SQL
    ``NULL``); ``plan`` what each class was asked, when asked for."""

    columns: List[Column]
    rows: List[Tuple[Any, ...]]
    plan: List[str] = field(default_factory=list)

    def dicts(self) -> List[Dict[str, Any]]:
        """The rows as dicts by column name (a repeated name: the last wins)."""
        names = [c.name for c in self.columns]
        return [dict(zip(names, row)) for row in self.rows]


@dataclass
class Event:
    """An event a provider raised, of a ``subscribe`` subscription."""

    class_: str
    event: str
    data: Dict[str, Any]


@dataclass
class Change:
    """A ``watch_changes`` push: ``kind`` is ``created``, ``deleted`` or ``modified``;
    ``instance`` as it is now (as it was, when deleted); ``changed`` the modified
    properties as ``(name, old, new)``."""

    class_: str
    kind: str
    instance: Dict[str, Any]
    changed: List[Tuple[str, Any, Any]]


@dataclass
class Lost:
    """The connection read too slowly: this many events of the subscription were
    dropped since the last report."""

    dropped: int


Push = Union[Event, Change, Lost]


def push(body: Mapping[str, Any]) -> Optional[Push]:
    """A subscription's push; ``None`` for kinds this client does not know."""
    if "event" in body:
        e = body["event"]
        return Event(e["class"], e["event"], instance(e.get("data")))
    if "change" in body:
        c = body["change"]
        changed = [(p["name"], to_python(p.get("old")), to_python(p.get("new"))) for p in c.get("changed", [])]
        return Change(c["class"], c["change"], instance(c.get("instance")), changed)
    if "lost" in body:
        return Lost(int(body["lost"].get("dropped", 0)))
    return None


@dataclass
class Dialog:
    """An in-call dialog a provider opened for one of this client's calls. The ``ui``
    callback given to ``connect`` gets it and returns the input to send —
    ``{"button": NAME, "values": {FIELD: value}}`` (values plain, typed by their fields'
    kinds) — or ``None`` to close the dialog unanswered."""

    handle: int
    provider: str
    request: Optional[int]
    deadline_ms: int
    form: Dict[str, Any]
    updates: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return str(self.form.get("title", ""))

    @property
    def buttons(self) -> List[str]:
        return [b["name"] for b in self.form.get("buttons", [])]


def dialog_open(handle: int, body: Mapping[str, Any]) -> Dialog:
    return Dialog(
        handle=handle,
        provider=str(body.get("provider", "")),
        request=body.get("request"),
        deadline_ms=int(body.get("deadline_ms", 0)),
        form=dict(body.get("form") or {}),
    )


def route(
    handle: int,
    body: Mapping[str, Any],
    dialogs: Dict[int, Dialog],
    deliver: Callable[[int, Push], None],
) -> Optional[Dialog]:
    """Handles a push: a dialog's update or end in ``dialogs``, a subscription's item
    through ``deliver``; a newly opened dialog is registered and returned, for the
    client to answer. Dialog handles and subscription handles are separate numberings:
    a push's kind says which it is for."""
    if "dialog_open" in body:
        dialog = dialog_open(handle, body["dialog_open"])
        dialogs[handle] = dialog
        return dialog
    if "dialog_update" in body:
        if handle in dialogs:
            dialogs[handle].updates.append(body["dialog_update"].get("update", {}))
    elif "dialog_closed" in body:
        dialogs.pop(handle, None)
    else:
        item = push(body)
        if item is not None:
            deliver(handle, item)
    return None


def dialog_input(dialog: Dialog, answer: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``dialog_send`` input for a callback's answer, its values tagged by the kinds
    of the form's fields."""
    kinds = {}
    for f in dialog.form.get("fields", []):
        kind = f.get("kind")
        name = kind if isinstance(kind, str) else next(iter(kind or {"text": 0}))
        kinds[f["name"]] = {"number": "f64", "confirm": "bool"}.get(name, "string")
    values = tag_all(answer.get("values"), kinds)
    return {"button": answer.get("button"), "values": values}


# ---------------------------------------------------------------------------------------
# Requests


Filter = Union[Mapping[str, Any], Sequence[Tuple[str, str, Any]], None]
_OPS = ("eq", "ne", "lt", "le", "gt", "ge")


def conditions(filter: Filter, types: Mapping[str, str]) -> List[Dict[str, Any]]:
    """A filter as the protocol's conditions: ``{"name": "sshd"}`` (equality) or
    ``[("rss", "gt", 1000000)]``."""
    if not filter:
        return []
    pairs: Iterable[Tuple[str, str, Any]]
    if isinstance(filter, Mapping):
        pairs = [(name, "eq", value) for name, value in filter.items()]
    else:
        pairs = filter
    out = []
    for name, op, value in pairs:
        if op not in _OPS:
            raise ValueError(f"unknown operator {op!r} (one of {', '.join(_OPS)})")
        out.append({"property": name, "op": op, "value": tagged(value, types.get(name))})
    return out


def event_types(schema: Optional[Mapping[str, Any]], event: Optional[str]) -> Dict[str, str]:
    """Property types of a class's events (of one event when named)."""
    types: Dict[str, str] = {}
    for e in (schema or {}).get("events", []):
        if event is None or e.get("name") == event:
            types.update(_types(e))
    return types


def method_types(schema: Optional[Mapping[str, Any]], method: str) -> Dict[str, str]:
    for m in (schema or {}).get("methods", []):
        if m.get("name") == method:
            return {p["name"]: p["type"] for p in m.get("params", [])}
    return {}


def answer(outcome: Mapping[str, Any]) -> Any:
    """A reply's outcome: its ``ok`` body, or its error raised."""
    if "err" in outcome:
        raise PurveyorError.from_wire(outcome["err"])
    return outcome.get("ok")


def rows(body: Mapping[str, Any]) -> Rows:
    r = body["rows"]
    columns = [Column(c["name"], c.get("type"), c.get("unit")) for c in r.get("columns", [])]
    return Rows(columns, [tuple(to_python(v) for v in row) for row in r.get("rows", [])], list(r.get("plan", [])))


def classes(body: Mapping[str, Any]) -> ClassList:
    c = body["classes"]
    return ClassList(c.get("classes", []), [PurveyorError.from_wire(p) for p in c.get("problems", [])])


def returned(body: Any) -> Any:
    return to_python(body["returned"]) if isinstance(body, Mapping) else None


def untagged(*maps: Optional[Mapping[str, Any]]) -> bool:
    """Whether any value needs its class's schema to be tagged."""
    for m in maps:
        for v in (m or {}).values():
            if not (isinstance(v, Mapping) and len(v) == 1 and next(iter(v)) in _TAGS):
                return True
    return False


def filter_untagged(filter: Filter) -> bool:
    if not filter:
        return False
    if isinstance(filter, Mapping):
        return untagged(filter)
    return untagged({str(i): v for i, (_, _, v) in enumerate(filter)})


# A request: its JSON body, and how its answer's body becomes the method's result.
Built = Tuple[Dict[str, Any], Any]


def get(class_: str, key: Optional[Mapping[str, Any]], schema: Optional[Mapping[str, Any]]) -> Built:
    body = {"get": {"class": class_, "key": tag_all(key, _types(schema))}}
    return body, lambda ok: instance(ok["instance"])


def enumerate_(class_: str, selector: Optional[Mapping[str, Any]], schema: Optional[Mapping[str, Any]]) -> Built:
    body = {"enumerate": {"class": class_, "selector": tag_all(selector, _types(schema))}}
    return body, lambda ok: [instance(i) for i in ok["instances"]["instances"]]


def describe(class_: str) -> Built:
    return {"describe": {"class": class_}}, lambda ok: ok["class"]


def list_classes(namespace: Optional[str]) -> Built:
    return {"list_classes": {"namespace": namespace}}, classes


def put(class_: str, values: Mapping[str, Any], schema: Optional[Mapping[str, Any]]) -> Built:
    body = {"put": {"class": class_, "instance": tag_all(values, _types(schema))}}
    return body, lambda ok: None


def delete(class_: str, key: Mapping[str, Any], schema: Optional[Mapping[str, Any]]) -> Built:
    body = {"delete": {"class": class_, "key": tag_all(key, _types(schema))}}
    return body, lambda ok: None


def call(
    class_: str,
    method: str,
    key: Optional[Mapping[str, Any]],
    args: Optional[Mapping[str, Any]],
    schema: Optional[Mapping[str, Any]],
) -> Built:
    body = {
        "call": {
            "class": class_,
            "method": method,
            "key": tag_all(key, _types(schema)),
            "args": tag_all(args, method_types(schema, method)),
        }
    }
    return body, returned


def subscribe(class_: str, event: Optional[str], filter: Filter, schema: Optional[Mapping[str, Any]]) -> Built:
    body = {"subscribe": {"class": class_, "event": event, "filter": conditions(filter, event_types(schema, event))}}
    return body, lambda ok: int(ok["subscribed"]["handle"])


def watch_changes(
    class_: str, filter: Filter, interval: float, counters: bool, schema: Optional[Mapping[str, Any]]
) -> Built:
    body = {
        "watch_changes": {
            "class": class_,
            "filter": conditions(filter, _types(schema)),
            "interval_ms": int(round(interval * 1000)),
            "counters": counters,
        }
    }
    return body, lambda ok: int(ok["subscribed"]["handle"])


def query(sql: str, plan: bool) -> Built:
    return {"query": {"sql": sql, "plan": plan}}, rows


def simple(name: str) -> Built:
    """``ping``, ``status``, ``list_providers``, ``reload``: no arguments."""
    decode = {
        "ping": lambda ok: None,
        "status": lambda ok: ok["status"],
        "list_providers": lambda ok: ok["providers"],
        "reload": lambda ok: ok["reloaded"],
    }[name]
    return name, decode  # type: ignore[return-value]
