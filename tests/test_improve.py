"""pit.improve (PIT iterative improvement, Self-Refine) and pipeline=improve."""
import json
import os
import re

import ml_collections
import numpy as np
import pytest

from pit import improve
from pit.data import judge, synthetic
from pit.pit_format import policy_prompt
from pit.rl.scorers import OracleScorer

PLAIN_RE = re.compile(r"(sort: [^\n]*\n)ref: ([^\n]*)\n", re.S)


def _prompts(n=12, seed=0):
  rng = np.random.default_rng(seed)
  return [synthetic.make_prompt(rng) for _ in range(n)]


def _bubble_step(prompt, response):
  """One improvement step on the sort task: normalise separators, else add a missing
  item, else drop a foreign or repeated token, else swap the first out-of-order
  adjacent pair; a clean sorted answer gets a foreign token for prompts with an odd
  item count (worse) and is returned unchanged otherwise (no gain)."""
  items = synthetic.parse_prompt(prompt)
  toks = re.findall(r"[0-9]+", response)
  if response != " ".join(toks):
    return " ".join(toks)
  missing = [x for x in items if x not in toks]
  if missing:
    return " ".join(toks + missing[:1])
  for i, t in enumerate(toks):
    if t not in items or t in toks[:i]:
      return " ".join(toks[:i] + toks[i + 1:])
  for i in range(len(toks) - 1):
    if int(toks[i]) > int(toks[i + 1]):
      toks[i], toks[i + 1] = toks[i + 1], toks[i]
      return " ".join(toks)
  return response + " 5" if len(items) % 2 else response


