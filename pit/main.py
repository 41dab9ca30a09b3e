"""PIT entry point: `python -m pit.main --config=configs/<file>.py[:preset] --workdir=DIR`.

Every config field can be overridden: `--config.model.num_layers=4`.
`config.pipeline` selects what runs.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")


class UsageError(Exception):
  pass


def run(config, workdir: str):
  from pit.pipelines import PIPELINES, common  # jax imported only after flags parsed
  if config.pipeline not in PIPELINES:
    raise UsageError(f"unknown pipeline {config.pipeline!r}; choose one of {sorted(PIPELINES)}")
  common.save_config(config, workdir)
  return PIPELINES[config.pipeline](config, workdir)


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None:
    raise UsageError("--config is required (e.g. --config=configs/sft.py:tiny)")
  if not _WORKDIR.value:
    raise UsageError("--workdir is required")
  logging.set_verbosity(logging.INFO)
  _quiet_libraries()
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


def _fail(msg: str):
  sys.stderr.write(f"pit: error: {msg}\n")
  sys.exit(2)


def _one_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):  # keep the head and the cause
    lines = [lines[0].split(" Traceback")[0], lines[-1]]
  text = " ".join(lines)
  text = text or type(e).__name__
  return text if len(text) <= 400 else text[:397] + "..."


def _parse_flags(argv):
  overrides = [a.split("=", 1)[0].lstrip("-") for a in argv[1:] if a.startswith("--config.")]
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_one_line(e))
  except (AttributeError, KeyError) as e:  # override of a field the config lacks
    _fail(f"unknown config field {e} in override(s) {', '.join(overrides)}")
  except Exception as e:  # config file import / preset errors raised while parsing
    _fail(f"bad config: {type(e).__name__}: {_one_line(e)}")


def entry():
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit:
    raise
  except (UsageError, ValueError, OSError, KeyError) as e:
    if os.environ.get("PIT_TRACEBACK"):
      raise
    _fail(_one_line(e))


if __name__ == "__main__":
  entry()
