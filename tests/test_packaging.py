"""PIT as a user installs it: a non-editable install of the repository, used from a folder
outside it, with only the declared dependencies importable (issue 12 #1, #2)."""
import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO


def _install_requires() -> list[str]:
  """install_requires of setup.py, read from the file (what a fresh install gets)."""
  tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "install_requires":
      return [ast.literal_eval(e) for e in node.value.elts]
  raise AssertionError("setup.py has no install_requires")


def _name(req: str) -> str:
  return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _closure(reqs) -> set[str]:
  """The distributions a fresh `pip install .` brings: the declared ones and, recursively,
  their own requirements (extras excluded; environment markers evaluated)."""
  from packaging.requirements import Requirement
  seen, todo = set(), [_name(r) for r in reqs]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    try:
      deps = md.requires(name) or []
    except md.PackageNotFoundError:
      continue
    for d in deps:
      r = Requirement(d)
      if r.marker is None or r.marker.evaluate({"extra": ""}):
        todo.append(_name(r.name))
  return seen


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """`pip install .` (not editable) into a target folder: what a wheel puts on a machine."""
  target = tmp_path_factory.mktemp("site")
  r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                      "--no-compile", "-q", "--target", str(target), REPO],
                     capture_output=True, text=True, timeout=600, cwd=str(target))
  assert r.returncode == 0, r.stderr[-3000:]
  return target


def _outside(tmp_path, target):
  env = dict(os.environ)
  env["PYTHONPATH"] = str(target)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  cwd = tmp_path / "elsewhere"
  cwd.mkdir(exist_ok=True)
  return env, str(cwd)


def test_the_installed_package_works_from_any_folder(installed, tmp_path):
  env, cwd = _outside(tmp_path, installed)
  r = subprocess.run([sys.executable, "-c", "import pit, pit.paths as p; print(pit.__file__); "
                      "print(p.configs_dir()); print(p.assets_dir())"],
                     cwd=cwd, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  pkg, configs, assets = r.stdout.split()
  assert pkg.startswith(str(installed)) and configs.startswith(str(installed))
  assert os.path.exists(os.path.join(assets, "toy_sft.jsonl"))
  assert os.path.exists(os.path.join(assets, "synthetic", "ift.jsonl"))
  pit = os.path.join(installed, "bin", "pit")
  r = subprocess.run([pit, "--help"], cwd=cwd, env=env, capture_output=True, text=True)
  assert r.returncode == 0 and "--config" in r.stdout + r.stderr, r.stderr[-2000:]
  # the documented command, from a folder that holds no configs/: the bundled config and data
  r = subprocess.run([pit, "--config=configs/sft.py:tiny", "--workdir=run", "--config.progress=False",
                      "--config.train.steps=2", "--config.model.d_model=32", "--config.model.d_ff=64"],
                     cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  cfg = json.load(open(os.path.join(cwd, "run", "config_sft.json")))
  assert cfg["data"]["train_path"].startswith(str(installed))
  assert json.load(open(os.path.join(cwd, "run", "sft_summary.json")))["run"]["steps_run"] == 2
  r = subprocess.run([pit, "--config=sft:nope", "--workdir=x"], cwd=cwd, env=env,
                     capture_output=True, text=True)
  assert r.returncode == 2 and "unknown preset 'nope'" in r.stderr


IMPORT_ALL = textwrap.dedent('''
    import pkgutil, sys
    import pit
    assert "torch" not in sys.modules
    for m in pkgutil.walk_packages(pit.__path__, "pit."):
      __import__(m.name)
    from pit.data.tokenizer import HFTokenizer
    tok = HFTokenizer(sys.argv[1])
    print(repr(tok.render_chat([("user", "hello")])))
''')


def _declared_site(tmp_path, allowed) -> str:
  """A folder holding (as links) only the declared distributions' files from this
  environment: with `python -S` and this folder on PYTHONPATH, anything undeclared
  (torch, jinja2 before it was declared, pytest) is simply not installed."""
  site = tmp_path / "declared"
  site.mkdir()
  for name in allowed:
    try:
      dist = md.distribution(name)
    except md.PackageNotFoundError:
      continue
    root = dist.locate_file("")
    for f in dist.files or []:
      top = f.parts[0]
      if top.endswith(".pth") or top == ".." or top.startswith("__pycache__"):
        continue
      src, dst = os.path.join(root, top), site / top
      if os.path.exists(src) and not os.path.lexists(dst):
        os.symlink(src, dst)
  return str(site)


def test_every_module_imports_with_only_the_declared_dependencies(installed, tmp_path):
  """What `pip install .` without the test extra gives: every module imports and chat
  templates render (jinja2 came only through torch before it was declared)."""
  from tests.test_tokenizers import _styled_dir
  tok_dir = _styled_dir(tmp_path, "chatml")
  allowed = _closure(_install_requires())
  assert "jinja2" in allowed and "torch" not in allowed and "pytest" not in allowed
  env, cwd = _outside(tmp_path, installed)
  env["PYTHONPATH"] = os.pathsep.join([str(installed), _declared_site(tmp_path, allowed)])
  r = subprocess.run([sys.executable, "-S", "-c", IMPORT_ALL, tok_dir],
                     cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().splitlines()[-1] == repr(
      "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
