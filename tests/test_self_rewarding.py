"""Self-Rewarding LMs (pit/pipelines/self_rewarding.py and its parts): self-instruction
filters, EFT agreement and balancing, AIFT scores and pairs, resumable generation, and the
recipe end to end on the synthetic task (what flows between the stages, the teacher variants,
a kill inside an iteration)."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pit import resumable
from pit.data import aift, eft, self_instruct, synthetic
from pit.data import judge as judge_prompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ self-instruction


def test_fewshot_prompt_and_parse_round_trip():
  shots = ["Name a fruit.", "Write a haiku\nabout rain."]
  p = self_instruct.fewshot_prompt(shots, "tags")
  assert p.endswith("<instruction>") and "<instruction>Write a haiku\nabout rain.</instruction>" in p
  assert self_instruct.parse_generated(" Tell a joke. </instruction>\n<instr", "tags") == "Tell a joke."
  assert self_instruct.parse_generated("cut off by the budget", "tags") is None
  # a chat model replies to the few-shot user turn and ends with eos, without the closing tag
  assert self_instruct.parse_generated(" How do I bake bread?", "tags", ended=True) == \
      "How do I bake bread?"
  assert self_instruct.parse_generated("<instruction> Name a river.", "tags", ended=True) == \
      "Name a river."
  assert self_instruct.parse_generated("A. </instruction> B.", "tags", ended=True) == "A."
  assert self_instruct.parse_generated("sort: 20 21 22 23", "lines", ended=True) == \
      "sort: 20 21 22 23"
  assert self_instruct.parse_generated("sort: 20 21 22", "lines") is None
  lines = self_instruct.fewshot_prompt(["sort: 12 13 14 15"], "lines")
  assert lines == "New instruction like these:\nsort: 12 13 14 15\n"
  assert self_instruct.parse_generated("sort: 20 21 22 23\nsort: 1", "lines") == "sort: 20 21 22 23"
  row = self_instruct.training_row(["a1", "a2"], "a3", "lines")
  assert row["response"] == "a3\n" and row["prompt"].endswith("a1\na2\n")
  with pytest.raises(ValueError, match="end marker"):
    self_instruct.fewshot_prompt(["two\nlines"], "lines")
  with pytest.raises(ValueError, match="unknown few-shot layout"):
    self_instruct.fewshot_prompt(["x"], "yaml")


def test_filter_candidates_counts_every_reason():
  valid = lambda t: "bad" if "forbidden" in t else None
  texts = [None, "  ", "hi", "x" * 50, "a forbidden one", "Seed   prompt", "New one",
           "new ONE", "Another", "Third"]
  kept, counts = self_instruct.filter_candidates(texts, ["seed prompt"], min_chars=3,
                                                 max_chars=40, valid=valid, limit=2)
  assert kept == ["New one", "Another"]
  assert counts == {"generated": 10, "kept": 2, "unterminated": 1, "empty": 1, "too_short": 1,
                    "too_long": 1, "invalid": 1, "invalid:bad": 1, "seed_duplicate": 1,
                    "duplicate": 1, "over_limit": 1}


def test_synthetic_validity_rejects_unparseable_and_held_out_sets():
  valid = self_instruct.synthetic_validity("sort_long")
  rng = np.random.default_rng(0)
  train = synthetic.make_prompt(rng, "train", "sort_long").strip()
  held = synthetic.make_prompt(rng, "eval", "sort_long").strip()
  assert valid(train) is None
  assert valid(held) == "held_out"
  items = held.split(" ")[1:]
  assert valid("sort: " + " ".join(reversed(items))) == "held_out"   # any order of the set
  assert valid("sort: 12 12 13 14") == "unparseable"                 # a repeated item
  assert valid("sort: 12 13 14 15") == "wrong_length"                # 4 items: not sort_long
  assert self_instruct.synthetic_validity("sort")("sort: 12 13 14 15") in (None, "held_out")
  assert valid("sort 12 13 14 15") == "unparseable"


def test_prompt_style_plain_chat_and_raw():
  hh = self_instruct.PromptStyle.infer(["\n\nHuman: hi there\n\nAssistant:"] * 3)
  assert hh.kind == "plain_chat"
  assert hh.prompt("What is 2+2?") == "\n\nHuman: What is 2+2?\n\nAssistant:"
  assert hh.instruction(hh.prompt("What is 2+2?")) == "What is 2+2?"
  assert hh.instruction("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:") is None
  sort = self_instruct.PromptStyle.infer(["sort: 12 13 14 15\n", "sort: 16 17 18 19\n"])
  assert (sort.kind, sort.suffix) == ("raw", "\n")
  assert sort.prompt("sort: 12 13 14 15") == "sort: 12 13 14 15\n"
  assert sort.instruction("sort: 12 13 14 15\n") == "sort: 12 13 14 15"
  assert self_instruct.PromptStyle.infer(["a", "b\n"]).suffix == ""


# ------------------------------------------------------------------ EFT


def _judgement(k):
  return f"Reasons.\nScore: {k}"


def test_eft_keeps_groups_whose_scores_order_like_the_reference():
  groups = [{"prompt": "p1", "responses": ["a", "b", "c"], "reference": [2, 1, 0]},
            {"prompt": "p2", "responses": ["a", "b"], "reference": [1, 0]},
            {"prompt": "p3", "responses": ["a", "b"], "reference": [1, 0]},
            {"prompt": "p4", "responses": ["a", "b"], "reference": [0, 0]}]
  judgements = [[[_judgement(5)], ["garbled", _judgement(3)], [_judgement(1)]],   # agrees
                [[_judgement(2)], [_judgement(4)]],                               # reversed
                [["no score"], [_judgement(1)]],                                  # unreadable
                [[_judgement(2)], [_judgement(2)]]]                               # tie = tie
  rows, counts = eft.from_judgements(groups, judgements, compact=True)
  assert counts == dict(groups=4, candidates=9, unparsed_candidates=1, groups_unparsed=1,
                        groups_disagree=1, groups_kept=2, rows=5)
  assert [r["points"] for r in rows] == [5, 3, 1, 2, 2]
  assert rows[1]["response"] == _judgement(3)          # the first readable sample
  assert rows[0]["prompt"] == judge_prompts.render_judge_prompt("p1", "a", compact=True)
  with pytest.raises(ValueError, match="group 0"):
    eft.from_judgements(groups[:1], [[["x"]]])


def test_eft_balance_caps_every_score_at_the_second_most_frequent():
  rows = [{"points": 4, "i": i} for i in range(10)] + [{"points": 3, "i": i} for i in range(4)] + \
         [{"points": 1, "i": 0}]
  out, counts = eft.balance_scores(rows, seed=0)
  assert counts == {"before": {"1": 1, "3": 4, "4": 10}, "after": {"1": 1, "3": 4, "4": 4},
                    "dropped": 6}
  assert out == [r for r in rows if r in out]            # original order kept
  assert out == eft.balance_scores(rows, seed=0)[0]     # deterministic given the seed
  assert out != eft.balance_scores(rows, seed=1)[0]


# ------------------------------------------------------------------ AIFT


def test_candidate_scores_average_readable_judgements_only():
  means, parsed, counts = aift.candidate_scores([
      [_judgement(4), _judgement(2), "Score: five"],   # mean of the two readable ones
      ["nothing", "Score: 9"],                         # none readable -> NaN, never a number
      [_judgement(3)]])
  assert means[0] == 3.0 and math.isnan(means[1]) and means[2] == 3.0
  assert parsed == [[4.0, 2.0, None], [None, None], [3.0]]
  assert counts == {"judgements": 6, "unparsed_judgements": 3, "unscored_candidates": 1}


def test_best_vs_worst_pairs_drop_ties_and_unscored_prompts():
  nan = math.nan
  pairs, counts = aift.best_vs_worst_pairs(
      ["p1", "p2", "p3", "p4", "p5"],
      [["a", "b", "c"], ["a", "b"], ["a", "b", "c"], ["a", " a "], ["", "b", "c"]],
      [[2.0, 4.5, 1.0], [3.0, 3.0], [nan, 2.0, nan], [1.0, 5.0], [5.0, 1.0, 2.0]])
  assert [(p.prompt, p.chosen, p.rejected, p.margin) for p in pairs] == [
      ("p1", "b", "c", 3.5), ("p5", "c", "b", 1.0)]
  assert counts == dict(prompts=5, pairs=2, too_few_scores=1, ties=1, same_text=1,
                        empty_candidates=1)
  demo, dc = aift.teacher_demo_pairs(["x", "y", "z"], ["good", "same", ""], ["bad", "same", "s"])
  assert [(p.chosen, p.rejected) for p in demo] == [("good", "bad")]
  assert dc == dict(prompts=3, pairs=1, empty=1, same_text=1)


# ------------------------------------------------------------------ resumable generation


def test_map_chunks_resumes_at_the_chunk_it_was_on(tmp_path):
  calls, killed = [], []

  def fn(batch, c):
    calls.append(c)
    if c == 2 and not killed:
      killed.append(c)
      raise KeyboardInterrupt   # a kill inside the job
    return [x * 10 + c for x in batch]
  items = list(range(11))
  with pytest.raises(KeyboardInterrupt):
    resumable.map_chunks(str(tmp_path), "job", items, fn, 3)
  assert calls == [0, 1, 2]
  out = resumable.map_chunks(str(tmp_path), "job", items, fn, 3)
  assert calls == [0, 1, 2, 2, 3]                     # chunks 0 and 1 read back
  assert out == [x * 10 + i // 3 for i, x in enumerate(items)]
  assert not os.path.exists(tmp_path / "job.parts")
  assert resumable.map_chunks(str(tmp_path), "job", items, fn, 3) == out and len(calls) == 5
  # other items: recomputed, not the stored results
  assert resumable.map_chunks(str(tmp_path), "job", items[:4], fn, 3) == [0, 10, 20, 31]


def test_map_chunks_sets_aside_a_damaged_part(tmp_path):
  items = list(range(6))
  fn = lambda b, c: [x + 100 for x in b]
  parts = tmp_path / "job.parts"
  parts.mkdir()
  (parts / "000000.json").write_text('{"n": 3, "digest": "x", "results": [7, 7, 7]}')  # stale
  (parts / "000001.json").write_text('{"n": 3, "dig')                                    # torn
  assert resumable.map_chunks(str(tmp_path), "job", items, fn, 2 + 1) == [100 + x for x in items]
  assert not parts.exists()   # set aside as .bad, then the folder removed once the job is done
  assert resumable.map_chunks(str(tmp_path), "job", items, lambda b, c: 1 / 0, 3) == \
      [100 + x for x in items]   # read back from the finished file, nothing recomputed
  with pytest.raises(ValueError, match="chunk 0 gave 1 results for 2 items"):
    resumable.map_chunks(str(tmp_path), "other", [1, 2], lambda b, c: [0], 2)


# ------------------------------------------------------------------ the recipe


def _cfg(preset="synthetic_smoke", **sr):
  sys.path.insert(0, REPO)
  from configs import self_rewarding as cfgmod
  c = cfgmod.get_config(preset)
  c.progress = False
  c.self_rewarding.update(sr)
  return c


def test_config_checks_name_the_field():
  from pit.pipelines import self_rewarding as recipe
  for sr, match in ((dict(variant="teacher"), "variant"),
                    (dict(variant="teacher_reward"), "needs self_rewarding.teacher"),
                    (dict(judge_samples=3, judge_temperature=0.0), "judge_samples > 1"),
                    (dict(num_candidates=1), "num_candidates must be >= 2"),
                    (dict(eft_source="oracle"), None),
                    (dict(eft_source="model", worked_judgements=True), "worked_judgements"),
                    (dict(eft_source="oracle", worked_judgements=True), None)):
    c = _cfg(**sr)
    if match is None:
      recipe._check(c)
    else:
      with pytest.raises(ValueError, match=match):
        recipe._check(c)
  c = _cfg("hh_rlhf") if _has_smollm2() else None
  if c is not None:
    c.self_rewarding.eft_source = "oracle"
    with pytest.raises(ValueError, match="eft_source='oracle' needs the synthetic task"):
      recipe._check(c)


def test_worked_judgements_reach_the_eft_rows_and_the_held_out_judge_rows(tmp_path):
  """The synthetic preset's judge data: with worked_judgements every EFT row (train and
  held-out) is the oracle's worked check, criteria and score of that row's own response;
  without it, none is."""
  from pit.pipelines import self_rewarding as recipe
  for worked in (True, False):
    c = recipe.derive(_cfg(worked_judgements=worked), "data", None,
                      keep=("max_eft_rows", "eft_source", "eft_balance", "judge_prompt",
                            "worked_judgements", "eval_prompts", "judge_eval_groups",
                            "judge_eval_candidates"))
    files = recipe._synthetic_data(c, {})
    for name in ("eft_train", "eft_eval"):
      rows = files[name]
      assert rows and all(r["response"].startswith("check ") == worked for r in rows), name
      for r in rows[:50]:
        prompt = r["prompt"].split("User: ", 1)[1].split("\n<response>")[0] + "\n"
        response = r["prompt"].split("<response>", 1)[1].split("</response>")[0]
        assert r["response"] == synthetic.justification(prompt, response, True, worked)
  assert _cfg("synthetic").self_rewarding.worked_judgements      # the measured preset's setting


def test_judgements_cut_by_the_sft_or_the_judge_budget_are_refused():
  """M1 must see every EFT judgement whole (a judge taught cut judgements stops before its
  score) and be able to write it: both limits are checked before training, naming the field."""
  from pit.pipelines import self_rewarding as recipe
  rows = [{"prompt": r["prompt"], "response": r["response"]}
          for r in synthetic.eft_examples(40, seed=0, task="sort_long", worked=True)]
  longest = max(len(r["response"]) for r in rows) + 1          # byte tokens + eos
  c = recipe.derive(_cfg(), "sft", "sft", keep=())
  c.data.update(source="jsonl", prompt_format="{prompt}", max_len=384, max_response_len=longest)
  recipe._check_judgements_fit(c, rows, longest, "m1")         # exactly fits: no error
  c.data.max_response_len = longest - 1
  with pytest.raises(ValueError, match="1 of 40 EFT judgements .*data.max_response_len"):
    recipe._check_judgements_fit(c, rows, longest, "m1")
  c.data.max_response_len = longest
  with pytest.raises(ValueError, match="judge_max_new_tokens"):
    recipe._check_judgements_fit(c, rows, longest - 1, "m1")


def _has_smollm2():
  try:
    from pit import paths
    paths.smollm2_gguf()
    return True
  except FileNotFoundError:
    return False


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  from pit import main
  wd = str(tmp_path_factory.mktemp("sr") / "run")
  main.run(_cfg(), wd)
  return wd


def test_what_flows_between_the_stages(smoke_run):
  """The rows each stage reads are the rows the stage before wrote, made by the model it
  should be made by."""
  from pit import generation
  from pit.pipelines import common
  from pit.pipelines import self_rewarding as recipe
  wd = smoke_run
  cfg = _cfg()
  sr = cfg.self_rewarding
  # M1 trained on IFT + oracle EFT + instruction-creation rows, interleaved
  m1 = json.load(open(os.path.join(wd, "m1", "stage_done.json")))["summary"]
  data = json.load(open(os.path.join(wd, "data", "stage_done.json")))["summary"]
  assert m1["mix"] == {"ift_train": data["ift_train"], "eft_train": data["eft_train"],
                       "ict_train": data["ict_train"]}
  sft_rows = _read(os.path.join(wd, "m1", "sft_train.jsonl"))
  assert len(sft_rows) == sum(m1["mix"].values())
  assert {r["response"] for r in _read(os.path.join(wd, "data", "eft_train.jsonl"))} <= \
      {r["response"] for r in sft_rows}
  rt = common.setup(cfg)
  for i in (1, 2):
    # the new prompts are M_i's few-shot continuations, parsed and filtered
    gens = [r["result"] for r in _read(os.path.join(wd, f"prompts_{i}", "continuations.jsonl"))[1:]]
    # each generation with whether the model ended it (eos) -- what the parser is told
    gens, ended = [g["text"] for g in gens], [g["ended"] for g in gens]
    rng = np.random.default_rng([int(cfg.data.seed), 17, i])
    seeds = [r["instruction"] for r in _read(os.path.join(wd, "data", "seed_instructions.jsonl"))]
    fewshot = [self_instruct.fewshot_prompt(self_instruct.draw_shots(rng, seeds, int(sr.shots)),
                                            sr.fewshot_layout)
               for _ in range(int(sr.prompt_attempts))][:int(sr.chunk)]
    settings = recipe._settings(sr, temperature=sr.prompt_temperature, top_p=sr.prompt_top_p,
                                max_new_tokens=sr.prompt_max_new_tokens,
                                offset=recipe.seed_offset("prompts", i))
    for m in (i, 3 - i):
      gen = generation.from_checkpoint(rt, os.path.join(wd, f"m{m}"), settings)
      out = gen.generations(fewshot, 0)
      assert ([g.text for g in out] == gens[:len(fewshot)]) == (m == i), f"prompts_{i} vs M{m}"
      if m == i:
        assert [g.ended for g in out] == ended[:len(fewshot)]
        assert all(g.ended == (g.tokens[-1:] == [rt.tokenizer.eos_id]) for g in out)
    kept, _ = self_instruct.filter_candidates(
        [self_instruct.parse_generated(t, sr.fewshot_layout, e) for t, e in zip(gens, ended)],
        seeds,
        min_chars=int(sr.min_prompt_chars), max_chars=int(sr.max_prompt_chars),
        valid=self_instruct.synthetic_validity(cfg.data.synthetic_task),
        limit=int(sr.new_prompts))
    made = _read(os.path.join(wd, f"prompts_{i}", "prompts.jsonl"))
    assert [r["instruction"] for r in made] == kept and kept
    assert [r["prompt"] for r in _read(os.path.join(wd, f"candidates_{i}", "candidates.jsonl"))] \
        == [k + "\n" for k in kept]
    judged = _read(os.path.join(wd, f"judgements_{i}", "judgements.jsonl"))
    cands = _read(os.path.join(wd, f"candidates_{i}", "candidates.jsonl"))
    assert [r["candidates"] for r in judged] == [r["candidates"] for r in cands]
    # the judge is M_i: its first chunk of judgements is what M_i samples with those seeds
    settings = recipe._settings(sr, temperature=sr.judge_temperature, top_p=sr.judge_top_p,
                                max_new_tokens=sr.judge_max_new_tokens,
                                offset=recipe.seed_offset("judgements", i))
    items = [(r["prompt"], x) for r in cands for x in r["candidates"]][:int(sr.chunk)]
    texts = [recipe.judge_prompt(p, x, True) for p, x in items]
    for m in (i, 3 - i):
      gen = generation.from_checkpoint(rt, os.path.join(wd, f"m{m}"), settings)
      again = [[g.text for g in d] for d in gen.sample(texts, int(sr.judge_samples), 0)]
      stored = [t for r in judged for t in r["judgements"]][:len(items)]
      assert (again == stored) == (m == i), f"judgements_{i} vs M{m}"
    # pairs: argmax vs argmin of the stored judgements' readable means
    pairs = _read(os.path.join(wd, f"pairs_{i}", "pairs_train.jsonl")) + \
        _read(os.path.join(wd, f"pairs_{i}", "pairs_eval.jsonl"))
    expect = {}
    for r in judged:
      means, _, _ = aift.candidate_scores(r["judgements"])
      ok = [(c, m) for c, m in zip(r["candidates"], means) if not math.isnan(m) and c.strip()]
      if len(ok) >= 2 and max(m for _, m in ok) > min(m for _, m in ok):
        hi = max(range(len(ok)), key=lambda j: (ok[j][1], -j))
        lo = min(range(len(ok)), key=lambda j: (ok[j][1], j))
        expect[r["prompt"]] = (ok[hi][0], ok[lo][0])
    assert {p["prompt"]: (p["chosen"], p["rejected"]) for p in pairs} == expect
    # M_{i+1} = DPO from M_i with M_i as the reference, on exactly pairs_i's training rows
    dcfg = json.load(open(os.path.join(wd, f"m{i + 1}", "config_dpo.json")))
    assert dcfg["dpo"]["init_checkpoint"] == dcfg["dpo"]["reference_checkpoint"] == \
        os.path.join(wd, f"m{i}")
    assert dcfg["data"]["train_path"] == os.path.join(wd, f"pairs_{i}", "pairs_train.jsonl")
    summ = json.load(open(os.path.join(wd, f"m{i + 1}", "dpo_summary.json")))
    assert summ["train_pairs"] == len(_read(dcfg["data"]["train_path"]))
  # the candidates of iteration 2 are M2's samples, not M1's
  cands = _read(os.path.join(wd, "candidates_2", "candidates.jsonl"))
  settings = recipe._settings(sr, temperature=sr.candidate_temperature, top_p=sr.candidate_top_p,
                              max_new_tokens=sr.max_new_tokens,
                              offset=recipe.seed_offset("candidates", 2))
  prompts = [r["prompt"] for r in cands][:int(sr.chunk)]
  for m in (2, 1):
    gen = generation.from_checkpoint(rt, os.path.join(wd, f"m{m}"), settings)
    again = [[g.text for g in d] for d in gen.sample(prompts, int(sr.num_candidates), 0)]
    assert (again == [r["candidates"] for r in cands][:len(prompts)]) == (m == 2)


def test_report_and_judge_metrics(smoke_run):
  from scipy import stats
  wd = smoke_run
  text = open(os.path.join(wd, "report.md")).read()
  for needle in ("M2 vs M1", "M3 vs M2", "M3 vs M1", "Mean oracle score", "Pairwise accuracy",
                 "Kendall", "judge_pairwise_accuracy_per_iteration.png",
                 "oracle_mean_score_per_iteration.png", "## Example answers (t0"):
    assert needle in text, needle
  ev = json.load(open(os.path.join(wd, "evaluate", "stage_done.json")))["summary"]
  assert {(r["a"], r["b"], r["decoding"]) for r in ev["rows"]} == {
      (a, b, d) for a, b in (("m2", "m1"), ("m3", "m2"), ("m3", "m1")) for d in ("t0", "t0.7")}
  # judge metrics recomputed from the stored judgements with scipy
  groups = _read(os.path.join(wd, "data", "judge_eval.jsonl"))
  je = json.load(open(os.path.join(wd, "judge_eval", "stage_done.json")))["summary"]["models"]
  stored = [r["result"] for r in _read(os.path.join(wd, "judge_eval", "judgements_m2.jsonl"))[1:]]
  means, _, _ = aift.candidate_scores(stored)
  k, rhos = 0, []
  for g in groups:
    n = len(g["responses"])
    s = [m for m in means[k:k + n] if not math.isnan(m)]
    r = [x for m, x in zip(means[k:k + n], g["reference"]) if not math.isnan(m)]
    k += n
    if len(set(s)) > 1 and len(set(r)) > 1:
      rhos.append(stats.spearmanr(s, r).statistic)
  assert je["m2"]["spearman"] == pytest.approx(np.mean(rhos), abs=1e-12)
  # per-criterion truth of the judge's claims, from the same stored judgements
  items = [(g["prompt"], r) for g in groups for r in g["responses"]]
  want = synthetic.criterion_accuracy(items, stored)
  assert je["m2"]["criteria"]["readable"] == want["readable"]
  if want["readable"]:   # (no readable line: NaNs, and no table)
    assert je["m2"]["criteria"] == want and "Criterion by criterion" in text
  # oracle means per system are the oracle on the stored outputs
  outs = _read(os.path.join(wd, "evaluate", "outputs_m3_t0.jsonl"))[1:]
  prompts = [r["prompt"] for r in _read(os.path.join(wd, "data", "eval_prompts.jsonl"))]
  assert ev["mean_scores"]["oracle"]["t0"]["m3"]["mean"] == pytest.approx(
      float(np.mean(synthetic.oracle_scores(prompts, [r["result"] for r in outs]))), abs=1e-6)


def test_eft_from_the_seed_models_own_judgements(smoke_run, tmp_path):
  """eft_source='model': M0 (here a trained checkpoint, `model.init_from`) judges oracle-ranked
  candidates; the rows M1 would train on are its judgements of the groups whose order agrees,
  with the judge prompt it judged."""
  from pit import generation, stages
  from pit.pipelines import common
  from pit.pipelines import self_rewarding as recipe
  m0 = os.path.join(smoke_run, "m1")
  cfg = _cfg(eft_source="model", max_eft_groups=24, eft_samples=2, eft_temperature=0.7,
             judge_eval_candidates=2)
  cfg.model.init_from = f"checkpoint:{m0}"
  wd = str(tmp_path / "run")
  plan = recipe.build_stages(cfg)
  assert [s.name for s in plan[:3]] == ["data", "eft", "m1"]
  stages.run_stages(wd, plan[:2])
  sr = cfg.self_rewarding
  groups = _read(os.path.join(wd, "data", "eft_groups.jsonl"))
  texts = [r["result"] for r in _read(os.path.join(wd, "eft", "judgements.jsonl"))[1:]]
  items = [(g["prompt"], x) for g in groups for x in g["responses"]]
  assert len(groups) == 24 and len(texts) == len(items)
  rt = common.setup(cfg)
  settings = recipe._settings(sr, temperature=0.7, top_p=sr.judge_top_p,
                              max_new_tokens=sr.judge_max_new_tokens,
                              offset=recipe.seed_offset("eft"))
  gen = generation.from_checkpoint(rt, m0, settings)
  first = [recipe.judge_prompt(p, x, True) for p, x in items][:int(sr.chunk)]
  assert [[g.text for g in d] for d in gen.sample(first, 2, 0)] == texts[:len(first)]
  summary = json.load(open(os.path.join(wd, "eft", "stage_done.json")))["summary"]
  rows = _read(os.path.join(wd, "eft", "eft_train.jsonl"))
  expect = []
  for j, g in enumerate(groups):
    picked = []
    for t in texts[2 * j:2 * j + 2]:
      scored = [(x, judge_prompts.parse_judge_score(x)) for x in t]
      picked.append(next(((x, sc) for x, sc in scored if sc is not None), None))
    if None in picked or not eft.ordering_agrees([sc for _, sc in picked], g["reference"]):
      continue
    expect += [(recipe.judge_prompt(g["prompt"], x, True), eft.trim_judgement(t), sc)
               for x, (t, sc) in zip(g["responses"], picked)]
  assert summary["groups_kept"] * 2 == len(expect) and expect
  assert sorted((r["prompt"], r["response"], r["points"]) for r in rows) == \
      sorted(e for e in expect if e in [(r["prompt"], r["response"], r["points"]) for r in rows])
  assert len(rows) == len(expect) - summary.get("balance", {}).get("dropped", 0)


@pytest.mark.parametrize("variant", ["teacher_reward", "teacher_demo"])
def test_teacher_variants(smoke_run, tmp_path, variant):
  """Teacher reward: the teacher's judgements make the pairs; teacher demonstration: the
  teacher's answers are the chosen responses. The teacher here is another trained model (the
  smoke run's M3)."""
  from pit import main
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  for stage in ("data", "m1"):   # same fingerprints: reused, not retrained
    shutil.copytree(os.path.join(smoke_run, stage), os.path.join(wd, stage))
  teacher = os.path.join(smoke_run, "m3")
  main.run(_cfg(variant=variant, teacher=teacher, iterations=1), wd)
  assert not os.path.exists(os.path.join(wd, "superseded"))
  pairs = _read(os.path.join(wd, "pairs_1", "pairs_train.jsonl"))
  assert pairs
  if variant == "teacher_demo":
    answers = {r["prompt"]: r["answer"] for r in _read(os.path.join(wd, "teacher_1", "answers.jsonl"))}
    cands = {r["prompt"]: r["candidates"][0]
             for r in _read(os.path.join(wd, "candidates_1", "candidates.jsonl"))}
    for p in pairs:
      assert (p["chosen"], p["rejected"]) == (answers[p["prompt"]], cands[p["prompt"]])
  else:
    judged = json.load(open(os.path.join(wd, "judgements_1", "stage_done.json")))["summary"]
    assert judged["judge"] == "teacher"
    mine = _read(os.path.join(wd, "judgements_1", "judgements.jsonl"))
    own = _read(os.path.join(smoke_run, "judgements_1", "judgements.jsonl"))
    assert [r["candidates"] for r in mine] == [r["candidates"] for r in own]
    assert [r["judgements"] for r in mine] != [r["judgements"] for r in own]


