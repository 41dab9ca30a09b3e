"""Multi-stage runs: finished stages are skipped, an interrupted one is re-run."""
import json
import os

import pytest

from pit import stages


def test_finished_stages_are_skipped_and_a_failed_one_reruns(tmp_path):
  calls = []

  def make(name, fail=False):
    def run(d):
      calls.append(name)
      assert os.path.isdir(d) and d.endswith(name)
      if fail:
        raise RuntimeError(f"{name} crashed")
      return {"value": len(name)}
    return stages.Stage(name, run)

  with pytest.raises(RuntimeError, match="b crashed"):
    stages.run_stages(str(tmp_path), [make("a"), make("b", fail=True), make("c")])
  assert calls == ["a", "b"]
  assert stages.is_done(str(tmp_path), "a") and not stages.is_done(str(tmp_path), "b")
  out = stages.run_stages(str(tmp_path), [make("a"), make("bb"), make("c")])
  assert calls == ["a", "b", "bb", "c"]  # "a" was not run again
  assert out == {"a": {"value": 1}, "bb": {"value": 2}, "c": {"value": 1}}
  with open(tmp_path / "c" / stages.DONE_FILE) as f:
    assert json.load(f)["summary"] == {"value": 1}


def test_duplicate_names_and_atomic_write(tmp_path):
  with pytest.raises(ValueError, match="unique"):
    stages.run_stages(str(tmp_path), [stages.Stage("x", dict), stages.Stage("x", dict)])
  path = str(tmp_path / "s.json")
  stages.write_json_atomic(path, {"a": 1})
  stages.write_json_atomic(path, {"a": 2})
  assert json.load(open(path)) == {"a": 2}
  assert os.listdir(tmp_path) == ["s.json"]  # no temp files left behind
