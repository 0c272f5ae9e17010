#!/usr/bin/env python3
"""An external Purveyor provider in Python, standard library only.

Class demo.uptime (a singleton): the machine's uptime and this process's pid. The host
starts it with hosting = "external" (see uptime.toml) and talks to it over stdin/stdout:
frames of a 4-byte little-endian length and a JSON payload (docs/provider-abi.md).
"""
import json
import os
import struct
import sys

CLASSES = [{
    "path": "demo.uptime",
    "description": "How long the machine has been up",
    "properties": [
        {"name": "seconds", "type": "f64", "unit": "seconds", "semantic": "gauge"},
        {"name": "pid", "type": "u64", "unit": "none", "semantic": "discrete"},
    ],
}]


def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None  # the host closed the channel: exit
    (length,) = struct.unpack("<I", header)
    return json.loads(stream.read(length))


def write_frame(stream, obj):
    data = json.dumps(obj).encode()
    stream.write(struct.pack("<I", len(data)) + data)
    stream.flush()


def instance():
    with open("/proc/uptime") as f:
        seconds = float(f.read().split()[0])
    return {"seconds": {"f64": seconds}, "pid": {"u64": os.getpid()}}


def answer(call):
    if call == "classes":
        return {"classes": CLASSES}
    if call == "release":
        return "released"
    if "enumerate" in call:
        return {"instances": [instance()]}
    if "get" in call:
        return {"instance": instance()}
    return {"error": {"kind": "unsupported", "message": f"unknown call {call!r}"}}


def main():
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    if read_frame(rd) is None:  # the hello: {"abi": 1, "encoding": "json", ...}
        return
    write_frame(wr, {"abi": 1})
    while (request := read_frame(rd)) is not None:
        write_frame(wr, {"id": request["id"], "reply": answer(request["call"])})


if __name__ == "__main__":
    main()