def test_dpo_length_follows_the_pairs_and_too_few_pairs_keep_the_model(smoke_run, tmp_path):
  """dpo_epochs sets M2's steps from the iteration's pairs (at most the section's); with fewer
  pairs than min_pairs M2 is M1 (no DPO, an alias later stages follow: prompts_2 runs from
  M1's weights, as m2/ has none of its own)."""
  from pit import stages as stages_lib
  from pit.pipelines import self_rewarding as recipe
  upto = ("data", "m1", "prompts_1", "candidates_1", "judgements_1", "pairs_1")
  n_pairs = len(_read(os.path.join(smoke_run, "pairs_1", "pairs_train.jsonl")))
  assert n_pairs >= 2
  for name, sr in (("epochs", dict(dpo_epochs=1.0)), ("skip", dict(min_pairs=n_pairs + 1))):
    wd = str(tmp_path / name)
    os.makedirs(wd)
    for stage in upto:
      shutil.copytree(os.path.join(smoke_run, stage), os.path.join(wd, stage))
    c = _cfg(**sr)
    keep = upto + ("m2",) + (("prompts_2",) if name == "skip" else ())
    stages_lib.run_stages(wd, [s for s in recipe.build_stages(c) if s.name in keep])
    summary = stages_lib.read_summary(wd, "m2")
    if name == "epochs":
      with open(os.path.join(wd, "m2", "config_dpo.json")) as f:
        steps = json.load(f)["train"]["steps"]
      batch = c.self_rewarding.dpo.train.batch_size
      assert steps == min(c.self_rewarding.dpo.train.steps, math.ceil(n_pairs / batch))
      assert summary["trained"] and summary["steps"] == steps
    else:
      assert summary["trained"] is False and summary["same_model_as"] == "m1"
      assert not os.path.exists(os.path.join(wd, "m2", "checkpoints"))
      assert stages_lib.read_summary(wd, "prompts_2")["generated"] > 0


