"""The WebSocket client of the waypoint protocol tests: `ws_client.py URL MESSAGE...` connects once, sends each
message and prints a JSON object with every message received (the server's greeting first)."""

import asyncio
import json
import sys

import websockets


async def main():
    url = sys.argv[1]
    got = []
    async with websockets.connect(url, open_timeout=10) as ws:
        got.append(await asyncio.wait_for(ws.recv(), 10))
        for m in sys.argv[2:]:
            await ws.send(m)
            got.append(await asyncio.wait_for(ws.recv(), 10))
    print(json.dumps({"received": got}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
