"""Content digests of model files, cached by path, size and change times.

A local model is identified by what its files hold, not by where they are, so the same
weights in two folders are one model and weights re-saved into one folder are another.
Hashing a 500 MB checkpoint takes a second or more, and every job (and every job of a
sweep's plan) asks again; a file whose path, size, modification and change times and inode
are those of the last hash is not read again.

The cache lives in the user's cache folder (HARNESS_CACHE_DIR, else $XDG_CACHE_HOME/harness,
else ~/.cache/harness), not in the result store: its keys are paths on this machine while a
store is copied between machines, and one cache serves every store. A cache that cannot be
read or written costs time only: the digest is computed anyway, with one warning per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from harness.core.atomic import atomic_write

CACHE_ENV = "HARNESS_CACHE_DIR"
CACHE_FILE = "file-digests.json"
# A file changed this recently could be changed again within the same timestamp tick (one or
# two seconds on some file systems) without its stamp changing: such a file is hashed but not
# cached, as git does for its index.
RACY_SECONDS = 2.0

log = logging.getLogger(__name__)
_MEMO: dict[str, tuple[list[int], str]] = {}  # this process's digests: path -> (stamp, sha256)
_WARNED = False


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "harness"


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    # The change time and inode catch a rewrite that keeps size and mtime (cp -p, rsync -t).
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's content, from the cache when the file is unchanged."""
    path = Path(path).resolve()  # a symlink (the hub cache's snapshots) is its target's content
    st = path.stat()
    key, stamp = str(path), _stamp(st)
    memo = _MEMO.get(key)
    if memo is not None and memo[0] == stamp:
        return memo[1]
    entry = _read_cache().get(key)
    if entry is not None and entry.get("stamp") == stamp:
        digest = entry["sha256"]
    else:
        digest = _hash_file(path)
        if time.time() - max(st.st_mtime, st.st_ctime) >= RACY_SECONDS:
            _store(key, stamp, digest)
        else:
            return digest  # not remembered either: the next call must look again
    _MEMO[key] = (stamp, digest)
    return digest


def _read_cache() -> dict[str, dict]:
    path = cache_dir() / CACHE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _warn(f"digest cache {path} is unreadable ({exc}); hashing model files anew")
        return {}
    return data if isinstance(data, dict) else {}


def _store(key: str, stamp: list[int], digest: str) -> None:
    """Add one entry: read, merge, write atomically (a concurrent writer's entry may be lost,
    which costs one more hash, never a wrong digest); entries of deleted files are dropped."""
    path = cache_dir() / CACHE_FILE
    entries = {k: v for k, v in _read_cache().items() if os.path.exists(k)}
    entries[key] = {"stamp": stamp, "sha256": digest}
    try:
        with atomic_write(path, "w") as f:
            json.dump(entries, f, separators=(",", ":"))
    except OSError as exc:
        _warn(f"digest cache {path} is not writable ({exc}); model files will be hashed on every run")


def _warn(message: str) -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        log.warning(message)
