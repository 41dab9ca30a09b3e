"""Data sources from config (jsonl / tfds / synthetic) and bad input: errors that name file,
line and field, or skipped + counted + reported (log and pipeline summary), never dropped."""
import json
import logging
import os
import subprocess
import sys

import pytest

from pit import config_base
from pit.data import pairs, records, sources
from pit.data.tokenizer import ByteTokenizer
from pit.pipelines import common
from tests.conftest import REPO

GOOD = b'{"prompt": "p%d", "response": "r%d"}\n'
BAD = {
    "malformed": (b'{"prompt": "a", "response": "b"\n', "malformed JSON"),
    "missing": (b'{"prompt": "a"}\n', "field 'response' is missing"),
    "utf8": (b'{"prompt": "\xff\xfe", "response": "b"}\n', "not valid UTF-8"),
    "empty": (b'{"prompt": "a", "response": ""}\n', "field 'response' is empty"),
}


def _write(tmp_path, lines, name="d.jsonl"):
  p = tmp_path / name
  p.write_bytes(b"".join(lines))
  return str(p)


def _data_cfg(**kw):
  c = config_base.base_config()
  c.data.update(kw)
  return c


def test_jsonl_sft_text_pairs_and_prompts(tmp_path):
  sft = _write(tmp_path, [GOOD % (i, i) for i in range(3)], "sft.jsonl")
  text = _write(tmp_path, [b'{"text": "hello"}\n', b'{"text": "world", "id": 3}\n'], "t.jsonl")
  pr = _write(tmp_path, [json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad",
                                     "margin": 0.5, "src": "x"}).encode() + b"\n"
                         for i in range(4)], "pairs.jsonl")
  c = _data_cfg(train_path=sft, eval_path=text)
  assert sources.load_sft_records(c.data) == [{"prompt": f"p{i}", "response": f"r{i}"}
                                              for i in range(3)]
  assert sources.load_sft_records(c.data, "eval") == [{"text": "hello"},
                                                     {"text": "world", "id": 3}]
  c = _data_cfg(train_path=pr, eval_path=pr)
  ps = sources.load_pairs(c.data)
  assert ps[2] == pairs.PreferencePair("q2", "good", "bad", 0.5, {"src": "x"})
  assert sources.load_prompts(c.data) == ["q0", "q1", "q2", "q3"]  # split "eval" -> eval_path
  gz = tmp_path / "sft.jsonl.gz"
  import gzip
  gz.write_bytes(gzip.compress(open(sft, "rb").read()))
  assert len(sources.load_sft_records(_data_cfg(train_path=str(gz)).data)) == 3


def test_source_config_errors(tmp_path):
  with pytest.raises(ValueError, match="data.source: unknown source 'hdf5'"):
    sources.load_sft_records(_data_cfg(source="hdf5").data)
  with pytest.raises(ValueError, match="data.eval_path: no evaluation file"):
    sources.load_prompts(_data_cfg(train_path="x").data)
  with pytest.raises(FileNotFoundError, match="data file not found: /no/such.jsonl"):
    sources.load_pairs(_data_cfg(train_path="/no/such.jsonl").data)
  with pytest.raises(ValueError, match="data.tfds_name: no TFDS dataset"):
    sources.load_pairs(_data_cfg(source="tfds").data)
  with pytest.raises(ValueError, match="data.on_error must be"):
    sources.load_pairs(_data_cfg(on_error="ignore", train_path="x").data)
  only_bad = _write(tmp_path, [BAD["missing"][0]], "bad.jsonl")
  with pytest.raises(records.DataError, match="no usable SFT records .*skipped 1"):
    sources.load_sft_records(_data_cfg(train_path=only_bad, on_error="skip").data)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sft_line_raises_or_is_skipped_and_reported(tmp_path, case, caplog):
  line, needle = BAD[case]
  path = _write(tmp_path, [GOOD % (0, 0), line, GOOD % (2, 2)])
  with pytest.raises(records.DataError) as e:
    sources.load_sft_records(_data_cfg(train_path=path).data)
  assert str(e.value).startswith(f"{path}:2: ") and needle in str(e.value)
  report = sources.DataReport()
  with caplog.at_level(logging.WARNING):
    recs = sources.load_sft_records(_data_cfg(train_path=path, on_error="skip").data,
                                    report=report)
  assert [r["prompt"] for r in recs] == ["p0", "p2"]
  d = report.as_dict()
  assert d["records_skipped"] == 1 and f"{path}:2:" in d["skip_examples"][0]
  assert any("skipped 1 record" in r.getMessage() and r.levelno == logging.WARNING
             for r in caplog.records)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pair_line_raises_or_is_skipped(tmp_path, case):
  line, needle = BAD[case]
  line = line.replace(b'"response"', b'"chosen"').replace(b'{"prompt"', b'{"rejected": "x", "prompt"')
  needle = needle.replace("response", "chosen")
  good = b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n'
  path = _write(tmp_path, [good, good, line])
  with pytest.raises(records.DataError, match=rf"{path}:3: .*{needle}"):
    sources.load_pairs(_data_cfg(train_path=path).data)
  report = sources.DataReport()
  assert len(sources.load_pairs(_data_cfg(train_path=path, on_error="skip").data,
                                report=report)) == 2
  assert report.as_dict()["records_skipped"] == 1


