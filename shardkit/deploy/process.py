"""Whether a process named earlier - by a lock, on this host - has ended.

A pid alone is not enough: once a process ends its pid can be given to another. So a process is
named by where its pid means something (:func:`machine`: the host name, and on Linux the pid
namespace, so two containers sharing a host name are told apart) and by its identity there
(:func:`identity`: the boot and the process's start time, read from ``/proc``). A process has
ended if its pid is gone or a zombie, or the pid now belongs to a process that started at
another time or in another boot. Where ``/proc`` is missing, the identity is empty and only the
pid counts: a reused pid then reads as running, which errs on the safe side.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

__all__ = ["ended", "identity", "machine"]

_PROC = Path("/proc")


def machine() -> str:
    """Where pids of this process's kind mean the same processes."""
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = " " + os.readlink(_PROC / "self" / "ns" / "pid")
    return socket.gethostname() + namespace


def identity(pid: int | None = None) -> str:
    """``boot-id/start-ticks`` of process ``pid`` (default: this one); "" where unknown."""
    stat = _stat(os.getpid() if pid is None else pid)
    if stat is None:
        return ""
    try:
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""
    return f"{boot}/{stat[19]}"  # field 22 of /proc/PID/stat: start time in clock ticks


def ended(pid: int, recorded: str) -> bool:
    """Whether the process that was ``pid`` with identity ``recorded``, on this machine, ended."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's process: it exists
    stat = _stat(pid)
    if stat is None:
        return False
    if stat[0] == "Z":
        return True  # finished, not yet reaped by its parent
    return bool(recorded) and identity(pid) != recorded


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()
