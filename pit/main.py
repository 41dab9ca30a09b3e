"""PIT: train language models to improve themselves (PIT, Self-Rewarding LMs, SER).

Usage:
  pit --config=CONFIG[:preset] --workdir=DIR [--config.FIELD=VALUE ...]
  (or python -m pit.main ...)

CONFIG is a config file (`get_config(preset)`), or the name of a bundled one, usable
from any folder: `configs/hh_rlhf.py`, `hh_rlhf.py` or `hh_rlhf`. Every config field
can be overridden, e.g. `--config.model.num_layers=4 --config.train.steps=100`;
`config.pipeline` selects what runs. The same command resumes an interrupted run.

Exit status: 0 done; 2 error (one line `pit: error: ...` naming file, field or step);
75 stopped by SIGTERM/SIGINT after saving a checkpoint (run the same command to
resume). `--helpfull` lists every absl flag.
"""
from __future__ import annotations

import errno
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")


class UsageError(Exception):
  """A bad command line or config choice (missing --config / --workdir, stray
  arguments, unknown pipeline): reported as one `pit: error:` line, exit status 2."""
  pass


def run(config, workdir: str):
  """Runs `config.pipeline` in `workdir`, holding the workdir's lock (one run per workdir)."""
  from pit import pretrained, sharding, workdir_lock
  from pit.pipelines import PIPELINES, common  # jax imported only after flags parsed
  if config.pipeline not in PIPELINES:
    raise UsageError(f"unknown pipeline {config.pipeline!r}; choose one of {sorted(PIPELINES)}")
  # before anything asks jax for the process index (the lock: only process 0 takes it)
  sharding.maybe_initialize_distributed(config.get("distributed", None))
  with workdir_lock.hold(workdir):
    pretrained.resolve(config)   # model.init_from: the saved config carries the real shape
    common.save_config(config, workdir)
    return PIPELINES[config.pipeline](config, workdir)


def main(argv):
  """absl main: checks the flags, sets up logging and the SIGTERM / SIGINT handlers
  (`pit.preemption`) and runs the config's pipeline in the workdir. Raises UsageError for
  positional arguments or a missing --config / --workdir."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None:
    raise UsageError("--config is required (e.g. --config=configs/sft.py:tiny)")
  if not _WORKDIR.value:
    raise UsageError("--workdir is required")
  logging.set_verbosity(logging.INFO)
  _quiet_libraries()
  from pit import preemption
  preemption.handle_signals()
  run(_CONFIG.value, _WORKDIR.value)


class _LibraryInfoFilter:
  """Keeps INFO lines of our own code; libraries (orbax, jax) only WARNING+."""

  def filter(self, record) -> bool:
    import logging as pylogging
    return record.levelno >= pylogging.WARNING or "/pit/" in record.pathname


def _quiet_libraries():
  import logging as pylogging
  for handler in pylogging.getLogger("absl").handlers + pylogging.getLogger().handlers:
    handler.addFilter(_LibraryInfoFilter())


def _fail(msg: str, code: int = 2, kind: str = "error"):
  sys.stderr.write(f"pit: {kind}: {msg}\n")
  sys.exit(code)


MAX_ERROR_CHARS = 1000


# OS reasons a long library message may bury in its middle (checked by name).
_OS_REASONS = tuple(os.strerror(n) for n in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                             errno.EIO, errno.EMFILE, errno.ENOMEM))


def _root_causes(e: BaseException) -> list[str]:
  """The OS-level reasons (e.g. "No space left on device") anywhere in e's chain of
  causes or inside its messages: libraries wrap them in long messages of their own."""
  out, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      out.append(e.strerror)
    out += [r for r in _OS_REASONS if r in str(e)]
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  return list(dict.fromkeys(out))


def _one_line(e: BaseException) -> str:
  """One line for the terminal: the message's head (what failed, naming file/field) and
  its tail (the cause) are both kept when it is long; an OS reason found in the chain of
  causes is appended when the message lacks it."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):  # keep the head and the cause
    lines = [lines[0].split(" Traceback")[0], lines[-1]]
  text = " ".join(lines) or type(e).__name__
  reasons = _root_causes(e)
  if len(text) > MAX_ERROR_CHARS:
    half = (MAX_ERROR_CHARS - 5) // 2
    text = f"{text[:half]} ... {text[-half:]}"
  for reason in reasons:   # never cut the reason away
    if reason not in text:
      text = f"{text} ({reason})"
  return text


def _resolve_config_arg(argv: list[str]) -> list[str]:
  """`--config=PATH[:preset]`: a PATH that does not exist here may name a bundled config
  (`configs/sft.py`, `sft.py` or `sft`), so the documented commands work from any folder."""
  from pit import paths
  out = []
  for i, a in enumerate(argv):
    if a.startswith("--config=") or (i and argv[i - 1] == "--config"):
      flag, value = ("--config=", a[len("--config="):]) if a.startswith("--config=") else ("", a)
      file_part, sep, preset = value.partition(":")
      a = flag + paths.config_file(file_part) + sep + preset
    out.append(a)
  return out


def _parse_flags(argv):
  overrides = [a.split("=", 1)[0].lstrip("-") for a in argv[1:] if a.startswith("--config.")]
  argv = _resolve_config_arg(list(argv))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_one_line(e))
  except (AttributeError, KeyError) as e:  # override of a field the config lacks
    _fail(f"unknown config field {e} in override(s) {', '.join(overrides)}")
  except Exception as e:  # config file import / preset errors raised while parsing
    _fail(f"bad config: {type(e).__name__}: {_one_line(e)}")


# The registry's names (`pit.pipelines.PIPELINES`), listed here so that --help needs no jax import;
# tests/test_cli.py checks the two agree.
PIPELINE_NAMES = ("dpo", "gap_reward", "generate", "improve", "pit", "ppo", "reward",
                  "self_rewarding", "ser", "sft")


def _help() -> str:
  from pit import paths
  base = paths.configs_dir()
  names = sorted(f[:-3] for f in os.listdir(base) if f.endswith(".py") and f != "__init__.py") \
      if base else []
  return (__doc__ + f"\nBundled configs ({base}):\n  " + ", ".join(names) +
          "\nPipelines (config.pipeline): " + ", ".join(PIPELINE_NAMES) + "\n")


def entry():
  """The `pit` console script: `--help` lists the bundled configs and pipelines; errors
  end the process with one line on stderr and the error's exit code (2 unless it carries
  one; 75 when preempted). Unexpected exceptions (and any with PIT_TRACEBACK set) keep
  their traceback."""
  if any(a in ("-h", "--help", "-help") for a in sys.argv[1:]):
    sys.stdout.write(_help())
    sys.exit(0)
  from pit.errors import PitError, Preempted
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit:
    raise
  except Preempted as e:
    _fail(_one_line(e), e.exit_code, kind="stopped")
  except Exception as e:  # noqa: BLE001
    expected = isinstance(e, (PitError, UsageError, ValueError, OSError, KeyError))
    if os.environ.get("PIT_TRACEBACK") or not (expected or _root_causes(e)):
      raise   # a bug: the traceback is the useful output
    _fail(_one_line(e), getattr(e, "exit_code", 2))


if __name__ == "__main__":
  entry()
