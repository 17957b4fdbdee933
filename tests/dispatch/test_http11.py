"""The dispatcher's small HTTP/1.1 client (dispatch_service.http11) against raw socket servers that answer as
written here: body framings (Content-Length, chunked, to the close), connection reuse, a server closing an idle
connection, broken and slow answers. The ComfyUI client's use of it is tested in test_dispatch_comfyui_client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dispatch_service.http11 import Http11Client, HttpConnectError, HttpError, HttpTimeoutError

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # (request head, writer) -> keep the connection


class RawServer:
    """Accepts connections and answers each request (head and Content-Length body read) with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")), 0)
                self.requests.append(head + await reader.readexactly(length))
                if not await self.handler(head, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[RawServer, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[RawServer, str]:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return raw, f"http://127.0.0.1:{port}/prefix"

    yield start
    for server in servers:
        server.close()


def answer(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_sized_answers_reuse_one_connection_and_the_request_is_as_written(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b'{"ok": true}', extra="Content-Type: application/json\r\n"))
        return True

    server, url = await serve(handler)
    client = Http11Client(url, {"User-Agent": "test", "Authorization": "Bearer x"}, 5.0)
    for _ in range(3):
        response = await client.request("GET", "/view", params={"filename": "a b.png", "subfolder": ""})
        assert (response.status_code, response.content) == (200, b'{"ok": true}')
        assert response.headers["content-type"] == "application/json"
    posted = await client.request("POST", "prompt", content=b"{}", content_type="application/json")
    assert posted.status_code == 200
    await client.aclose()
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /prefix/view?filename=a%20b.png&subfolder= HTTP/1.1\r\n")
    assert "\r\nHost: 127.0.0.1:" in first and "\r\nAuthorization: Bearer x\r\n" in first
    assert "Content-Length" not in first  # a GET without a body says none
    assert server.requests[3].decode().endswith("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


async def test_chunked_answers_with_extensions_and_trailers_are_joined(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"5;name=x\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n")
        return True

    server, url = await serve(handler)
    client = Http11Client(url, {}, 5.0)
    assert (await client.request("GET", "/a")).content == b"hello world"
    async with client.stream("GET", "/b") as response:  # the same connection: the chunked body was read to its end
        assert b"".join([piece async for piece in response.aiter_bytes()]) == b"hello world"
    assert (await client.request("GET", "/c")).content == b"hello world"
    await client.aclose()
    assert server.connections == 1


async def test_an_answer_read_to_the_close_is_whole_and_its_connection_not_reused(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        return False

    server, url = await serve(handler)
    client = Http11Client(url, {}, 5.0)
    assert (await client.request("GET", "/a")).content == b"until the end"
    assert (await client.request("GET", "/a")).content == b"until the end"
    await client.aclose()
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used_again(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"ok"))
        return False  # closes after each answer, without saying so

    server, url = await serve(handler)
    client = Http11Client(url, {}, 5.0)
    assert (await client.request("GET", "/a")).content == b"ok"
    await asyncio.sleep(0.05)  # the close has come in
    assert (await client.request("POST", "/b", content=b"x")).content == b"ok"
    await client.aclose()
    assert server.connections == 2
    assert len(server.requests) == 2  # the POST was sent once


async def test_a_get_on_a_reused_connection_broken_before_any_answer_is_sent_again_a_post_is_not(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if head.startswith(b"GET /prefix/setup "):
            writer.write(answer(b"ok"))
            return True
        writer.transport.abort()  # reads the request, then drops the connection without a word
        return False

    server, url = await serve(handler)
    client = Http11Client(url, {}, 5.0)
    await client.request("GET", "/setup")
    with pytest.raises(HttpError, match="broke"):  # not sent twice: it may have been done
        await client.request("POST", "/prompt", content=b"{}")
    assert len(server.requests) == 2
    await client.request("GET", "/setup")
    with pytest.raises(HttpError, match="broke"):  # sent again once on a new connection, which breaks too
        await client.request("GET", "/again")
    assert [r.split(b" ")[1] for r in server.requests[3:]] == [b"/prefix/again", b"/prefix/again"]
    await client.aclose()


async def test_broken_slow_and_unreachable_servers_raise_their_errors(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/short" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            return False
        if b"/slow" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await asyncio.sleep(1)
            return False
        if b"/junk" in head:
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            return False
        return True  # never answers

    _server, url = await serve(handler)
    client = Http11Client(url, {}, 0.3)
    with pytest.raises(HttpError, match="before the whole body"):
        await client.request("GET", "/short")
    with pytest.raises(HttpError, match="not HTTP"):
        await client.request("GET", "/junk")
    with pytest.raises(HttpTimeoutError):
        await client.request("GET", "/silent")
    with pytest.raises(HttpTimeoutError):
        await client.request("GET", "/silent", timeout_s=0.1)
    async with client.stream("GET", "/slow") as response:
        with pytest.raises(HttpTimeoutError, match="no piece of the body"):
            async for _ in response.aiter_bytes():
                pass
    await client.aclose()
    unreachable = Http11Client("http://127.0.0.1:9/", {}, 1.0)
    with pytest.raises(HttpConnectError):
        await unreachable.request("GET", "/")


async def test_a_streamed_body_left_unread_closes_its_connection(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"x" * 200_000))
        return True

    server, url = await serve(handler)
    client = Http11Client(url, {}, 5.0)
    async with client.stream("GET", "/big") as response:
        assert response.headers["content-length"] == "200000"
    async with client.stream("GET", "/big") as response:
        assert len(b"".join([piece async for piece in response.aiter_bytes()])) == 200_000
    assert len((await client.request("GET", "/big")).content) == 200_000
    await client.aclose()
    assert server.connections == 2  # the first was closed unread; the second read to its end and reused


async def test_a_closed_client_sends_nothing_more(serve) -> None:
    async def handler(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"ok"))
        return True

    server, url = await serve(handler)
    client = Http11Client(url, {}, 5.0)
    await client.request("GET", "/a")
    await client.aclose()
    with pytest.raises(HttpError, match="closed"):
        await client.request("GET", "/a")
    assert len(server.requests) == 1
