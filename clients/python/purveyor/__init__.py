"""Purveyor's official Python client.

    import purveyor
    with purveyor.connect() as c:                     # $PURVEYOR_SOCKET or the default
        print(c.get("system.load")["load1"])
        for row in c.query("SELECT pid, name FROM system.process LIMIT 3").rows:
            print(row)

Blocking: [`connect`] / [`Client`]; asyncio: [`purveyor.aio.connect`]. Errors the
daemon answers are [`PurveyorError`]s carrying the protocol's ``code``.
"""

from ._core import (
    AccessDenied,
    Change,
    ClassList,
    Column,
    ConnectionClosed,
    Dialog,
    Event,
    InvalidRequest,
    LimitExceeded,
    Lost,
    NotFound,
    ProviderFailed,
    PurveyorError,
    Rows,
    Timeout,
    default_socket,
    to_datetime,
)
from .client import Client, Pending, Pipeline, Subscription, connect

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Change",
    "ClassList",
    "Client",
    "Column",
    "ConnectionClosed",
    "Dialog",
    "Event",
    "InvalidRequest",
    "LimitExceeded",
    "Lost",
    "NotFound",
    "Pending",
    "Pipeline",
    "ProviderFailed",
    "PurveyorError",
    "Rows",
    "Subscription",
    "Timeout",
    "connect",
    "default_socket",
    "to_datetime",
]
