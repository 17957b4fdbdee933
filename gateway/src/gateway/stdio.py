"""`python -m gateway.stdio`: a bridge for desktop MCP clients that only speak stdio.

It relays every JSON-RPC message unchanged between this process's stdin/stdout (the SDK's stdio server
transport) and the running hub's Streamable HTTP endpoint (the SDK's HTTP client transport), adding the API
key. The hub does all the work; the bridge keeps no state of its own.

    python -m gateway.stdio --url http://127.0.0.1:8600/mcp --key ghub_...   (or HUB_API_KEY in the environment)
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client

KEY_ENV = "HUB_API_KEY"
URL_ENV = "HUB_MCP_URL"


async def _pump(source, sink, label: str) -> None:  # type: ignore[no-untyped-def]
    async with sink:
        async for message in source:
            if isinstance(message, Exception):
                print(f"gateway.stdio: {label}: {message}", file=sys.stderr, flush=True)
                continue
            await sink.send(message)


async def bridge(url: str, key: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with (
        http,
        streamable_http_client(url, http_client=http) as (hub_read, hub_write),
        stdio_server() as (local_read, local_write),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_pump, local_read, hub_write, "from the client")
        await _pump(hub_read, local_write, "from the hub")
        tasks.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.stdio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8600/mcp"), help="hub MCP URL")
    parser.add_argument("--key", default=os.environ.get(KEY_ENV), help=f"API key (default: ${KEY_ENV})")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error(f"an API key is required: pass --key or set {KEY_ENV} (create one in the admin UI)")
    try:
        anyio.run(bridge, args.url, args.key)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
