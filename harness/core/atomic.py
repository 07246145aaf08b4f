"""Atomic file writes: write beside the target under a dot-name, then rename into place.

A crash or Ctrl-C leaves either the old file or the new one, never half of one, and
the dot-name keeps readers (which skip dot-files) from picking up the temporary. The
directory is fsynced after the rename, so a power loss cannot undo a rename that was
reported done.

A writer killed with SIGKILL (or by a power loss) cannot remove its temporary. The name
says who wrote it (`.<target>.<pid>@<host>.<random>.tmp`), so `remove_stale_temporaries`
can delete those whose writer is gone without ever touching a live writer's file.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

# A temporary is only ever removed once it is this old: a live writer finishes a result
# row in milliseconds, a report page in seconds.
STALE_AFTER_SECONDS = 10 * 60
# A temporary written on another host (a shared filesystem), or one whose name does not say
# who wrote it, cannot be checked for a live writer; it is removed only when it is this old.
UNKNOWN_WRITER_STALE_AFTER_SECONDS = 24 * 3600

_OWNER = re.compile(r"\.(\d+)@([A-Za-z0-9-]*)\.[^.]*\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(folder: Path) -> None:
    """Make a rename (or a new file) in `folder` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform or filesystem without directory handles: nothing more can be done
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. some network mounts) refuse fsync on a directory
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{_host()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """Whether `path` is an atomic writer's temporary whose writer is certainly gone."""
    name = path.name
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    if age < STALE_AFTER_SECONDS:
        return False
    owner = _OWNER.search(name)
    if owner and owner.group(2) == _host():
        # A reused pid keeps the file (never delete what a live process may hold).
        return not pid_alive(int(owner.group(1)))
    return age >= UNKNOWN_WRITER_STALE_AFTER_SECONDS


def remove_stale_temporaries(paths: Iterable[Path], now: float | None = None) -> list[Path]:
    """Delete the temporaries among `paths` whose writer was killed; returns those removed."""
    removed = []
    for path in paths:
        if is_stale_temporary(path, now):
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # another reader removed it first
            except OSError:
                continue  # a read-only store: leave it, readers skip dot-files anyway
            removed.append(path)
    return removed


def remove_temporaries_of(folder: str | os.PathLike, pids: set[int]) -> list[Path]:
    """Delete the temporaries under `folder` written on this host by the processes `pids`, once
    each is gone: what a writer killed mid-write (a timed-out or interrupted job) left behind."""
    gone = {pid for pid in pids if not pid_alive(pid)}
    removed = []
    for path in Path(folder).rglob(".*.tmp") if gone and Path(folder).is_dir() else ():
        owner = _OWNER.search(path.name)
        if owner and owner.group(2) == _host() and int(owner.group(1)) in gone:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
