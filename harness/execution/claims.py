"""Claims: a job is claimed before it runs, so two sweeps on one store run it once.

A claim is `<results>/_claims/<job_hash>.claim`, created with O_EXCL (exactly one creator
wins, on a local or NFSv3+ filesystem) and holding the claimer's pid, host and start time.
Its holder touches it while the job runs (`heartbeat`). Another sweep may take a claim over
only when its holder is certainly gone: a dead pid on this host, no heartbeat for
HEARTBEAT_STALE_SECONDS (a host that died), or older than the job's timeout (the holder
would have killed the job by then).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness.core.atomic import pid_alive

HEARTBEAT_SECONDS = 30.0
HEARTBEAT_STALE_SECONDS = 10 * 60.0
# A job may overrun its timeout by the time it takes to kill its process tree and write its row.
TIMEOUT_GRACE_SECONDS = 120.0


def claim_path(results_dir: str | os.PathLike, job_hash: str) -> Path:
    return Path(results_dir) / "_claims" / f"{job_hash}.claim"


@dataclass
class Claim:
    path: Path
    token: str

    def heartbeat(self) -> None:
        try:
            os.utime(self.path)
        except OSError:
            pass  # taken over (we were thought dead) or removed by hand: the job goes on

    def release(self) -> None:
        """Remove the claim if it is still ours (a claim taken over belongs to its new holder)."""
        if _holder(self.path).get("token") == self.token:
            self.path.unlink(missing_ok=True)


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def holder_text(results_dir: str | os.PathLike, job_hash: str) -> str:
    h = _holder(claim_path(results_dir, job_hash))
    return f"pid {h.get('pid')} on {h.get('host')}" if h else "another process"


def is_stale(path: Path, timeout: float | None, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    try:
        beat = path.stat().st_mtime
    except FileNotFoundError:
        return True
    holder = _holder(path)
    if not holder:  # being written this instant, or damaged: stale only once old
        return now - beat > HEARTBEAT_STALE_SECONDS
    if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0))):
        return True
    if now - beat > HEARTBEAT_STALE_SECONDS:
        return True
    return timeout is not None and now - float(holder.get("time", now)) > timeout + TIMEOUT_GRACE_SECONDS


def try_claim(results_dir: str | os.PathLike, job_hash: str, timeout: float | None = None) -> Claim | None:
    """The claim on a job, or None when a live process holds it."""
    path = claim_path(results_dir, job_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if not is_stale(path, timeout) or not _take_over(path):
                return None
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "token": token}, f)
        return Claim(path, token)
    return None


def _take_over(path: Path) -> bool:
    """Remove a stale claim so that O_EXCL can decide who gets it next. The claim is renamed
    aside first (one renamer wins) and checked to be the very file judged stale; a fresh
    claim grabbed by mistake is put back."""
    try:
        judged = path.stat().st_ino
    except FileNotFoundError:
        return True
    aside = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else removed it: race for the O_EXCL create
    if aside.stat().st_ino != judged:
        try:
            os.link(aside, path)  # a fresh claim: give it back (fails if yet another exists)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True
