"""TFDS builders (array_record, no TensorFlow): real HH-RLHF file, small
fixtures in each dataset's official format, read-back via tfds.data_source,
and named errors for bad input."""
import gzip
import json
import os
import re

import pytest
import tensorflow_datasets as tfds

from pit.data import builders as B
from pit.data.records import DataError, SkipReport


def _write_jsonl(path, rows, gz=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = "".join(json.dumps(r) + "\n" for r in rows).encode()
  with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
    f.write(data)


# ------------------------------------------------------------------ hh_rlhf

def test_hh_rlhf_real_file_reproduces_every_pair(shared_dir, tmp_path):
  # The shared folder itself is the manual_dir: the flat name <config>-<split>*.jsonl.gz.
  manual = os.path.join(shared_dir, "data", "hh-rlhf")
  src = os.path.join(manual, "harmless-base-test-part1.jsonl.gz")
  b = B.build("hh_rlhf", config="harmless-base", data_dir=tmp_path / "d", manual_dir=manual)
  assert list(b.info.splits) == ["test"]  # no train file given
  stats = b.info.metadata["stats"]["test"]
  assert stats == {"pairs": 1800, "prompt_mismatch": 2, "identical_responses": 0,
                   "source": "harmless-base-test-part1.jsonl.gz"}
  recs = B.records("hh_rlhf", config="harmless-base", split="test", data_dir=tmp_path / "d")
  with gzip.open(src, "rt") as f:
    orig = [json.loads(line) for line in f]
  assert len(recs) == len(orig) == 1800
  for r, o in zip(recs, orig):
    assert r["prompt"] + r["chosen"] == o["chosen"]
    assert r["rejected_prompt"] + r["rejected"] == o["rejected"]
    assert r["prompt_mismatch"] == (r["prompt"] != r["rejected_prompt"])
    assert r["prompt"].endswith("\n\nAssistant:") and r["turns"]["role"][0] == "user"
  assert sorted(r["line"] for r in recs if r["prompt_mismatch"]) == [1255, 1689]
  pairs = B.load_pairs("hh_rlhf", config="harmless-base", split="test", data_dir=tmp_path / "d")
  assert len(pairs) == 1798
  assert all(p.prompt + p.chosen == orig[p.meta["line"] - 1]["chosen"] for p in pairs)


HH_ROWS = [
    {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: A pun.",
     "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant: No."},
    {"chosen": "\n\nHuman: Q1\n\nAssistant: A", "rejected": "\n\nHuman: Q2\n\nAssistant: A"},
    {"chosen": "\n\nHuman: Same\n\nAssistant: Same", "rejected": "\n\nHuman: Same\n\nAssistant: Same"},
]


def test_hh_rlhf_fixture_turns_flags_and_views(tmp_path):
  _write_jsonl(str(tmp_path / "m" / "helpful-base" / "train.jsonl.gz"), HH_ROWS, gz=True)
  _write_jsonl(str(tmp_path / "m" / "helpful-base" / "test.jsonl"), HH_ROWS[:1])
  b = B.build("hh_rlhf", config="helpful-base", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  assert b.info.metadata["stats"]["train"]["prompt_mismatch"] == 1
  assert b.info.metadata["stats"]["train"]["identical_responses"] == 1
  ds = tfds.data_source("hh_rlhf/helpful-base", split="train", data_dir=str(tmp_path / "d"))
  assert len(ds) == 3
  r0 = B.decode_record(ds[0])
  assert r0["prompt"] == "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant:"
  assert (r0["chosen"], r0["rejected"]) == (" A pun.", " No.")
  assert B.unzip(r0["turns"]) == [{"role": "user", "text": "Hi there"},
                                  {"role": "assistant", "text": "Hello!"},
                                  {"role": "user", "text": "Tell a joke"}]
  flags = [(B.decode_record(ds[i])["prompt_mismatch"], B.decode_record(ds[i])["identical_responses"])
           for i in range(3)]
  assert flags == [(False, False), (True, False), (False, True)]
  pairs = B.load_pairs("hh_rlhf", config="helpful-base", split="train", data_dir=tmp_path / "d")
  assert [(p.chosen, p.rejected) for p in pairs] == [(" A pun.", " No.")]
  assert pairs[0].meta["turns"][2] == ("user", "Tell a joke")
  sft = B.load_sft("hh_rlhf", config="helpful-base", split="test", data_dir=tmp_path / "d")
  assert sft[0]["prompt"] + sft[0]["response"] == HH_ROWS[0]["chosen"]


def test_hh_rlhf_malformed_line_names_file_and_line(tmp_path):
  path = tmp_path / "m" / "harmless-base" / "train.jsonl"
  _write_jsonl(str(path), HH_ROWS[:1])
  with open(path, "a") as f:
    f.write('{"chosen": "\\n\\nHuman: x\\n\\nAssistant: y", "rejected": \n')
  _bad_record_is_named("hh_rlhf", "harmless-base", "train", tmp_path / "d", tmp_path / "m",
                       r"train\.jsonl:2: malformed JSON", kept=1)
  _write_jsonl(str(path), HH_ROWS[:1] + [{"chosen": "\n\nHuman: x\n\nAssistant: y"}])
  _bad_record_is_named("hh_rlhf", "harmless-base", "train", tmp_path / "d2", tmp_path / "m",
                       r"train\.jsonl:2: field 'rejected' is missing", kept=1)
  _write_jsonl(str(path), HH_ROWS[:1] + [{"chosen": "\n\nHuman: no reply", "rejected": "x"}])
  _bad_record_is_named("hh_rlhf", "harmless-base", "train", tmp_path / "d3", tmp_path / "m",
                       r"train\.jsonl:2: field 'chosen' has no '\\n\\nAssistant:'", kept=1)
  _write_jsonl(str(path), [{"chosen": "\n\nHuman: no reply", "rejected": "x"}])
  with pytest.raises(DataError, match=r"train\.jsonl: no usable records"):   # nothing left
    B.build("hh_rlhf", config="harmless-base", data_dir=tmp_path / "d4", manual_dir=tmp_path / "m")


def _bad_record_is_named(name, config, split, data_dir, manual_dir, match, kept):
  """A bad source record: data.on_error='raise' names its file, line and field when the split
  is read (the same from a fresh build and from the built copy); 'skip' counts it."""
  for _ in range(2):   # build, then read the built dataset again
    with pytest.raises(DataError, match=match):
      B.records(name, config=config, split=split, data_dir=data_dir, manual_dir=manual_dir)
  report = SkipReport()
  recs = B.records(name, config=config, split=split, data_dir=data_dir, manual_dir=manual_dir,
                   on_error="skip", report=report)
  assert len(recs) == kept and report.total == 1, report.as_dict()
  assert any(re.search(match, e) for e in report.examples), report.examples


def test_missing_sources_name_files_and_urls(tmp_path):
  with pytest.raises(B.SourceMissingError, match=r"harmless-base/train\.jsonl\.gz.*download=True.*"
                     r"raw\.githubusercontent\.com/anthropics/hh-rlhf"):
    B.build("hh_rlhf", config="harmless-base", data_dir=tmp_path / "d")
  (tmp_path / "empty").mkdir()
  with pytest.raises(B.SourceMissingError, match=r"no source files in manual_dir .*empty.*"
                     r"2023-04-12_oasst_ready\.trees\.jsonl\.gz"):
    B.build("oasst1", config="ift", data_dir=tmp_path / "d", manual_dir=tmp_path / "empty")
  with pytest.raises(B.SourceMissingError, match="does not exist"):
    B.build("ultrafeedback_binarized", data_dir=tmp_path / "d", manual_dir=tmp_path / "nope")
  _write_jsonl(str(tmp_path / "m" / "harmless-base" / "test.jsonl"), HH_ROWS[:1])
  with pytest.raises(KeyError, match="split 'train' is not in the built dataset"):
    B.data_source("hh_rlhf", config="harmless-base", split="train", data_dir=tmp_path / "d",
                  manual_dir=tmp_path / "m")


# ------------------------------------------------------- summarize_from_feedback

def _tldr(split, choice, post="My post.\n\nMore.", conf=7, **kw):
  rec = {"info": {"id": f"t3_{split}{choice}", "post": post, "title": "A title",
                  "subreddit": "relationships"},
         "split": split,
         "summaries": [{"text": " summary zero", "policy": "sup2", "note": None},
                       {"text": " summary one", "policy": "ref", "note": "ok"}],
         "choice": choice, "worker": "w1", "batch": "batch3", "extra": {"confidence": conf}}
  rec.update(kw)
  return rec


def test_summarize_from_feedback_fixture(tmp_path):
  cnndm = {"info": {"id": None, "article": "Long article.", "title": "News", "site": "dailymail"},
           "split": "valid2", "summaries": [{"text": " a", "policy": "p"}, {"text": " b", "policy": "q"}],
           "choice": 1, "worker": "w2", "batch": "cnndm0", "extra": {}}
  _write_jsonl(str(tmp_path / "m" / "comparisons" / "batch3.json"),
               [_tldr("train", 0), _tldr("train", 1, conf=None), _tldr("valid1", 1)])
  _write_jsonl(str(tmp_path / "m" / "cnndm0.json"), [cnndm])
  b = B.build("summarize_from_feedback", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  stats = b.info.metadata["stats"]
  assert stats["pairs"] == {"train": 2, "validation": 2}
  assert len(stats["missing_files"]) == 21
  pairs = B.load_pairs("summarize_from_feedback", split="train", data_dir=tmp_path / "d")
  assert [(p.chosen, p.rejected) for p in pairs] == [(" summary zero", " summary one"),
                                                     (" summary one", " summary zero")]
  assert pairs[0].prompt == ("SUBREDDIT: r/relationships\n\nTITLE: A title\n\n"
                             "POST: My post.\n\nMore.\n\nTL;DR:")
  assert pairs[0].meta["worker"] == "w1" and pairs[0].meta["confidence"] == 7
  assert pairs[1].meta["confidence"] == -1 and pairs[0].meta["policies"] == ["sup2", "ref"]
  val = B.records("summarize_from_feedback", split="validation", data_dir=tmp_path / "d")
  assert [(r["split"], r["file"], r["line"]) for r in val] == [("valid1", "batch3.json", 3),
                                                             ("valid2", "cnndm0.json", 1)]
  vp = B.load_pairs("summarize_from_feedback", split="validation", data_dir=tmp_path / "d")
  assert vp[1].prompt == "TITLE: News\n\nARTICLE: Long article.\n\nTL;DR:" and vp[1].chosen == " b"


def test_summarize_from_feedback_bad_field(tmp_path):
  bad = _tldr("train", 0)
  del bad["summaries"][1]["text"]
  _write_jsonl(str(tmp_path / "m" / "batch4.json"), [_tldr("train", 0), bad])
  _bad_record_is_named("summarize_from_feedback", "comparisons", "train", tmp_path / "d",
                       tmp_path / "m", r"batch4\.json:2: field 'summaries\[1\]\.text' is missing",
                       kept=1)
  _write_jsonl(str(tmp_path / "m" / "batch4.json"), [_tldr("train", 0), _tldr("dev", 0)])
  _bad_record_is_named("summarize_from_feedback", "comparisons", "train", tmp_path / "d2",
                       tmp_path / "m", r"batch4\.json:2: field 'split' is 'dev'", kept=1)


# ------------------------------------------------------------------- oasst1

def _msg(mid, parent, role, text, lang="en", rank=None, replies=None, **kw):
  m = {"message_id": mid, "parent_id": parent, "user_id": "u", "created_date": "2023-02-05",
       "text": text, "role": role, "lang": lang, "review_count": 3, "review_result": True,
       "deleted": False, "rank": rank, "synthetic": False, "model_name": None,
       "emojis": {"name": ["+1"], "count": [1]}, "labels": None}
  m.update(kw)
  if replies is not None:
    m["replies"] = replies
  return m


def _oasst_trees():
  t1 = _msg("p1", None, "prompter", "What is 2+2?", replies=[
      _msg("a1", "p1", "assistant", "It is 5.", rank=2, replies=[]),
      _msg("a2", "p1", "assistant", "It is 4.", rank=0, replies=[
          _msg("p1b", "a2", "prompter", "Why?", replies=[
              _msg("a1b", "p1b", "assistant", "Counting.", rank=0, replies=[])])]),
      _msg("a3", "p1", "assistant", "Four.", rank=1, replies=[]),
      _msg("a4", "p1", "assistant", "Deleted.", rank=0, deleted=True, replies=[]),
  ])
  t2 = _msg("p2", None, "prompter", "Wie geht's?", lang="de", replies=[
      _msg("b1", "p2", "assistant", "Gut.", lang="de", rank=0, replies=[]),
      _msg("b2", "p2", "assistant", "Ok.", lang="de", rank=1, replies=[])])
  t3 = _msg("p3", None, "prompter", "Name a color.", replies=[
      _msg("c1", "p3", "assistant", "Blue.", rank=0, replies=[]),
      _msg("c2", "p3", "assistant", "Red.", rank=None, replies=[])])
  return [{"message_tree_id": t["message_id"], "tree_state": "ready_for_export", "prompt": t,
           "origin": "api"} for t in (t1, t2, t3)]


def _flatten(node, tree_id, out):
  m = {k: v for k, v in node.items() if k != "replies"}
  m["message_tree_id"] = tree_id
  out.append(m)
  for r in node.get("replies", []):
    _flatten(r, tree_id, out)
  return out


def test_oasst1_trees_file_ift_and_eft(tmp_path):
  _write_jsonl(str(tmp_path / "m" / "2023-04-12_oasst_ready.trees.jsonl.gz"), _oasst_trees(), gz=True)
  b = B.build("oasst1", config="ift", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  assert b.info.metadata["stats"]["train"]["trees"] == 3
  assert b.info.metadata["stats"]["train"]["dropped_messages"] == 1
  ift = B.records("oasst1", config="ift", split="train", data_dir=tmp_path / "d")
  assert [(r["prompt"], r["response"], r["response_id"]) for r in ift] == [
      ("What is 2+2?", "It is 4.", "a2"), ("Name a color.", "Blue.", "c1")]
  sft = B.load_sft("oasst1", split="train", data_dir=tmp_path / "d")
  assert sft[0]["prompt"] == "\n\nHuman: What is 2+2?\n\nAssistant:" and sft[0]["response"] == " It is 4."
  B.build("oasst1", config="eft", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  eft = B.records("oasst1", config="eft", split="train", data_dir=tmp_path / "d")
  assert len(eft) == 1 and eft[0]["message_tree_id"] == "p1"
  assert B.unzip(eft[0]["responses"]) == [
      {"text": "It is 4.", "rank": 0, "message_id": "a2"},
      {"text": "Four.", "rank": 1, "message_id": "a3"},
      {"text": "It is 5.", "rank": 2, "message_id": "a1"}]


def test_oasst1_messages_rebuilt_from_parent_ids(tmp_path):
  t1, t2, t3 = _oasst_trees()
  train = _flatten(t1["prompt"], "p1", []) + _flatten(t3["prompt"], "p3", [])
  train = train[::-1]  # children before parents: links come from parent_id alone
  val = _flatten(t2["prompt"], "p2", []) + [_msg("x9", "gone", "assistant", "Orphan.", rank=0)]
  _write_jsonl(str(tmp_path / "m" / "train.jsonl"), train)
  _write_jsonl(str(tmp_path / "m" / "validation.jsonl.gz"), val, gz=True)
  b = B.build("oasst1", config="ift", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  stats = b.info.metadata["stats"]
  assert stats["train"]["trees"] == 2 and stats["train"]["messages"] == 10
  assert stats["validation"]["orphans"] == 1 and stats["validation"]["examples"] == 0
  assert list(b.info.splits) == ["train"]  # German-only validation has no IFT examples
  ift = B.records("oasst1", config="ift", split="train", data_dir=tmp_path / "d")
  assert sorted((r["prompt_id"], r["response_id"]) for r in ift) == [("p1", "a2"), ("p3", "c1")]
  B.build("oasst1", config="eft", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  eft = B.records("oasst1", config="eft", split="train", data_dir=tmp_path / "d")
  assert [B.unzip(e["responses"])[0]["message_id"] for e in eft] == ["a2"]
  train[2] = dict(train[2], message_id=train[5]["message_id"])
  _write_jsonl(str(tmp_path / "m" / "train.jsonl"), train)
  with pytest.raises(DataError, match=r"train\.jsonl:6: field 'message_id' .* repeats .*train\.jsonl:3"):
    B.records("oasst1", config="eft", split="train", data_dir=tmp_path / "d3",
              manual_dir=tmp_path / "m")


def test_oasst1_bad_nested_field(tmp_path):
  trees = _oasst_trees()
  del trees[2]["prompt"]["replies"][1]["role"]
  _write_jsonl(str(tmp_path / "m" / "2023-04-12_oasst_ready.trees.jsonl.gz"), trees, gz=True)
  _bad_record_is_named("oasst1", "ift", "train", tmp_path / "d", tmp_path / "m",
                       r"trees\.jsonl\.gz:3: field 'prompt\.replies\[1\]\.role' is missing",
                       kept=1)


# -------------------------------------------------------- ultrafeedback_binarized

def _uf(i, sc=8.0, sr=5.5):
  p = f"Prompt {i}?"
  return {"prompt": p, "prompt_id": f"id{i}",
          "chosen": [{"content": p, "role": "user"}, {"content": f"Good {i}.", "role": "assistant"}],
          "rejected": [{"content": p, "role": "user"}, {"content": f"Bad {i}.", "role": "assistant"}],
          "messages": [{"content": p, "role": "user"}, {"content": f"Good {i}.", "role": "assistant"}],
          "score_chosen": sc, "score_rejected": sr}


def test_ultrafeedback_jsonl_and_parquet(tmp_path):
  _write_jsonl(str(tmp_path / "m" / "train_prefs.jsonl"), [_uf(0), _uf(1, 9, 2.0)])
  pq = pytest.importorskip("pyarrow.parquet", reason="parquet source needs pyarrow")
  import pyarrow as pa
  os.makedirs(tmp_path / "m" / "data")
  pq.write_table(pa.Table.from_pylist([_uf(2), _uf(3)]),
                 str(tmp_path / "m" / "data" / "test_prefs-00000-of-00001.parquet"))
  b = B.build("ultrafeedback_binarized", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  assert b.info.metadata["stats"]["train_prefs"] == {"pairs": 2, "context_mismatch": 0}
  pairs = B.load_pairs("ultrafeedback_binarized", split="train_prefs", data_dir=tmp_path / "d")
  assert pairs[1].prompt == "\n\nHuman: Prompt 1?\n\nAssistant:"
  assert (pairs[1].chosen, pairs[1].rejected, pairs[1].margin) == (" Good 1.", " Bad 1.", 7.0)
  assert pairs[0].margin == 2.5 and pairs[0].meta["turns"] == [("user", "Prompt 0?")]
  test = B.load_pairs("ultrafeedback_binarized", split="test_prefs", data_dir=tmp_path / "d")
  assert [p.meta["prompt_id"] for p in test] == ["id2", "id3"]
  sft = B.load_sft("ultrafeedback_binarized", split="test_prefs", data_dir=tmp_path / "d")
  assert sft[1] == {"prompt": "\n\nHuman: Prompt 3?\n\nAssistant:", "response": " Good 3.",
                    "turns": [("user", "Prompt 3?")]}


def test_ultrafeedback_bad_rows(tmp_path):
  bad = _uf(1)
  bad["rejected"][1]["role"] = "user"
  _write_jsonl(str(tmp_path / "m" / "test_prefs.jsonl.gz"), [_uf(0), bad], gz=True)
  _bad_record_is_named("ultrafeedback_binarized", None, "test_prefs", tmp_path / "d", tmp_path / "m",
                       r"test_prefs\.jsonl\.gz:2: field 'rejected\[1\]\.role' must be 'assistant'",
                       kept=1)
  pq = pytest.importorskip("pyarrow.parquet", reason="parquet source needs pyarrow")
  import pyarrow as pa
  os.remove(tmp_path / "m" / "test_prefs.jsonl.gz")
  rows = [_uf(0), dict(_uf(1), score_chosen=None)]
  pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "m" / "test_prefs-x.parquet"))
  _bad_record_is_named("ultrafeedback_binarized", None, "test_prefs", tmp_path / "d2", tmp_path / "m",
                       r"test_prefs-x\.parquet: row 2: field 'score_chosen' is missing", kept=1)


def test_registry_and_synthetic_pairs(tmp_path):
  assert {"hh_rlhf", "summarize_from_feedback", "oasst1", "ultrafeedback_binarized"} <= set(B.BUILDERS)
  if "synthetic" not in B.BUILDERS:
    pytest.skip("pit.data.builders.synthetic not present")
  pairs = B.load_pairs("synthetic", config="small", split="validation", data_dir=tmp_path / "d")
  assert len(pairs) == 64 and all(p.chosen != p.rejected for p in pairs)
  with pytest.raises(KeyError, match="no preference pairs"):
    B.load_pairs("oasst1", config="ift", split="train", data_dir=tmp_path / "d")
  with pytest.raises(KeyError, match="unknown dataset 'nope'"):
    B.build("nope", data_dir=tmp_path / "d")


def test_a_build_from_changed_manual_files_is_redone_not_reused(tmp_path, caplog):
  path = tmp_path / "m" / "harmless-base" / "train.jsonl"
  _write_jsonl(str(path), HH_ROWS[:1])
  kw = dict(config="harmless-base", split="train", data_dir=tmp_path / "d", manual_dir=tmp_path / "m")
  assert len(B.records("hh_rlhf", **kw)) == 1
  assert len(B.records("hh_rlhf", **kw)) == 1   # unchanged: the built copy is reused
  assert "changed since the dataset was built" not in caplog.text
  _write_jsonl(str(path), HH_ROWS[:1] * 3)
  assert len(B.records("hh_rlhf", **kw)) == 3   # changed: built again, not a stale copy
  assert "changed since the dataset was built" in caplog.text
