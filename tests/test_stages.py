"""Multi-stage runs: finished stages are skipped, an interrupted one is re-run, a stage
whose settings / inputs / files changed reruns with everything that reads it."""
import json
import os

import ml_collections
import pytest

from pit import stages


def _stages(calls, settings=None, fail=(), inputs=None, files=None):
  """a -> b -> c, where b reads a and c reads b (a chain)."""
  settings = settings or {}
  inputs = inputs or {"a": (), "b": ("a",), "c": ("b",)}
  files = files or {}

  def make(name):
    def run(ctx):
      calls.append(name)
      assert os.path.isdir(ctx.dir) and ctx.dir.endswith(name)
      for i in ctx.inputs:
        assert ctx.input_summary(i)["value"] >= 1
      if name in fail:
        raise RuntimeError(f"{name} crashed")
      return {"value": len(name) + settings.get(name, {}).get("x", 0)}
    return stages.Stage(name, run, settings=settings.get(name, {}), inputs=inputs[name],
                        files=files.get(name, ()))
  return [make(n) for n in ("a", "b", "c")]


def test_finished_stages_are_skipped_and_a_failed_one_reruns(tmp_path):
  calls = []
  with pytest.raises(RuntimeError, match="b crashed"):
    stages.run_stages(str(tmp_path), _stages(calls, fail=("b",)))
  assert calls == ["a", "b"]
  assert stages.is_done(str(tmp_path), "a") and not stages.is_done(str(tmp_path), "b")
  out = stages.run_stages(str(tmp_path), _stages(calls))
  assert calls == ["a", "b", "b", "c"]  # "a" was not run again
  assert out == {"a": {"value": 1}, "b": {"value": 1}, "c": {"value": 1}}
  with open(tmp_path / "c" / stages.DONE_FILE) as f:
    assert json.load(f)["summary"] == {"value": 1}
  stages.run_stages(str(tmp_path), _stages(calls))
  assert calls == ["a", "b", "b", "c"]  # all done: nothing runs


def test_changed_settings_rerun_that_stage_and_its_readers_only(tmp_path, caplog):
  calls = []
  wd = str(tmp_path)
  stages.run_stages(wd, _stages(calls, settings={"b": {"x": 1}}))
  assert calls == ["a", "b", "c"]
  caplog.set_level("WARNING")
  out = stages.run_stages(wd, _stages(calls, settings={"b": {"x": 2}}))
  assert calls == ["a", "b", "c", "b", "c"]   # a kept, b changed, c reads b
  assert out["b"] == {"value": 3}
  assert "its settings changed (x: 1 -> 2)" in caplog.text
  assert "input stage(s) b changed" in caplog.text
  moved = os.listdir(tmp_path / stages.SUPERSEDED_DIR)
  assert sorted(m.split(".")[0] for m in moved) == ["b", "c"]   # kept aside, not deleted
  # A stage that does not read b keeps its result when b changes.
  calls.clear()
  independent = {"a": (), "b": ("a",), "c": ("a",)}
  stages.run_stages(wd, _stages(calls, settings={"b": {"x": 2}}, inputs=independent))
  assert calls == ["c"]   # c's inputs changed (a instead of b): rerun once
  stages.run_stages(wd, _stages(calls, settings={"b": {"x": 5}}, inputs=independent))
  assert calls == ["c", "b"]


def test_ignored_fields_rerun_nothing_and_rerun_from_reruns_the_rest(tmp_path, caplog):
  calls = []
  wd = str(tmp_path)
  base = ml_collections.ConfigDict({"train": {"steps": 3, "log_every": 1}, "progress": True,
                                    "checkpoint": {"keep": 2, "every": 1}})
  stages.run_stages(wd, _stages(calls, settings={"a": base}))
  other = ml_collections.ConfigDict(base.to_dict())
  other.train.log_every, other.progress, other.checkpoint.keep = 5, False, 9
  stages.run_stages(wd, _stages(calls, settings={"a": other}))
  assert calls == ["a", "b", "c"]
  other.checkpoint.every = 2    # not ignored: where checkpoints fall changes what is kept
  stages.run_stages(wd, _stages(calls, settings={"a": other}))
  assert calls == ["a", "b", "c"] * 2
  caplog.set_level("WARNING")
  stages.run_stages(wd, _stages(calls, settings={"a": other}), rerun_from="b")
  assert calls == ["a", "b", "c"] * 2 + ["b", "c"]
  assert "rerunning (rerun_from=b)" in caplog.text
  with pytest.raises(ValueError, match="rerun_from: no stage 'nope'"):
    stages.run_stages(wd, _stages(calls), rerun_from="nope")