def test_an_iteration_that_trained_nothing_is_judged_and_decoded_once(smoke_run, tmp_path):
  """M2 = M1 (too few pairs): judge_eval and evaluate reuse M1's judgements and outputs (the
  same model with the same seeds) instead of computing them again."""
  from pit import stages as stages_lib
  from pit.pipelines import self_rewarding as recipe
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  for stage in ("data", "m1", "prompts_1", "candidates_1", "judgements_1", "pairs_1"):
    shutil.copytree(os.path.join(smoke_run, stage), os.path.join(wd, stage))
  c = _cfg(iterations=1, min_pairs=10 ** 6)
  stages_lib.run_stages(wd, recipe.build_stages(c))
  assert stages_lib.read_summary(wd, "m2")["same_model_as"] == "m1"
  models = stages_lib.read_summary(wd, "judge_eval")["models"]
  assert models["m2"].pop("same_model_as") == "m1"
  assert json.dumps(models["m2"], sort_keys=True) == json.dumps(models["m1"], sort_keys=True)
  assert models["m1"]["candidates"] > 0
  judged = os.listdir(os.path.join(wd, "judge_eval"))
  assert [n for n in judged if "_m1" in n] and not [n for n in judged if "_m2" in n]
  ev = os.path.join(wd, "evaluate")
  outs = {n for n in os.listdir(ev) if n.startswith("outputs_")}
  assert any(n.startswith("outputs_m1_") and not n.endswith(".json") for n in outs)
  assert not [n for n in outs if n.startswith("outputs_m2_") and not n.endswith(".json")]
  for dec in [n[len("outputs_m1_"):-len(".json")] for n in outs
              if n.startswith("outputs_m1_") and n.endswith(".json")]:   # AlpacaEval files: both
    with open(os.path.join(ev, f"outputs_m1_{dec}.json")) as f1, \
         open(os.path.join(ev, f"outputs_m2_{dec}.json")) as f2:
      assert [r["output"] for r in json.load(f1)] == [r["output"] for r in json.load(f2)]


