"""A small keep-alive HTTP/1.1 client on asyncio streams, for the ComfyUI client's requests.

Why not httpx: each job makes two requests to its instance (POST /prompt, GET /view), and httpx with its
transport layers took ~20 % of the dispatcher's busy CPU for them (py-spy, cost_bench). This client does only
what ComfyUI's HTTP API needs: one origin (http or https, with a path prefix), requests with a whole body in
hand, answers with a Content-Length, chunked or read to the close, no redirects followed, no content encodings
asked for (none is sent, so a server answers plainly). Idle connections are kept and reused; one that the server
closed while idle is found before use. A GET whose reused connection broke before any answer came is sent once more
on a new one (the server closed it meanwhile); a POST is not, as it may have been done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

MAX_HEAD_BYTES = 256 * 1024  # status line and headers of one answer
READ_BYTES = 64 * 1024  # one piece of a body read as it comes
MAX_IDLE = 8  # idle connections kept per client; more are closed
_NO_BODY_STATUSES = frozenset({204, 304})


class HttpError(Exception):
    """The exchange failed: the connection broke, or the answer is not HTTP/1.x."""


class HttpConnectError(HttpError):
    """No connection could be made to the server."""


class HttpTimeoutError(HttpError):
    """The server did not answer (or connect, or send the next piece of a body) in time."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    @property
    def usable(self) -> bool:
        """False once the server closed it (seen as end of stream) or it broke."""
        return not self.reader.at_eof() and not self.writer.is_closing() and self.reader.exception() is None

    def close(self) -> None:
        self.writer.close()


class Response:
    """An answer: status and headers (names in lower case); `content` once read (`request` reads it; a
    streamed answer reads it with `aread()` or gives it piece by piece with `aiter_bytes()`)."""

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = b""
        self.complete = False  # the whole body was read (the connection is free again)
        self._body: AsyncGenerator[bytes, None] = _nothing()
        self._connection: _Connection | None = None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    async def aread(self) -> bytes:
        self.content = b"".join([chunk async for chunk in self._body])
        return self.content

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._body

    async def discard(self) -> None:
        """Give up the body unread: the connection it would come on is closed."""
        await self._body.aclose()  # one read in part: its connection is closed (see Http11Client._body)
        if self._connection is not None:
            self._connection.close()


