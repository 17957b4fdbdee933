"""A dispatcher replica's stable identity: the same after a crash and restart, never shared by two live replicas.

The identity is this host, the data folder and the lowest replica number whose lock file this process can lock
(`<data dir>/dispatch-replicas/<n>.lock`). The operating system drops a dead process's lock, even after kill -9,
so a replica restarted by the launcher gets its predecessor's number back at once and may reclaim the slot
leases that predecessor left behind; a second replica running beside it gets another number.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MAX_REPLICAS_PER_FOLDER = 256


@dataclass
class ReplicaIdentity:
    name: str
    _lock: IO[bytes]  # held open for the life of the process: closing it would free the number

    def release(self) -> None:
        self._lock.close()


def take_identity(data_dir: Path) -> ReplicaIdentity:
    """The lowest free replica number of this data folder, locked for as long as this process lives."""
    folder = data_dir / "dispatch-replicas"
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(MAX_REPLICAS_PER_FOLDER):
        lock = (folder / f"{number}.lock").open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n".encode())  # for a person looking: which process holds this number
        lock.flush()
        return ReplicaIdentity(name=f"{socket.gethostname()}:{data_dir.resolve()}#{number}", _lock=lock)
    raise RuntimeError(
        f"more than {MAX_REPLICAS_PER_FOLDER} dispatcher replicas share {data_dir}: give some another HUB_DATA_DIR"
    )