def test_killed_inside_an_iteration_resumes_there(smoke_run, tmp_path):
  """SIGKILL while judgements_2 is half done; the same command finishes the run, and what it
  wrote equals the uninterrupted run's."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  for stage in ("data", "m1", "prompts_1", "candidates_1", "judgements_1", "pairs_1", "m2",
                "prompts_2", "candidates_2"):
    shutil.copytree(os.path.join(smoke_run, stage), os.path.join(wd, stage))
  cmd = [sys.executable, "-m", "pit.main",
         f"--config={os.path.join(REPO, 'configs', 'self_rewarding.py')}:synthetic_smoke",
         f"--workdir={wd}", "--config.progress=False"]
  parts = os.path.join(wd, "judgements_2", "judgement_texts.parts")
  # judgements_2 must span chunks for a kill to fall inside it
  sr = _cfg().self_rewarding
  n_items = sum(len(r["candidates"])
                for r in _read(os.path.join(wd, "candidates_2", "candidates.jsonl")))
  n_chunks = -(-n_items // int(sr.chunk))
  assert n_chunks >= 2, f"the smoke's iteration 2 has {n_items} candidates: one chunk"
  log = tmp_path / "killed_run.log"
  with open(log, "w") as err:
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if os.path.isdir(parts) and any(n.endswith(".json") for n in os.listdir(parts)):
        break
      time.sleep(0.02)
    exited = proc.poll()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert os.path.isdir(parts) and any(n.endswith(".json") for n in os.listdir(parts)), (
      f"no judgement chunk written (run exited with {exited}); its log:\n"
      + log.read_text()[-4000:])
  assert not os.path.exists(os.path.join(wd, "judgements_2", "stage_done.json"))
  rerun = subprocess.run(cmd, cwd=str(tmp_path), check=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
  assert any(f"judgement_texts: {k} of {n_chunks} chunks read back from an earlier run"
             in rerun.stderr for k in range(1, n_chunks)), rerun.stderr[-4000:]
  assert not os.path.exists(os.path.join(wd, "superseded"))
  for rel in (("judgements_2", "judgements.jsonl"), ("pairs_2", "pairs_train.jsonl"),
              ("evaluate", "outputs_m3_t0.jsonl")):
    assert _read(os.path.join(wd, *rel)) == _read(os.path.join(smoke_run, *rel)), rel


def test_judge_prompt_shows_a_dialogue_as_lines_not_turns():
  from pit.data.tokenizer import parse_plain_chat
  from pit.pipelines import self_rewarding as recipe
  one = recipe.judge_prompt("\n\nHuman: Why is the sky blue?\n\nAssistant:", " Rayleigh.", False)
  assert "User: Why is the sky blue?\n" in one and "\n\nHuman:" not in one
  multi = recipe.judge_prompt("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me\n\nAssistant:",
                              " Sure.", True)
  assert "User: Human: Hi\nAssistant: Hello!\nHuman: Help me\n" in multi
  for text in (one, multi):   # the chat template sees one user turn, not the dialogue's turns
    assert [r for r, _ in parse_plain_chat(text)] == ["user"]
  # EFT rows are rendered with the prompt the judgements were made with
  groups = [{"prompt": "\n\nHuman: Why?\n\nAssistant:", "responses": [" A.", " B."],
             "reference": [1, 0]}]
  rows, _ = eft.from_judgements(groups, [[["ok\nScore: 4\nextra words"], ["Score: 2"]]],
                                render=lambda p, r: recipe.judge_prompt(p, r, False))
  assert [r["prompt"] for r in rows] == [recipe.judge_prompt(groups[0]["prompt"], x, False)
                                         for x in (" A.", " B.")]
  assert rows[0]["response"] == "ok\nScore: 4"   # cut after the score line


def test_oasst1_seed_data(tmp_path):
  """IFT = first-turn English rank-0 replies, EFT groups ranked by the human ranks, rendered as
  the SFT view renders OASST1; held out by message tree."""
  from pit import stages
  from pit.pipelines import self_rewarding as recipe
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from test_builders import _oasst_trees, _write_jsonl
  trees = _oasst_trees()
  for k in range(20):   # more English trees, so a share can be held out
    t = json.loads(json.dumps(trees[0]).replace('"p1"', f'"q{k}"').replace(
        "What is 2+2?", f"What is {k}+{k}?"))
    t["message_tree_id"] = f"q{k}"
    trees.append(t)
  _write_jsonl(str(tmp_path / "m" / "2023-04-12_oasst_ready.trees.jsonl.gz"), trees, gz=True)
  c = _cfg("oasst1")
  c.data.update(manual_dir=str(tmp_path / "m"), data_dir=str(tmp_path / "d"), eval_fraction=0.2)
  wd = str(tmp_path / "run")
  ctx = stages.StageContext(wd, "data", os.path.join(wd, "data"), ())
  os.makedirs(ctx.dir)
  summary = recipe.data_stage(c).run(ctx)
  ift = _read(os.path.join(ctx.dir, "ift_train.jsonl"))
  ift_eval = _read(os.path.join(ctx.dir, "ift_eval.jsonl"))
  groups = _read(os.path.join(ctx.dir, "eft_groups.jsonl"))
  held = _read(os.path.join(ctx.dir, "judge_eval.jsonl"))
  assert summary["data"]["ift_train"] + summary["data"]["ift_eval"] == 22
  assert len(ift_eval) == len(held) == 4   # int(21 trees * 0.2) held out, all English
  assert not {r["prompt"] for r in ift} & {r["prompt"] for r in ift_eval}
  assert {"prompt": "\n\nHuman: Name a color.\n\nAssistant:", "response": " Blue."} in ift + ift_eval
  g = next(g for g in groups + held if "2+2" in g["prompt"])
  assert g["responses"] == [" It is 4.", " Four.", " It is 5."] and g["reference"] == [0, -1, -2]
  seeds = _read(os.path.join(ctx.dir, "seed_instructions.jsonl"))
  assert {s["instruction"] for s in seeds} == {recipe.self_instruct.PromptStyle(
      "plain_chat").instruction(r["prompt"]) for r in ift}