def test_changed_input_file_reruns_and_unfinished_stage_with_new_settings_starts_afresh(tmp_path):
  calls = []
  src = tmp_path / "data.jsonl"
  src.write_text("one\n")
  wd = str(tmp_path / "run")
  files = {"a": (str(src),)}
  stages.run_stages(wd, _stages(calls, files=files))
  stages.run_stages(wd, _stages(calls, files=files))
  assert calls == ["a", "b", "c"]
  src.write_text("two\n")
  stages.run_stages(wd, _stages(calls, files=files))
  assert calls == ["a", "b", "c"] * 2
  # b crashes with settings x=1 (leaving partial work), then is run with x=2: fresh dir.
  with pytest.raises(RuntimeError):
    stages.run_stages(wd, _stages(calls, settings={"b": {"x": 1}}, files=files, fail=("b",)))
  (tmp_path / "run" / "b" / "partial.bin").write_text("from x=1")
  stages.run_stages(wd, _stages(calls, settings={"b": {"x": 2}}, files=files))
  assert not (tmp_path / "run" / "b" / "partial.bin").exists()
  # same settings after a crash: resumed in place (partial work kept for the trainer)
  with pytest.raises(RuntimeError):
    stages.run_stages(wd, _stages(calls, settings={"b": {"x": 3}}, files=files, fail=("b",)))
  (tmp_path / "run" / "b" / "partial.bin").write_text("from x=3")
  stages.run_stages(wd, _stages(calls, settings={"b": {"x": 3}}, files=files))
  assert (tmp_path / "run" / "b" / "partial.bin").read_text() == "from x=3"


def test_undeclared_reads_are_refused(tmp_path):
  def sneaky(ctx):
    return {"x": ctx.input_dir("a")}
  with pytest.raises(KeyError, match="not among its declared inputs"):
    stages.run_stages(str(tmp_path), [stages.Stage("a", lambda ctx: {}, inputs=()),
                                      stages.Stage("b", sneaky, inputs=())])
  with pytest.raises(ValueError, match="not earlier stages"):
    stages.run_stages(str(tmp_path / "2"), [stages.Stage("a", lambda ctx: {}, inputs=("b",)),
                                            stages.Stage("b", lambda ctx: {})])


def test_duplicate_names_and_atomic_write(tmp_path):
  with pytest.raises(ValueError, match="unique"):
    stages.run_stages(str(tmp_path), [stages.Stage("x", dict), stages.Stage("x", dict)])
  path = str(tmp_path / "s.json")
  stages.write_json_atomic(path, {"a": 1, "b": float("nan")})
  stages.write_json_atomic(path, {"a": 2, "b": float("inf")})
  assert json.load(open(path)) == {"a": 2, "b": "inf"}   # strict JSON, visible
  assert os.listdir(tmp_path) == ["s.json"]  # no temp files left behind


def test_derive_keeps_only_the_declared_method_fields():
  root = ml_collections.ConfigDict({
      "pipeline": "pit", "train": {"steps": 1},
      "pit": {"template": "plain", "original_temperature": 1.0,
              "policy_sft": {"train": {"steps": 7}}}})
  c = stages.derive(root, "sft", "policy_sft", keep=("template",))
  assert c.pipeline == "sft" and c.train.steps == 7 and root.train.steps == 1
  assert c.pit.to_dict() == {"template": "plain"}
  with pytest.raises(AttributeError):
    c.pit.original_temperature   # a field the stage did not declare is not there to read
  root.pit.policy_sft.train.nope = 3
  with pytest.raises(ValueError, match="pit.policy_sft.train.nope: no such config field"):
    stages.derive(root, "sft", "policy_sft")


def test_derive_keeps_every_section_each_pipeline_reads():
  """A stage's fingerprint covers its config because `derive` keeps exactly the sections its
  pipeline reads: check each pipeline's source against `stages.PIPELINE_SECTIONS`."""
  import re
  from pit import pipelines
  from pit.config_base import base_config
  common = set(base_config().keys())
  import importlib
  for name in pipelines.PIPELINES:
    if hasattr(importlib.import_module(f"pit.pipelines.{name}"), "build_stages"):
      continue   # a recipe of stages (pit, self_rewarding): each stage's derive keeps its own
    src = open(os.path.join(os.path.dirname(pipelines.__file__), f"{name}.py")).read()
    read = set(re.findall(r"\bconfig\.([a-z_]+)", src))
    read |= set(re.findall(r"\bconfig(?:\.get\(|\[)[\"']([a-z_]+)[\"']", src))
    for sec in read:
      if sec in stages.PIPELINE_SECTIONS:
        assert name in stages.PIPELINE_SECTIONS[sec], (name, sec)
      else:
        assert sec in common or sec == "get", (name, sec)


