#!/usr/bin/env python3
"""An external I/O procedure provider in Python, standard library only.

Installs "UP  " globally (see upper.toml): `notes.up+` reads the file `notes.up` in upper
case. Read-only: opening for writing answers "unsupported". The host sends the provider
channel's io_* calls (docs/provider-abi.md) as JSON frames; data are arrays of bytes.
"""
import json
import struct
import sys


def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack("<I", header)
    return json.loads(stream.read(length))


def write_frame(stream, obj):
    data = json.dumps(obj).encode()
    stream.write(struct.pack("<I", len(data)) + data)
    stream.flush()


streams = {}
next_id = 1


def error(kind, message):
    return {"error": {"kind": kind, "message": message}}


def answer(call):
    global next_id
    if call == "release":
        return "released"
    if not isinstance(call, dict):
        return error("unsupported", f"unknown call {call!r}")
    (name, args), = call.items()
    if name == "io_open":
        if args["mode"] != "read":
            return error("unsupported", "UP is read-only")
        if args.get("element"):
            return error("invalid_argument", "UP has no elements")
        try:
            f = open(args["path"], "rb")
        except FileNotFoundError:
            return error("not_found", f"{args['path']} was not found")
        except PermissionError as e:
            return error("access_denied", str(e))
        streams[next_id] = f
        next_id += 1
        return {"io_opened": {"stream": next_id - 1, "size": None}}
    if name == "io_read":
        f = streams.get(args["stream"])
        if f is None:
            return error("not_found", f"stream {args['stream']}")
        return {"io_data": list(f.read(min(args["max"], 1 << 16)).upper())}
    if name == "io_close":
        f = streams.pop(args["stream"], None)
        if f is None:
            return error("not_found", f"stream {args['stream']}")
        f.close()
        return {"done": {}}
    return error("unsupported", f"{name} is not supported by UP")


def main():
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    if read_frame(rd) is None:
        return
    write_frame(wr, {"abi": 1})
    while (request := read_frame(rd)) is not None:
        write_frame(wr, {"id": request["id"], "reply": answer(request["call"])})


if __name__ == "__main__":
    main()