def test_load_sft_examples_counts_skips_and_truncations(tmp_path, caplog):
  long = json.dumps({"prompt": "x" * 100, "response": "y" * 100}).encode() + b"\n"
  path = _write(tmp_path, [GOOD % (0, 0), BAD["empty"][0], long, BAD["malformed"][0]])
  c = _data_cfg(train_path=path, on_error="skip", max_len=64, max_response_len=32)
  report = sources.DataReport()
  with caplog.at_level(logging.WARNING):
    ex = common.load_sft_examples(path, c, ByteTokenizer(), report=report)
  assert len(ex) == 2 and max(len(e.tokens) for e in ex) == 64
  d = report.as_dict()
  assert (d["records_skipped"], d["prompts_cut"], d["responses_cut"]) == (2, 1, 1)
  assert any("2 record(s) skipped" in r.getMessage() and "1 prompt(s), 1 response(s)"
             in r.getMessage() for r in caplog.records)


def test_sft_pipeline_summary_reports_skips(tmp_path):
  """on_error='skip' through the real sft pipeline: counts land in sft_summary.json."""
  from pit import main
  path = _write(tmp_path, [GOOD % (i, i) for i in range(30)] + [BAD["missing"][0],
                                                                BAD["utf8"][0]])
  c = config_base.base_config()
  c.model.update(vocab_size=260, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, d_ff=64,
                 max_seq_len=32)
  c.data.update(train_path=path, on_error="skip", max_len=32, max_response_len=4,
                buckets=(32,), eval_fraction=0.0)
  c.train.update(steps=2, batch_size=8, log_every=1)
  c.checkpoint.update(every=2, keep=1, async_save=False)
  c.progress = False
  main.run(c, str(tmp_path / "w"))
  summary = json.load(open(tmp_path / "w" / "sft_summary.json"))
  d = summary["data"]["train"]
  assert d["records_skipped"] == 2 and d["responses_cut"] == 0
  assert sorted(d["skipped_by_reason"]) == ["field 'response' is missing",
                                            "not valid UTF-8"]


def test_cli_bad_line_is_one_line_error(tmp_path):
  path = _write(tmp_path, [GOOD % (0, 0), BAD["missing"][0]])
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "pit.main", "--config=configs/sft.py:tiny",
                      f"--config.data.train_path={path}", f"--workdir={tmp_path / 'w'}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("pit: error:")]
  assert errors == [f"pit: error: {path}:2: field 'response' is missing"], r.stderr[-2000:]


def test_synthetic_source():
  from pit.data import synthetic
  c = _data_cfg(source="synthetic", synthetic_train_size=6, synthetic_eval_size=4, seed=3)
  sft = sources.load_sft_records(c.data)
  assert sft == synthetic.ift_examples(6, 3)
  ev = sources.load_sft_records(c.data, "eval")
  assert [r["prompt"] for r in ev] == synthetic.eval_prompts(4, 3) == sources.load_prompts(c.data)
  assert all(r["response"] == synthetic.gold_response(r["prompt"]) for r in ev)
  ps = sources.load_pairs(c.data)
  assert ps == synthetic.preference_pairs(6, 3) and len(sources.load_pairs(c.data, "eval")) == 4
  assert not {p.prompt for p in sources.load_pairs(c.data, "eval")} & {p.prompt for p in ps}
  ex = common.load_sft_examples(c.data.train_path, c, ByteTokenizer())  # path unused off jsonl
  assert len(ex) == 6 and bytes(ex[0].tokens[1:-1].tolist()) == (  # bos prompt response eos
      (sft[0]["prompt"] + sft[0]["response"]).encode())


def test_skips_in_generated_records_are_counted_and_warned(monkeypatch, caplog):
  from pit.data import synthetic
  monkeypatch.setattr(synthetic, "ift_examples", lambda n, seed, task="sort": [
      {"prompt": "a", "response": "b"}, {"prompt": "a", "response": " "}, {"prompt": 3}])
  c = _data_cfg(source="synthetic")
  with pytest.raises(records.DataError, match=r"synthetic/train:1: field 'response' is empty"):
    sources.load_sft_records(c.data)
  c.data.on_error = "skip"
  report = sources.DataReport()
  with caplog.at_level(logging.WARNING):
    assert sources.load_sft_records(c.data, report=report) == [{"prompt": "a", "response": "b"}]
  assert report.as_dict()["skipped_by_reason"] == {"field 'response' is empty": 1,
                                                   "field 'prompt' must be a string": 1}
  assert any("skipped 2 record" in r.getMessage() for r in caplog.records)


def _hh_line(q, good, bad):
  pre = f"\n\nHuman: {q}\n\nAssistant:"
  return json.dumps({"chosen": pre + " " + good, "rejected": pre + " " + bad}).encode() + b"\n"


def test_tfds_source_builds_from_manual_dir(tmp_path):
  import gzip
  manual = tmp_path / "manual" / "harmless-base"
  manual.mkdir(parents=True)
  (manual / "test.jsonl.gz").write_bytes(gzip.compress(b"".join(
      _hh_line(f"question {i}?", f"good answer {i}", f"bad answer {i}") for i in range(5))))
  c = _data_cfg(source="tfds", tfds_name="hh_rlhf", tfds_config="harmless-base",
                data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
  ps = sorted(sources.load_pairs(c.data, "eval"), key=lambda p: p.prompt)
  assert [(p.prompt, p.chosen, p.rejected) for p in ps] == [
      (f"\n\nHuman: question {i}?\n\nAssistant:", f" good answer {i}", f" bad answer {i}")
      for i in range(5)]
  assert sorted(sources.load_prompts(c.data)) == [p.prompt for p in ps]
  sft = sorted(sources.load_sft_records(c.data, "test"), key=lambda r: r["prompt"])
  assert [(r["prompt"], r["response"]) for r in sft] == [(p.prompt, p.chosen) for p in ps]