def test_paths_in_settings_are_fingerprinted_by_content_not_by_name(tmp_path):
  calls = []
  a, b = tmp_path / "a" / "data.jsonl", tmp_path / "b" / "data.jsonl"
  for p in (a, b):
    p.parent.mkdir()
    p.write_text("same\n")
  wd = str(tmp_path / "run")
  stages.run_stages(wd, _stages(calls, settings={"a": {"path": str(a)}}))
  stages.run_stages(wd, _stages(calls, settings={"a": {"path": str(b)}}))   # moved, same bytes
  assert calls == ["a", "b", "c"]
  b.write_text("edited\n")
  stages.run_stages(wd, _stages(calls, settings={"a": {"path": str(b)}}))
  assert calls == ["a", "b", "c"] * 2
  rec = stages.done_record(wd, "a")
  assert rec["settings"]["path"] == stages.PATH_MARK and "path" in rec["files"]


def test_rerun_from_is_carried_out_once_even_when_interrupted(tmp_path):
  calls = []
  wd = str(tmp_path)
  stages.run_stages(wd, _stages(calls))
  with pytest.raises(RuntimeError, match="c crashed"):   # the rerun is interrupted in c
    stages.run_stages(wd, _stages(calls, fail=("c",)), rerun_from="b")
  assert calls == ["a", "b", "c", "b", "c"]
  stages.run_stages(wd, _stages(calls), rerun_from="b")   # the same command: b is not redone
  assert calls == ["a", "b", "c", "b", "c", "c"]
  stages.run_stages(wd, _stages(calls), rerun_from="b")   # done: runs as usual (nothing)
  assert calls == ["a", "b", "c", "b", "c", "c"]
  stages.run_stages(wd, _stages(calls), rerun_from="c")   # a new request is carried out
  assert calls == ["a", "b", "c", "b", "c", "c", "c"]


LAYER_MODULES = ["pit/stages.py", "pit/roles.py", "pit/generation.py", "pit/eval/judges.py",
                 "pit/eval/evaluator.py", "pit/data/encoding.py", "pit/checkpoint.py",
                 "pit/integrity.py", "pit/preemption.py", "pit/workdir_lock.py",
                 "pit/pipelines/pit.py"]


def _package_modules():
  from tests.conftest import REPO
  out = []
  for root, _, files in os.walk(os.path.join(REPO, "pit")):
    out += [os.path.relpath(os.path.join(root, f), REPO) for f in files if f.endswith(".py")]
  return sorted(out)


def test_the_layer_list_is_part_of_the_package_sweep():
  assert set(LAYER_MODULES) <= set(_package_modules())


@pytest.mark.parametrize("path", _package_modules())
def test_every_public_function_is_documented(path):
  """Public functions, classes and methods of every module (the recipe layer of
  `LAYER_MODULES` first among them) have docstrings (what they compute, units,
  errors, sources)."""
  import ast
  from tests.conftest import REPO
  tree = ast.parse(open(os.path.join(REPO, path)).read())
  missing = []
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
      if not ast.get_docstring(node):
        missing.append(node.name)
      if isinstance(node, ast.ClassDef):
        missing += [f"{node.name}.{m.name}" for m in node.body
                    if isinstance(m, ast.FunctionDef) and not m.name.startswith("_")
                    and not ast.get_docstring(m)]
  assert not missing, f"{path}: undocumented {missing}"


def test_a_stage_schedule_follows_its_steps_set_on_the_command_line():
  """A stage section made by stage_overrides decays over the stage's own train.steps, also
  when they are overridden later (as --config.ser.policy_sft.train.steps=N does); a decay set
  explicitly stays; the number, not 0, is in the stage's settings (its fingerprint)."""
  import importlib.util
  from pit.pipelines import ser
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "ser.py")
  spec = importlib.util.spec_from_file_location("ser_config_for_decay_test", path)
  cfgmod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cfgmod)

  def settings(c, name):
    return {s.name: s for s in ser.build_stages(c)}[name].settings
  c = cfgmod.get_config("synthetic")
  assert settings(c, "policy_sft").optim.decay_steps == c.ser.policy_sft.train.steps == 1500
  c.ser.policy_sft.train.steps = 777
  assert settings(c, "policy_sft").optim.decay_steps == 777
  c.ser.policy_sft.optim.decay_steps = 50
  assert settings(c, "policy_sft").optim.decay_steps == 50
  c.ser.ppo.train.steps = 8
  assert settings(c, "ppo").optim.decay_steps == 8