class PlainEditor:
  """A deterministic M_PIT for the 'plain' template that records its calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, texts, call):
    self.calls.append((call, len(texts)))
    out = []
    for t in texts:
      m = PLAIN_RE.fullmatch(t)
      assert m, t
      out.append(_bubble_step(m.group(1), m.group(2)))
    return out


class GapOracle:
  """r_gap(x, y, y_ref) = oracle(x, y) - oracle(x, y_ref) + 0.3 (an uncalibrated zero)."""

  def __init__(self):
    self.oracle, self.calls = OracleScorer(), 0

  def __call__(self, prompts, responses, references):
    self.calls += 1
    return (self.oracle(prompts, responses) - self.oracle(prompts, references)).astype(
        np.float64) + 0.3


def _reference_improve(prompts, initial, max_iters, gap, min_gain):
  """Row-by-row PIT loop."""
  n = len(prompts)
  per_iter = [list(initial)] + [[None] * n for _ in range(max_iters)]
  gains = np.full((max_iters, n), np.nan)
  stopped, accepted = np.full(n, max_iters), np.zeros(n, int)
  for i, (x, y) in enumerate(zip(prompts, initial)):
    stop = None
    for t in range(max_iters):
      if stop is None:
        m = PLAIN_RE.fullmatch(policy_prompt(x, y, "plain"))
        y_new = _bubble_step(m.group(1), m.group(2))
        if gap is not None:
          g = float(gap([x], [y_new], [y])[0] - gap([x], [y], [y])[0])
          gains[t, i] = g
          if g <= min_gain:
            stop = t + 1
        if stop is None:
          y, accepted[i] = y_new, accepted[i] + 1
      per_iter[t + 1][i] = y
    stopped[i] = stop if stop is not None else max_iters
  return per_iter, gains, stopped, accepted


def _initial(prompts, seed=1):
  rng = np.random.default_rng(seed)
  return [synthetic.degrade(rng, p, int(rng.integers(0, 4))) for p in prompts]


@pytest.mark.parametrize("min_gain", [0.0, 0.05, -10.0])
def test_batched_loop_equals_row_by_row_reference(min_gain):
  prompts = _prompts(16)
  initial = _initial(prompts)
  editor, gap = PlainEditor(), GapOracle()
  res = improve.iterative_improve(editor, prompts, initial, template="plain", max_iters=5,
                                  gap_scorer=gap, min_gain=min_gain)
  ref, gains, stopped, accepted = _reference_improve(prompts, initial, 5, GapOracle(), min_gain)
  assert res.responses == ref
  np.testing.assert_allclose(res.gains, gains, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(res.stopped_at, stopped)
  np.testing.assert_array_equal(res.accepted, accepted)
  active = [int(np.sum(~np.isnan(g))) for g in gains]
  assert res.active == active
  # one generate call and one scorer call per iteration with rows left, on exactly those rows
  assert editor.calls == [(t, a) for t, a in enumerate(active) if a]
  assert gap.calls == len(editor.calls)
  for i in range(len(prompts)):   # final answer = the last accepted candidate
    assert res.final[i] == ref[accepted[i]][i]
  if min_gain == -10.0:
    assert (res.stopped_at == 5).all() and (res.accepted == 5).all()
  else:
    assert (res.stopped_at < 5).any()


def test_stopping_rule_keeps_previous_answer_and_stops_at_zero_gain():
  p = "sort: 30 10 20 40\n"                # even item count: a sorted answer is returned unchanged
  res = improve.iterative_improve(PlainEditor(), [p, p], ["10 20 40 30", "10 20 30 40"],
                                  template="plain", max_iters=4, gap_scorer=GapOracle())
  # row 0: one swap (gain > 0), then the unchanged candidate has gain exactly 0 -> stop
  assert res.responses == [["10 20 40 30", "10 20 30 40"], ["10 20 30 40", "10 20 30 40"],
                           ["10 20 30 40"] * 2, ["10 20 30 40"] * 2, ["10 20 30 40"] * 2]
  assert res.stopped_at.tolist() == [2, 1] and res.accepted.tolist() == [1, 0]
  assert res.gains[1, 0] == 0.0 and res.gains[0, 1] == 0.0 and res.gains[0, 0] > 0
  assert res.active == [2, 1, 0, 0]
  q = "sort: 30 10 20 50 40\n"             # odd: the candidate is worse and must be rejected
  res = improve.iterative_improve(PlainEditor(), [q], ["10 20 30 40 50"], template="plain",
                                  max_iters=3, gap_scorer=GapOracle())
  assert res.candidates[0] == ["10 20 30 40 50 5"] and res.final == ["10 20 30 40 50"]
  assert res.gains[0, 0] < 0 and res.stopped_at.tolist() == [1]


def test_without_scorer_runs_max_iters_and_zero_iters_is_identity():
  prompts = _prompts(5)
  initial = _initial(prompts)
  editor = PlainEditor()
  res = improve.iterative_improve(editor, prompts, initial, template="plain", max_iters=3)
  ref, _, _, _ = _reference_improve(prompts, initial, 3, None, 0.0)
  assert res.responses == ref and len(editor.calls) == 3 and res.active == [5, 5, 5]
  assert np.isnan(res.gains).all() and (res.stopped_at == 3).all()
  res = improve.iterative_improve(editor, prompts, initial, template="plain", max_iters=0)
  assert res.responses == [initial] and res.final == initial
  with pytest.raises(ValueError, match="2 prompts but 1"):
    improve.iterative_improve(editor, prompts[:2], initial[:1], max_iters=1)


JUDGE_RE = re.compile(r"Judge, additive 0-5\.\nUser: ([^\n]*)\n<response>(.*)</response>\n", re.S)
REFINE_RE = re.compile(r"(sort: [^\n]*\n)answer: ([^\n]*)\nfeedback: .*\nrevised: ", re.S)


class JudgeAndRefine:
  """One 'base model' for Self-Refine on the sort task: the oracle judge's compact
  justification for feedback prompts, one bubble step for refine prompts."""

  def __init__(self):
    self.calls = []

  def __call__(self, texts, call):
    self.calls.append((call, len(texts)))
    out = []
    for t in texts:
      if (m := JUDGE_RE.fullmatch(t)):
        p = m.group(1) + "\n"
        out.append(synthetic.justification(p, m.group(2)))
      else:
        m = REFINE_RE.fullmatch(t)
        assert m, t
        out.append(_bubble_step(m.group(1), m.group(2)))
    return out


def test_self_refine_judge_feedback_history_and_stop():
  prompts = _prompts(10, seed=3)
  initial = _initial(prompts, seed=4)
  model = JudgeAndRefine()
  T = 4
  res = improve.self_refine(model, prompts, initial, feedback_template="judge_compact",
                            refine_template=improve.REFINE_TEMPLATES["plain"], max_iters=T,
                            stop_phrase="")
  for i, (p, y) in enumerate(zip(prompts, initial)):   # row-by-row reference
    stop = None
    for t in range(T):
      if stop is None:
        fb = synthetic.justification(p, y)
        assert res.feedback[t][i] == fb
        assert res.scores[t, i] == judge.parse_judge_score(fb) == synthetic.judge_points(p, y)
        if synthetic.judge_points(p, y) == 5:
          stop = t
        else:
          y = _bubble_step(p, y)
      else:
        assert res.feedback[t][i] is None and np.isnan(res.scores[t, i])
      assert res.responses[t + 1][i] == y
    assert res.stopped_at[i] == (stop if stop is not None else T)
  assert any(s < T for s in res.stopped_at) and res.responses[0] == initial
  # two calls (feedback, refine) per round, refine only for the rows that did not stop
  assert [c for c, _ in model.calls] == sorted(c for c, _ in model.calls)
  fb_sizes = [n for c, n in model.calls if c % 2 == 0]
  assert fb_sizes == [a for a in res.active if a]


def test_self_refine_stop_phrase_custom_templates():
  prompts = ["sort: 20 10 30 40\n", "sort: 10 30 20 40\n"]

  def model(texts, call):
    out = []
    for t in texts:
      if t.startswith("FB|"):
        _, p, y = t.split("|")
        out.append("Looks good: No Changes Needed." if y == synthetic.gold_response(p)
                   else "swap the items")
      else:
        assert t.startswith("RF|") and t.endswith("|swap the items"), t
        p, y = t.split("|")[1:3]
        out.append(_bubble_step(p, y))
    return out

  res = improve.self_refine(model, prompts, ["20 10 30 40", "10 30 20 40"],
                            feedback_template="FB|{prompt}|{response}",
                            refine_template="RF|{prompt}|{response}|{feedback}", max_iters=3,
                            stop_phrase="no changes needed")
  assert res.stopped_at.tolist() == [1, 1]
  assert res.final == ["10 20 30 40"] * 2
  assert res.feedback[0] == ["swap the items", "swap the items"]
  assert res.feedback[1] == ["Looks good: No Changes Needed."] * 2
  assert res.feedback[2] == [None, None] and res.active == [2, 2, 0]
  with pytest.raises(ValueError, match="lacks the field {feedback}"):
    improve.self_refine(model, prompts, ["a", "b"], feedback_template="judge",
                        refine_template="{prompt}{response}", max_iters=1)


def _byte_tokenizer():
  from pit.data.tokenizer import make_tokenizer
  return make_tokenizer(ml_collections.ConfigDict(dict(kind="byte", path="")))


def test_generator_matches_the_sampler_and_is_chunking_invariant_when_greedy():
  from pit import generation
  from pit import sharding as shd
  from pit.params import init_params
  from pit.sampler import Sampler
  from tests.helpers import mesh, tiny_mdef
  tok = _byte_tokenizer()
  mdef = tiny_mdef(vocab_size=384, max_seq_len=128, num_layers=1)
  m = mesh((1, 2, 1))
  params = init_params(mdef, m, shd.DEFAULT_RULES, seed=0)
  sampler = Sampler(mdef, m, shd.DEFAULT_RULES, pad_id=tok.pad_id, eos_id=tok.eos_id,
                    prompt_buckets=(48,))   # one prompt bucket: compiles only for B=2 and B=4
  texts = ["sort: 12 40 33 25\n", "ab", "sort: 90 11 12 13 14\nref: 11 12\n"]
  kw = dict(max_new_tokens=6, top_k=0, top_p=1.0)
  gen = lambda **s: generation.Generator(sampler, params, tok, generation.Settings(**kw, **s))
  sampled = gen(temperature=1.0, seed=5, batch_size=2)
  out = sampled(texts, 3)
  seed0 = 5 + 3 * generation.CALL_STRIDE
  ids = [[tok.bos_id] + tok.encode(t) for t in texts]
  # chunks of the prompts sorted by length ("ab" first), the last padded by repeats
  ref = {}
  for c, rows in enumerate([[1, 0], [2, 2]]):
    r = sampler.generate(params, [ids[i] for i in rows], temperature=1.0, seed=seed0 + c, **kw)
    for j, i in enumerate(rows):
      ref.setdefault(i, tok.decode(r.tokens[j, :r.lengths[j]]))
  assert out == [ref[0], ref[1], ref[2]]
  assert sampled(texts, 3) == out and sampled(texts, 4) != out   # seeds follow the call index
  greedy = [gen(temperature=0.0, batch_size=b)(texts, 0) for b in (2, 4)]
  assert greedy[0] == greedy[1]
  clipped = gen(temperature=0.0, batch_size=4, max_prompt_len=8)(texts, 0)
  r = sampler.generate(params, [[tok.bos_id] + tok.encode(t)[-7:] for t in texts],
                       temperature=0.0, **kw)
  assert clipped == [tok.decode(r.tokens[i, :r.lengths[i]]) for i in range(3)]


def _scalar_checkpoint(workdir, model_cfg):
  """A random scalar-head model saved as a workdir (config json + checkpoints/)."""
  from pit import sharding as shd
  from pit.checkpoint import Checkpointer
  from pit.model import ModelConfig
  from pit.params import init_params, model_def
  from tests.helpers import mesh
  cfg = dict(model_cfg, head="scalar")
  mdef = model_def(ModelConfig.from_config(cfg))
  params = init_params(mdef, mesh((1, 1, 1)), shd.DEFAULT_RULES, seed=1)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config_gap_reward.json"), "w") as f:
    json.dump({"model": cfg}, f)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1, async_save=False)
  ckpt.save(0, {"params": params}, {}, force=True)
  ckpt.close()


def test_improve_pipeline_end_to_end(tmp_path):
  from pit import main
  from configs import improve as improve_cfg
  from configs import synthetic as synthetic_cfg
  model = dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, d_ff=64, max_seq_len=128)
  sft = synthetic_cfg.get_config("sft")
  sft.progress = False
  sft.model.update(model)
  sft.train.update(steps=2, batch_size=8, log_every=1, eval_every=0)
  sft.checkpoint.update(every=2, async_save=False)
  sft_dir = str(tmp_path / "sft")
  main.run(sft, sft_dir)
  rm_dir = str(tmp_path / "gap_rm")
  _scalar_checkpoint(rm_dir, sft.model.to_dict())

  def improve_run(name, **kw):
    c = improve_cfg.get_config("synthetic")
    c.progress = False
    c.model.update(model)
    c.improve.update(**{**dict(max_prompts=6, max_iters=2, max_new_tokens=8, batch_size=8,
                               prompt_buckets=(96,)), **kw})   # one prompt bucket: few compiles
    wd = tmp_path / name
    summary = main.run(c, str(wd))
    return wd, summary

  wd, summary = improve_run("pit", initial_checkpoint_dir=sft_dir, pit_checkpoint_dir=sft_dir,
                            gap_rm_dir=rm_dir, min_gain=-1e9)
  iters = [[json.loads(l) for l in open(wd / "improve" / f"iter_{t:02d}.jsonl")] for t in range(3)]
  assert [len(r) for r in iters] == [6, 6, 6]
  prompts = synthetic.eval_prompts(200, 0)[:6]
  assert [r["prompt"] for r in iters[0]] == prompts
  for t in (1, 2):   # min_gain=-1e9: every candidate is kept, gains are finite
    assert all(r["active"] and r["response"] == r["candidate"] and np.isfinite(r["gain"])
               for r in iters[t])
  assert summary["active_per_iteration"] == [6, 6]
  final = json.load(open(wd / "improve_outputs.json"))
  assert [r["output"] for r in final] == [r["response"] for r in iters[2]]
  assert final[0]["generator"] == "pit_iter2" and final[0]["instruction"] == prompts[0]
  saved = json.load(open(wd / "improve_summary.json"))
  expect = [float(np.mean(synthetic.oracle_scores(prompts, [r["response"] for r in it])))
            for it in iters]
  np.testing.assert_allclose(saved["oracle_per_iteration"], expect, rtol=1e-6)
  assert os.path.getsize(wd / "improve_oracle.png") > 0

  # Self-Refine from the AlpacaEval file just written; the judge feedback on a random model
  # never parses to 5, so every row runs both rounds.
  wd2, summary2 = improve_run("refine", method="self_refine", base_checkpoint_dir=sft_dir,
                              input_path=str(wd / "improve_outputs.json"), max_prompts=3)
  rows = [json.loads(l) for l in open(wd2 / "improve" / "iter_00.jsonl")]
  assert [r["response"] for r in rows] == [r["output"] for r in final[:3]]
  assert all(isinstance(r["feedback"], str) for r in rows)
  assert summary2["method"] == "self_refine" and len(summary2["oracle_per_iteration"]) == 3
  assert json.load(open(wd2 / "improve_outputs.json"))[0]["generator"] == "self_refine_iter2"


@pytest.mark.parametrize("kw,err,needle", [
    (dict(method="nope"), ValueError, "improve.method: 'nope'"),
    (dict(), ValueError, "improve.input_path or improve.initial_checkpoint_dir"),
    (dict(input_path="/no/such.jsonl"), FileNotFoundError, "/no/such.jsonl"),
    (dict(initial_checkpoint_dir="/no/dir"), FileNotFoundError, "initial_checkpoint_dir"),
])
def test_improve_pipeline_bad_config(tmp_path, kw, err, needle):
  from pit import main
  from configs import improve as improve_cfg
  c = improve_cfg.get_config("synthetic")
  c.improve.update(max_prompts=2, **kw)
  with pytest.raises(err, match=re.escape(needle)):
    main.run(c, str(tmp_path / "w"))


def test_improve_reads_prompts_and_responses_from_jsonl(tmp_path):
  """A generations.jsonl (or any {"prompt","response"} JSONL) as improve.input_path gives
  every row's prompt and its response (the reader is consumed once for both)."""
  import ml_collections
  from pit.pipelines import improve as improve_pipeline
  rows = [{"prompt": f"sort: {10 + i} 50 60 70\n", "response": f"{10 + i} 50 60", "sample": 0}
          for i in range(5)]
  path = tmp_path / "generations.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  for max_prompts, n in ((0, 5), (3, 3)):
    c = ml_collections.ConfigDict({"improve": {"input_path": str(path), "max_prompts": max_prompts},
                                   "data": {}})
    prompts, responses = improve_pipeline.load_inputs(c, None)
    assert prompts == [r["prompt"] for r in rows][:n]
    assert responses == [r["response"] for r in rows][:n]
