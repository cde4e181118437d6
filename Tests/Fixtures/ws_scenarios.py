#!/usr/bin/env python3
"""WebSocket scenarios through Switchyard's gateway, driven by the real Python client
(`websockets`, asyncio API). Prints one JSON object on stdout; exit 0 on success, 1 on failure
(reason on stderr and in "error"), 2 on usage.

usage: ws_scenarios.py URL SCENARIO

  echo      connect (with x-switchyard-debug), send 3 text messages and one 1 MiB binary
            message, expect each echoed back, close cleanly; reports the handshake's response
            headers of interest and the round trips
  refused   connect where the upstream does not upgrade; reports the HTTP status the client saw
"""
import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def echo(url):
    result = {"echoed": 0}
    async with connect(url, additional_headers={"x-switchyard-debug": "1"}, max_size=4 << 20) as ws:
        headers = ws.response.headers
        result["upstream"] = headers.get("x-switchyard-upstream")
        result["lane_effective"] = headers.get("x-switchyard-lane-effective")
        for i in range(3):
            text = f"hello {i}"
            await ws.send(text)
            if await ws.recv() != text:
                raise RuntimeError(f"text echo {i} differs")
            result["echoed"] += 1
        blob = os.urandom(1 << 20)
        await ws.send(blob)
        if await ws.recv() != blob:
            raise RuntimeError("binary echo differs")
        result["echoed"] += 1
    result["closed_cleanly"] = ws.close_code == 1000
    return result


async def refused(url):
    try:
        async with connect(url):
            return {"status": 101}
    except InvalidStatus as e:
        return {"status": e.response.status_code}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in ("echo", "refused"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, scenario = sys.argv[1], sys.argv[2]
    try:
        result = asyncio.run(asyncio.wait_for({"echo": echo, "refused": refused}[scenario](url), 30))
    except Exception as e:  # reported, not raised: the test prints it
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
