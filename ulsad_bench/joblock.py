"""One process at a time per job: a lock file in the job's folder.

Two sweeps started at once over the same output folder would otherwise both run every job.
:class:`JobLock` holds ``<run_dir>/.lock`` with ``fcntl.flock`` while the job runs: the lock
is taken atomically by the kernel and released by it when the holder exits, however it exits
(a killed process leaves its file behind, but not its lock). A later process that finds such a
file takes it over and says so. The file names the holder (host, pid, start time) so that a
skipped job can say who is running it. ``flock`` works on local disks and on NFS v4 (Linux
emulates it with POSIX locks there).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

LOCK_NAME = ".lock"


def _holder_of(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


class JobLock:
    """``with JobLock(run_dir) as lock:`` then ``lock.acquired`` (False: someone else runs it).

    Attributes:
        acquired: whether this process holds the lock.
        holder: who holds it (when not acquired), or who held the file this process took over.
        took_over: the lock file was left by a process that no longer holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.acquired = False
        self.took_over = False
        self.holder: dict[str, Any] = {}
        self._fd: int | None = None

    def acquire(self, tries: int = 3) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                tries -= 1
                if tries > 0:  # a holder that is just releasing: look again
                    time.sleep(0.05)
                    continue
                self.holder = _holder_of(self.path)
                return False
            # The file may have been removed (and re-created) by the previous holder between our
            # open and our flock: then we hold a lock on a file nobody else sees. Try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _holder_of(self.path)
        self.took_over = bool(previous)
        self.holder = previous
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        self.acquired = True
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
            self.acquired = False

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
