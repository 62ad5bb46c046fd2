"""A WebSocket echo server (Debian's python3-websockets) for the waypoint protocol tests: every text message comes
back as `<pod name>:<message>`; the handshake's `x-request-id` (added by a waypoint, absent on a direct path) is
sent first as `request-id:<value>`."""

import asyncio
import os
import sys

import websockets

POD = os.environ.get("POD_NAME", "unknown")


async def handler(ws, path=None):
    await ws.send("request-id:" + ws.request_headers.get("x-request-id", ""))
    async for message in ws:
        await ws.send(POD + ":" + message)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    async with websockets.serve(handler, "0.0.0.0", port):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
