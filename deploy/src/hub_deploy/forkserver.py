"""`python -m hub_deploy.forkserver <fd>`: the launcher's fork server. It imports every service's modules once,
then starts each service process (and each restart after a crash) by forking itself, so a restarted service skips
its imports (1.5-6 s of CPU on a loaded machine, while it is down) and starts from `runpy` as `python -m <module>`
would.

Protocol over the socket `<fd>` the launcher passes: one line `<service name> <module>` per start, answered with
one line, the new process's pid. The service is forked twice (an intermediate that exits at once), so it is not
this process's child but the launcher's: the launcher is a child subreaper (`PR_SET_CHILD_SUBREAPER`), watches it
through a pidfd, signals it and reaps its exit code as it would a process it had started itself. Nothing here runs
a thread or an event loop, so forking is safe; the child builds its own loop. EOF on the socket (the launcher is
gone) ends this process, not the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import os
import runpy
import signal
import socket
import sys
import traceback
from typing import NoReturn

from hub_deploy.services import SERVICES

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
# What every service process imports before it serves: imported here once, shared by every fork.
PRELOAD = ("uvloop", "contracts.runtime.service", "hub_deploy.single", *(f"{module}.app" for _, module in SERVICES))
# What the services import only once they build or start (`python -X importtime -m hub_deploy.single`, minus the
# above): ~0.5 s of a loaded machine's CPU. Skipped if missing: a newer library may have moved them.
WARM_UP = (
    "httpcore",
    "litestar._kwargs",
    "litestar.plugins.pydantic",
    "litestar.middleware.allowed_hosts",
    "litestar.middleware.response_cache",
    "litestar.middleware._internal.exceptions.middleware",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "anyio._core._sockets",
    "encodings.idna",
)


def prctl(option: int, value: int | bytes) -> bool:
    """Linux's prctl(2); False where it is not available or refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def serve(control: socket.socket) -> None:
    """Start a service for each line the launcher sends, until it closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the launcher decides
    for module in PRELOAD:
        importlib.import_module(module)
    for module in WARM_UP:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    gc.collect()
    gc.freeze()  # the imported objects stay in pages the children share, untouched by their collections
    pending = b""
    while chunk := control.recv(4096):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            name, module = line.decode().split()
            control.sendall(f"{fork_service(control, name, module)}\n".encode())


def fork_service(control: socket.socket, name: str, module: str) -> int:
    """Fork `python -m <module>` as a grandchild that the launcher (the subreaper) adopts; its pid."""
    read_end, write_end = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.close(read_end)
            service = os.fork()
            if service == 0:
                os.close(write_end)
                become(control, name, module)
            os.write(write_end, str(service).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        pid = pipe.read()
    os.waitpid(intermediate, 0)
    return int(pid)


def become(control: socket.socket, name: str, module: str) -> NoReturn:
    """In the forked child: run `module` as `python -m <module>` does, then end the process (never return into
    the fork server's loop)."""
    os.close(control.detach())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prctl(PR_SET_NAME, f"hub-{name}".encode()[:15])  # what ps and top show
    sys.argv = [module]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkedProcess:
    """A service process the fork server started and the launcher adopted: watched through a pidfd, reaped here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else: the code is lost, not the exit
            self.returncode = -1
        self._exited.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The launcher's side: starts the fork server (again, if it died) and asks it for service processes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_this_launcher(cls, env: dict[str, str]) -> ForkServer | None:
        """A fork server, where this is Linux with pidfds and this process could become the subreaper of what it
        starts; None elsewhere (each service is then started with `python -m` and imports its modules itself)."""
        try:
            os.close(os.pidfd_open(os.getpid()))  # Linux 5.3+, and not refused by a seccomp profile
        except (AttributeError, OSError):
            return None
        return cls(env) if prctl(PR_SET_CHILD_SUBREAPER, 1) else None

    async def _start(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, str(theirs.fileno()), env=self.env, pass_fds=(theirs.fileno(),)
            )
        self._stream = await asyncio.open_unix_connection(sock=ours)
        return self._stream

    async def running(self) -> asyncio.subprocess.Process:
        """The fork server's process, started first if it is not running."""
        async with self._lock:
            if self._stream is None or self.process is None or self.process.returncode is not None:
                await self.close()
                await self._start()
            assert self.process is not None
            return self.process

    async def spawn(self, name: str, module: str) -> ForkedProcess:
        """A new process running `python -m <module>`, forked from the preloaded server (started again first if
        it is not running)."""
        async with self._lock:
            for _attempt in range(2):
                if self._stream is None or self.process is None or self.process.returncode is not None:
                    await self.close()
                    await self._start()
                assert self._stream is not None
                reader, writer = self._stream
                with contextlib.suppress(ConnectionError):
                    writer.write(f"{name} {module}\n".encode())
                    await writer.drain()
                    line = await reader.readline()
                    if line:
                        return ForkedProcess(int(line))
                self._stream = None  # the fork server died: once more with a new one
            raise OSError(f"the fork server died twice while starting {module}")

    async def close(self) -> None:
        """End the fork server (the services it started run on)."""
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None
        if self.process is not None and self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def main() -> None:
    serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()
