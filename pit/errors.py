"""Errors PIT raises on purpose. The CLI (`pit.main`) prints each as one line
`pit: error: ...` (or `pit: stopped: ...`) and exits with its `exit_code`."""
from __future__ import annotations

EXIT_ERROR = 2
# EX_TEMPFAIL (sysexits.h): "try again later". A run stopped by SIGTERM / SIGINT after
# saving a checkpoint; the same command resumes it.
EXIT_PREEMPTED = 75


class PitError(Exception):
  """Base of PIT's own errors; the message is complete (names file, step or field)."""
  exit_code = EXIT_ERROR


class NonFiniteError(PitError):
  """Training produced a non-finite loss, gradient norm or parameter."""


class WorkdirLockedError(PitError):
  """Another run holds the workdir."""


class Preempted(BaseException):
  """SIGTERM / SIGINT arrived. A BaseException (like KeyboardInterrupt): raised by the
  signal handler wherever the program is, it must not be caught by the `except Exception`
  of code that turns failures into errors (a restore would report a good checkpoint as
  corrupt). The CLI catches it and exits with `exit_code`."""
  exit_code = EXIT_PREEMPTED