class Http11Client:
    """Requests to one origin; safe to share between tasks (each request has a connection of its own)."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout_s: float) -> None:
        split = urllib.parse.urlsplit(base_url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"expected an http(s)://host[:port][/prefix] URL, got {base_url!r}")
        self._tls = split.scheme == "https"
        self._host = split.hostname
        self._port = split.port or (443 if self._tls else 80)
        self._prefix = split.path.rstrip("/")
        self._head = f"Host: {split.netloc}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes = b"",
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """Send and read the whole answer, within `timeout_s` (default: the client's) in all."""
        seconds = self.timeout_s if timeout_s is None else timeout_s
        request = self._request_bytes(method, path, params, content, content_type)
        try:
            async with asyncio.timeout(seconds):
                response = await self._exchange(request, method)
                await response.aread()
        except TimeoutError as exc:
            raise HttpTimeoutError(f"no answer within {seconds:g} s") from exc
        return response

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[Response]:
        """Send and yield the answer with its body unread: each piece must come within the client's timeout. A
        body left unread (or broken off) closes the connection."""
        request = self._request_bytes(method, path, params, b"", None)
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._exchange(request, method, piece_timeout_s=self.timeout_s)
        except TimeoutError as exc:
            raise HttpTimeoutError(f"no answer within {self.timeout_s:g} s") from exc
        try:
            yield response
        finally:
            if not response.complete:  # its connection is still ours: a body left unread
                await response.discard()

    def _request_bytes(
        self, method: str, path: str, params: Mapping[str, str] | None, content: bytes, content_type: str | None
    ) -> bytes:
        target = self._prefix + "/" + path.lstrip("/")
        if params:
            target += "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        head = f"{method} {target} HTTP/1.1\r\n{self._head}"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        if content or method not in ("GET", "HEAD"):
            head += f"Content-Length: {len(content)}\r\n"
        return (head + "\r\n").encode("latin-1") + content

    async def _exchange(self, request: bytes, method: str, piece_timeout_s: float | None = None) -> Response:
        """Send on an idle connection or a new one; read the answer's head. A reused connection that broke before
        any answer came was closed by the server meanwhile: a GET is sent once more on a new one."""
        if self._closed:  # as httpx: a closed client's users (runs polling a removed instance) end now
            raise HttpError("the client is closed")
        connection = self._take_idle()
        while True:
            try:
                connection = connection or await self._connect()
                connection.writer.write(request)
                await connection.writer.drain()
                status, headers = await _read_head(connection.reader)
                break
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                assert connection is not None  # _connect raises HttpConnectError, not these
                connection.close()
                partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
                if connection.reused and not partial and method in ("GET", "HEAD"):
                    connection = None
                    continue
                raise HttpError(f"the connection broke: {_cause(exc)}") from exc
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
        response = Response(status, headers)
        response._body = self._body(connection, response, method, piece_timeout_s)
        response._connection = connection
        return response

    async def _connect(self) -> _Connection:
        if self._tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl if self._tls else None, limit=MAX_HEAD_BYTES
            )
        except (OSError, ssl.SSLError) as exc:
            raise HttpConnectError(_cause(exc)) from exc
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable:
                connection.reused = True
                return connection
            connection.close()
        return None

    def _give_back(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE or not connection.usable:
            connection.close()
        else:
            self._idle.append(connection)

    async def _body(
        self, connection: _Connection, response: Response, method: str, piece_timeout_s: float | None
    ) -> AsyncGenerator[bytes, None]:
        """The answer's body piece by piece; the connection goes back to the idle ones once all of it is read."""
        reader, status, headers = connection.reader, response.status_code, response.headers
        try:
            if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
                pieces: AsyncIterator[bytes] = _nothing()
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                pieces = _chunked(reader, piece_timeout_s)
            elif (length := headers.get("content-length")) is not None:
                if not length.strip().isdigit():
                    raise HttpError(f"the answer's Content-Length {length!r} is not a number")
                pieces = _sized(reader, int(length), piece_timeout_s)
            else:  # read to the close: the connection ends with the body
                pieces = _to_close(reader, piece_timeout_s)
                headers = {**headers, "connection": "close"}
            async for piece in pieces:
                yield piece
            response.complete = True
        except asyncio.IncompleteReadError as exc:
            raise HttpError("the connection closed before the whole body came") from exc
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            raise HttpError(f"the body broke off: {_cause(exc)}") from exc
        except TimeoutError as exc:
            raise HttpTimeoutError(f"no piece of the body within {piece_timeout_s:g} s") from exc
        finally:
            if response.complete and headers.get("connection", "").lower() != "close":
                self._give_back(connection)
            else:
                connection.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and headers of the next final answer (an interim 1xx answer is skipped)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpError(f"the answer's headers are over {MAX_HEAD_BYTES} bytes") from exc
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HttpError(f"the answer is not HTTP/1.x: {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                name = name.strip().lower()
                headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        if version == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
            headers["connection"] = "close"
        return status, headers


def _deadline(seconds: float | None) -> contextlib.AbstractAsyncContextManager[object]:
    return asyncio.timeout(seconds) if seconds is not None else contextlib.nullcontext()


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield  # an async generator that yields nothing


async def _sized(reader: asyncio.StreamReader, length: int, timeout_s: float | None) -> AsyncIterator[bytes]:
    left = length
    while left > 0:
        async with _deadline(timeout_s):
            piece = await reader.read(min(left, READ_BYTES))
        if not piece:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(piece)
        yield piece


async def _chunked(reader: asyncio.StreamReader, timeout_s: float | None) -> AsyncIterator[bytes]:
    while True:
        async with _deadline(timeout_s):
            size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)  # ValueError: not a chunk size
        if size == 0:
            async with _deadline(timeout_s):
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the empty line
                    pass
            return
        async for piece in _sized(reader, size, timeout_s):
            yield piece
        async with _deadline(timeout_s):
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("a chunk does not end with CRLF")


async def _to_close(reader: asyncio.StreamReader, timeout_s: float | None) -> AsyncIterator[bytes]:
    while True:
        async with _deadline(timeout_s):
            piece = await reader.read(READ_BYTES)
        if not piece:
            return
        yield piece


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
