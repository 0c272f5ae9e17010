#!/usr/bin/env python3
"""An external Purveyor provider that raises events on its own, standard library only.

Class demo.ticker (a singleton): a tick counter. Every TICKER_INTERVAL_MS milliseconds
(default 200) it raises the event `tick` with the count and the parity, in a frame of its
own: a response with id 0, `{"id": 0, "reply": {"done": {"events": [...]}}}`
(docs/provider-abi.md). The host checks each event against the schema and delivers it to
subscribers: `purveyor events demo.ticker --filter parity=even`. It also raises `bogus`,
an event its schema does not declare, every tenth tick: the host drops it and records the
provider's error, and nothing else is affected.
"""
import json
import os
import struct
import sys
import threading
import time

CLASSES = [{
    "path": "demo.ticker",
    "description": "Ticks, raised as events",
    "properties": [
        {"name": "ticks", "type": "u64", "unit": "count", "semantic": "counter"},
    ],
    "events": [{
        "name": "tick",
        "description": "Another tick",
        "properties": [
            {"name": "n", "type": "u64", "unit": "count", "semantic": "discrete"},
            {"name": "parity", "type": "string", "unit": "none", "semantic": "discrete"},
        ],
    }],
}]

lock = threading.Lock()
ticks = 0


def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None  # the host closed the channel: exit
    (length,) = struct.unpack("<I", header)
    return json.loads(stream.read(length))


def write_frame(stream, obj):
    data = json.dumps(obj).encode()
    with lock:  # replies and events share stdout
        stream.write(struct.pack("<I", len(data)) + data)
        stream.flush()


def ticker(wr, interval):
    global ticks
    while True:
        time.sleep(interval)
        ticks += 1
        event = {"class": "demo.ticker", "event": "tick", "data": {
            "n": {"u64": ticks},
            "parity": {"string": "even" if ticks % 2 == 0 else "odd"},
        }}
        events = [event]
        if ticks % 10 == 0:
            events.append({"class": "demo.ticker", "event": "bogus", "data": {}})
        write_frame(wr, {"id": 0, "reply": {"done": {"events": events}}})


def answer(call):
    if call == "classes":
        return {"classes": CLASSES}
    if call == "release":
        return "released"
    if "enumerate" in call:
        return {"instances": [{"ticks": {"u64": ticks}}]}
    if "get" in call:
        return {"instance": {"ticks": {"u64": ticks}}}
    return {"error": {"kind": "unsupported", "message": f"unknown call {call!r}"}}


def main():
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    if read_frame(rd) is None:  # the hello: {"abi": 1, "encoding": "json", ...}
        return
    write_frame(wr, {"abi": 1})
    interval = int(os.environ.get("TICKER_INTERVAL_MS", "200")) / 1000
    threading.Thread(target=ticker, args=(wr, interval), daemon=True).start()
    while (request := read_frame(rd)) is not None:
        write_frame(wr, {"id": request["id"], "reply": answer(request["call"])})


if __name__ == "__main__":
    main()
