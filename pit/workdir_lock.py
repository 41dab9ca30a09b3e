"""One run per workdir: an advisory lock file `WORKDIR/.pit.lock`.

`hold(workdir)` takes an exclusive `fcntl.flock` on the lock file and writes the
holder into it (pid, host, start time, command). The kernel drops the lock when
the holder exits, however it exits (SIGKILL too), so a lock left by a dead run on
a local filesystem is simply taken over. A second run on the same workdir fails
at once with `WorkdirLockedError` naming the holder. Where the filesystem cannot
lock (some network filesystems), the file itself is the lock (created with
O_EXCL); the message then says to delete it once the holder is known to be gone.

Re-entrant within a process: the pit pipeline holds WORKDIR and each stage's
trainer holds WORKDIR/<stage>; a nested `hold` of a path this process already
holds is a no-op. Only process 0 of a multi-host run locks (the hosts of one run
share the workdir).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time

from pit.errors import WorkdirLockedError

LOCK_FILE = ".pit.lock"
_held: dict[str, tuple[int, int]] = {}   # abs workdir -> (fd, depth)


def _holder_text(path: str) -> str:
  try:
    with open(path) as f:
      info = json.load(f)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} since {started}"
  except (OSError, ValueError):
    return "an unknown process"


def _describe() -> str:
  return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                     "argv": sys.argv})


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir` for the duration of the block (see module docstring)."""
  import jax
  key = os.path.realpath(workdir)
  if jax.process_index() != 0 or key in _held:
    if key in _held:
      fd, depth = _held[key]
      _held[key] = (fd, depth + 1)
    try:
      yield
    finally:
      if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth - 1)
    return
  os.makedirs(key, exist_ok=True)
  path = os.path.join(key, LOCK_FILE)
  fd = _acquire(path)
  _held[key] = (fd, 1)
  try:
    yield
  finally:
    _held.pop(key, None)
    _release(path, fd)


def _acquire(path: str) -> int:
  import fcntl
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise WorkdirLockedError(
          f"workdir {os.path.dirname(path)} is in use by {_holder_text(path)} (lock {path}); "
          "wait for that run to finish or stop it. A lock whose holder is gone is taken over "
          "automatically on this machine") from None
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
      return _acquire_exclusive_file(path)
    raise
  os.ftruncate(fd, 0)
  os.write(fd, _describe().encode())
  os.fsync(fd)
  return fd


def _acquire_exclusive_file(path: str) -> int:
  """Fallback where flock is not supported: the file's existence is the lock."""
  excl = path + ".excl"
  try:
    fd = os.open(excl, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    raise WorkdirLockedError(
        f"workdir {os.path.dirname(path)} is in use by {_holder_text(excl)} (lock {excl}); "
        f"if that run is gone (e.g. it was killed on another machine), delete {excl}") from None
  os.write(fd, _describe().encode())
  return -fd - 1   # negative: an exclusive-file lock, removed on release


def _release(path: str, fd: int):
  if fd < 0:
    fd = -fd - 1
    os.close(fd)
    with contextlib.suppress(OSError):
      os.unlink(path + ".excl")
    return
  import fcntl
  with contextlib.suppress(OSError):
    os.ftruncate(fd, 0)
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)
