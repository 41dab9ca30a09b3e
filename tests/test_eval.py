"""pit.eval: both-orders win rate, reward-model agreement metrics, AlpacaEval files,
report tables/plots, and the LLM judge (parity with the HF PyTorch model)."""
import gzip
import json
import math
import os

import numpy as np
import pytest

from pit.data.records import DataError
from pit.eval import alpaca_eval, report, rm_agreement, winrate


# ------------------------------------------------------------------ win rate
class TableJudge:
  """A judge with a fixed, arbitrary verdict per (prompt, first, second); records its calls."""

  def __init__(self, seed, values=(-1, 0, 1)):
    self.rng, self.values, self.table, self.calls = np.random.default_rng(seed), values, {}, 0

  def verdict(self, p, a, b):
    if (p, a, b) not in self.table:
      self.table[(p, a, b)] = int(self.rng.choice(self.values))
    return self.table[(p, a, b)]

  def __call__(self, prompts, first, second):
    self.calls += 1
    return np.array([self.verdict(p, a, b) for p, a, b in zip(prompts, first, second)])


def brute_force_winrate(judge, prompts, ra, rb):
  w = l = t = 0
  for p, a, b in zip(prompts, ra, rb):
    v1 = judge.verdict(p, a, b)    # A first: +1 means A better
    v2 = judge.verdict(p, b, a)    # B first: +1 means B better
    if v1 == 1 and v2 == -1:
      w += 1
    elif v1 == -1 and v2 == 1:
      l += 1
    else:
      t += 1
  return w, l, t


def test_win_rate_matches_brute_force_both_orders():
  n = 200
  prompts = [f"p{i}" for i in range(n)]
  ra, rb = [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]
  judge = TableJudge(0)
  res = winrate.win_rate(prompts, ra, rb, judge, name_a="PIT", name_b="Original")
  ref = TableJudge(0)
  ref.table = dict(judge.table)
  w, l, t = brute_force_winrate(ref, prompts, ra, rb)
  assert judge.calls == 2 and len(judge.table) == 2 * n  # one call per order
  assert (res.wins, res.losses, res.ties, res.n) == (w, l, t, n)
  assert 0 < w < n and 0 < l < n and 0 < t < n
  assert res.win == pytest.approx(100 * w / n) and res.lose == pytest.approx(100 * l / n)
  assert res.tie == pytest.approx(100 * t / n)
  assert res.delta == pytest.approx(100 * (w - l) / n)
  agree = sum(judge.table[(p, a, b)] == -judge.table[(p, b, a)] for p, a, b in zip(prompts, ra, rb))
  assert res.consistency == pytest.approx(100 * agree / n)
  r = res.records[3]
  assert r["a_first"] == judge.table[("p3", "a3", "b3")] and r["b_first"] == judge.table[("p3", "b3", "a3")]
  assert r["outcome"] == {(1, -1): "win", (-1, 1): "lose"}.get((r["a_first"], r["b_first"]), "tie")
  assert r["prompt"] == "p3" and r["response_a"] == "a3" and r["response_b"] == "b3"


def test_position_biased_judge_gives_only_ties():
  always_first = lambda p, a, b: np.ones(len(p), int)
  res = winrate.win_rate(["x", "y"], ["a", "b"], ["c", "d"], always_first)
  assert (res.wins, res.losses, res.ties, res.delta, res.consistency) == (0, 0, 2, 0.0, 0.0)


def test_scorer_judge_both_orders_and_tolerance():
  rng = np.random.default_rng(1)
  n = 50
  prompts = [f"q{i}" for i in range(n)]
  ra, rb = [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]
  refs = [f"ref{i}" for i in range(n)]
  score = {s: float(rng.integers(0, 4)) for s in ra + rb}
  seen = []

  def oracle(prompts_, responses, references):
    seen.append(list(references))
    return np.array([score[r] for r in responses])

  res = winrate.win_rate(prompts, ra, rb, winrate.ScorerJudge(oracle, references=refs))
  diff = np.array([score[a] - score[b] for a, b in zip(ra, rb)])
  assert (res.wins, res.losses, res.ties) == (int(np.sum(diff > 0)), int(np.sum(diff < 0)),
                                              int(np.sum(diff == 0)))
  assert seen[0] == seen[1] == refs * 2  # references follow each prompt in both orders
  res = winrate.win_rate(prompts, ra, rb, winrate.ScorerJudge(oracle, references=refs, tol=1.0))
  assert (res.wins, res.losses) == (int(np.sum(diff > 1)), int(np.sum(diff < -1)))
  nan_judge = winrate.ScorerJudge(lambda p, r, x: np.full(len(r), np.nan))
  assert winrate.win_rate(prompts, ra, rb, nan_judge).ties == n


def test_judge_output_is_validated():
  with pytest.raises(ValueError, match="must be -1, 0 or 1"):
    winrate.win_rate(["x"], ["a"], ["b"], lambda p, a, b: np.array([0.7]))
  with pytest.raises(ValueError, match=r"judge \(A first\) returned shape"):
    winrate.win_rate(["x"], ["a"], ["b"], lambda p, a, b: np.array([1, 1]))
  with pytest.raises(ValueError, match="2 responses of B"):
    winrate.win_rate(["x"], ["a"], ["b", "c"], lambda p, a, b: np.zeros(len(p)))


# ------------------------------------------------------------------ reward-model agreement
def random_groups(seed, n=300):
  rng = np.random.default_rng(seed)
  model, ref = [], []
  for _ in range(n):
    k = int(rng.integers(1, 6))
    ranks = rng.permutation(k).astype(float)
    if k > 2 and rng.random() < 0.2:
      ranks[0] = ranks[1]  # a tied reference rank now and then
    ref.append(rm_agreement.reference_from_ranks(ranks))
    model.append(rng.integers(0, 6, k).astype(float))  # 0-5 judge scores: many ties
  return model, ref


def brute_force_agreement(model, ref, best=5.0, tie_credit=0.0):
  credit = pairs = exact = prompts = perfect = perfect_best = 0
  sgn = lambda x: int(x > 0) - int(x < 0)
  for s, r in zip(model, ref):
    s, r = [float(x) for x in s], [float(x) for x in r]
    k = len(s)
    if k < 2:
      continue
    prompts += 1
    all_agree = True
    for i in range(k):
      for j in range(i + 1, k):
        a, b = sgn(s[i] - s[j]), sgn(r[i] - r[j])
        all_agree &= a == b
        if b != 0:
          pairs += 1
          credit += 1.0 if a == b else (tie_credit if a == 0 else 0.0)
    exact += all_agree
    for i in range(k):
      if s[i] >= best:
        perfect += 1
        perfect_best += r[i] == max(r)
  return 100 * credit / pairs, 100 * perfect_best / perfect, 100 * exact / prompts


def test_agreement_matches_brute_force_and_scipy():
  from scipy import stats
  model, ref = random_groups(0)
  for tie_credit in (0.0, 0.5):
    res = rm_agreement.agreement(model, ref, tie_credit=tie_credit)
    acc, best5, exact = brute_force_agreement(model, ref, tie_credit=tie_credit)
    assert res.pairwise_accuracy == pytest.approx(acc, abs=1e-12)
    assert res.best5 == pytest.approx(best5, abs=1e-12)
    assert res.exact_match == pytest.approx(exact, abs=1e-12)
  rhos, taus = [], []
  with np.errstate(all="ignore"), _quiet():
    for s, r in zip(model, ref):
      if len(s) < 2:
        continue
      rhos.append(stats.spearmanr(s, r).statistic)
      taus.append(stats.kendalltau(s, r, variant="b").statistic)
  assert res.spearman == pytest.approx(np.nanmean(rhos), abs=1e-12)
  assert res.kendall_tau == pytest.approx(np.nanmean(taus), abs=1e-12)
  assert res.spearman_prompts == int(np.sum(np.isfinite(rhos))) < len(rhos)  # constant groups skipped
  assert res.skipped_groups == sum(len(s) < 2 for s in model) > 0
  assert 0 < res.num_model_ties < res.num_pairs


class _quiet:
  def __enter__(self):
    import warnings
    self._w = warnings.catch_warnings()
    self._w.__enter__()
    warnings.simplefilter("ignore")

  def __exit__(self, *a):
    self._w.__exit__(*a)


def test_agreement_hand_cases():
  perfect = rm_agreement.agreement([[5, 3, 1]], [[2, 1, 0]])
  assert (perfect.pairwise_accuracy, perfect.exact_match, perfect.best5) == (100.0, 100.0, 100.0)
  assert perfect.spearman == pytest.approx(1.0) and perfect.kendall_tau == pytest.approx(1.0)
  reverse = rm_agreement.agreement([[1, 3, 5]], [[2, 1, 0]])
  assert (reverse.pairwise_accuracy, reverse.exact_match, reverse.best5) == (0.0, 0.0, 0.0)
  assert reverse.spearman == pytest.approx(-1.0) and reverse.kendall_tau == pytest.approx(-1.0)
  # The model ties the top two: 2 of 3 pairs right, no exact match; both 5s count, one is best.
  tie = rm_agreement.agreement([[5, 5, 1]], [[2, 1, 0]])
  assert tie.pairwise_accuracy == pytest.approx(200 / 3) and tie.exact_match == 0.0
  assert tie.best5 == 50.0 and tie.num_model_ties == 1
  assert math.isnan(rm_agreement.agreement([[4, 3]], [[1, 0]]).best5)  # no perfect score given
  # One swapped pair of four: rho = 1 - 6 * 2 / (4 * 15) = 0.8, tau = (5 - 1) / 6 (by hand).
  one_swap = rm_agreement.agreement([[1, 2, 3, 4]], [[1, 3, 2, 4]])
  assert one_swap.spearman == pytest.approx(0.8) and one_swap.kendall_tau == pytest.approx(4 / 6)
  assert one_swap.pairwise_accuracy == pytest.approx(500 / 6)
  with pytest.raises(ValueError, match="group 1"):
    rm_agreement.agreement([[1, 2], [1, 2, 3]], [[0, 1], [0, 1]])
  with pytest.raises(ValueError, match="finite"):
    rm_agreement.agreement([[1, np.nan]], [[0, 1]])


# ------------------------------------------------------------------ AlpacaEval files
def test_alpaca_eval_roundtrip_and_align(tmp_path):
  for name in ("out.json", "out.json.gz"):
    path = str(tmp_path / name)
    n = alpaca_eval.write_outputs(path, ["Say hi", "Count"], ["hi", "1 2 3"], "pit_m1",
                                  datasets=["helpful_base", "oasst"])
    assert n == 2
    raw = gzip.open(path, "rt").read() if name.endswith(".gz") else open(path).read()
    assert json.loads(raw)[1] == {"instruction": "Count", "output": "1 2 3", "generator": "pit_m1",
                                  "dataset": "oasst"}
    recs = alpaca_eval.read_outputs(path)
    assert [r.output for r in recs] == ["hi", "1 2 3"] and recs[0].generator == "pit_m1"
  other = [alpaca_eval.AlpacaRecord("Count", "one", "m0", ""), alpaca_eval.AlpacaRecord("x", "y", "m0", "")]
  assert alpaca_eval.align(recs, other) == (["Count"], ["1 2 3"], ["one"])
  with pytest.raises(DataError, match=r"a: record \[2\] repeats the instruction of record \[0\]"):
    alpaca_eval.align(other + [other[0]], recs)


@pytest.mark.parametrize("content,match", [
    ('{"instruction": "x"}', "expected a JSON list"),
    ('[{"instruction": "x", "output": "y", "generator": "g"}, 3]', r"record \[1\]: expected a JSON object"),
    ('[{"instruction": "x", "generator": "g"}]', r"record \[0\]: field 'output' is missing"),
    ('[{"instruction": "x", "output": 5, "generator": "g"}]', r"record \[0\]: field 'output' must be a string"),
    ('[{"instruction": " ", "output": "y", "generator": "g"}]', r"record \[0\]: field 'instruction' is empty"),
    ('[{"instruction": "x", "output": "y"', "malformed JSON"),
])
def test_alpaca_eval_bad_input_names_file_index_field(tmp_path, content, match):
  path = tmp_path / "bad.json"
  path.write_text(content)
  with pytest.raises(DataError, match=match) as e:
    alpaca_eval.read_outputs(str(path))
  assert str(path) in str(e.value)


def test_alpaca_eval_bad_gzip(tmp_path):
  path = tmp_path / "bad.json.gz"
  path.write_bytes(b"not gzip at all")
  with pytest.raises(DataError, match="bad.json.gz: file is truncated or corrupt"):
    alpaca_eval.read_outputs(str(path))


def test_alpaca_eval_reads_shared_reference_outputs(shared_dir):
  d = os.path.join(shared_dir, "data", "alpaca_eval")
  gpt4 = alpaca_eval.read_outputs(os.path.join(d, "gpt4_1106_preview_model_outputs.json.gz"))
  dav = alpaca_eval.read_outputs(os.path.join(d, "text_davinci_003_model_outputs.json.gz"))
  assert len(gpt4) == len(dav) == 805
  assert {r.generator for r in gpt4} == {"gpt4_1106_preview"}
  instructions, a, b = alpaca_eval.align(gpt4, dav)
  assert len(instructions) == 805 and a[0] != b[0]
  # A length oracle through the both-orders protocol: every decided prompt follows length.
  length = winrate.ScorerJudge(lambda p, r, x: np.array([len(t) for t in r], float))
  res = winrate.win_rate(instructions, a, b, length, name_a="gpt4_1106_preview", name_b="text_davinci_003")
  longer = sum(len(x) > len(y) for x, y in zip(a, b))
  assert res.wins == longer and res.win > 80.0


# ------------------------------------------------------------------ report
def _result(w, l, t, a="PIT", b="Original"):
  outcome = np.array([1] * w + [-1] * l + [0] * t)
  return winrate.summarize(outcome, outcome, -outcome, name_a=a, name_b=b)


def test_winrate_table_and_plots(tmp_path):
  rows = [("Anthropic/HH-RLHF", {"GPT-4": _result(71, 17, 40), "RM": _result(50, 25, 25)}),
          ("Synthetic", {"GPT-4": _result(1, 2, 1, "PIT", "Self-Refine")})]
  md = report.winrate_table(rows)
  lines = md.strip().split("\n")
  assert lines[0] == "| Dataset | Comparison | GPT-4: win / lose / Δ (%) | RM: win / lose / Δ (%) | n |"
  assert lines[2] == "| Anthropic/HH-RLHF | PIT vs Original | 55.47/13.28/42.19 | 50.00/25.00/25.00 | 100/128 |"
  assert lines[3] == "| Synthetic | PIT vs Self-Refine | 25.00/50.00/-25.00 | - | 4 |"
  with pytest.raises(ValueError, match="mixes comparisons"):
    report.winrate_table([("x", {"a": _result(1, 0, 0), "b": _result(1, 0, 0, "M2")})])
  agree = {"M1": rm_agreement.agreement([[5, 3, 1]], [[2, 1, 0]])}
  assert "| Kendall τ corr. | 1.000 |" in report.agreement_table(agree)
  path = report.write_report(str(tmp_path / "rep"), title="PIT run", table_md=md,
                             metrics={"reward gap": {"train": ([0, 1, 2], [0.1, 0.5, np.nan]),
                                                     "eval": ([0, 2], [0.2, 0.3])}})
  text = open(path).read()
  assert text.startswith("# PIT run") and "![reward gap](reward_gap.png)" in text
  png = open(tmp_path / "rep" / "reward_gap.png", "rb").read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


# ------------------------------------------------------------------ LLM judge (HF parity)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pit.data import judge as judge_prompts  # noqa: E402
from pit.eval import llm_judge  # noqa: E402

QUESTIONS = ["How do I boil an egg ?", "Name a red fruit .", "What is two plus two ?",
             "Say hello politely .", "Give one colour .", "Why is the sky blue ?"]
GOOD = ["Put the egg in boiling water for nine minutes .", "An apple is red .", "Two plus two is four .",
        "Hello , nice to meet you .", "Blue .", "Air scatters blue light more ."]
BAD = ["I do not know .", "Water .", "Five .", "Go away .", "Maybe .", "Because it is ."]
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]


def build_judge_dir(path, bigram=False):
  """Tiny Llama + WordLevel tokenizer saved as a HF directory (safetensors + tokenizer.json)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  corpus = " ".join([llm_judge.PAIRWISE_TEMPLATE, judge_prompts.JUDGE_PROMPT_COMPACT, "Human: Assistant: A B",
                     "Score: 0 1 2 3 4 5"] + QUESTIONS + GOOD + BAD)
  words = sorted(set(corpus.split()))
  vocab = {w: i for i, w in enumerate(SPECIALS + words)}
  tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                              bos_token="<s>", eos_token="</s>")
  fast.save_pretrained(path)
  config = transformers.LlamaConfig(
      vocab_size=len(vocab), hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
      intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128, rms_norm_eps=1e-5,
      tie_word_embeddings=False, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
      pad_token_id=vocab["<pad>"], attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).float().eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    if bigram:  # blocks add nothing; next token = f(current token): "Assistant:" -> "Score:" -> "4" -> eos
      for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
      model.model.norm.weight.fill_(1.0)
      emb, head = model.model.embed_tokens.weight, model.lm_head.weight
      emb[:, :3] = 0.0
      head[:, :3] = 0.0
      for k, (cur, nxt) in enumerate([("Assistant:", "Score:"), ("Score:", "4"), ("4", "</s>")]):
        emb[vocab[cur]] = 0.0
        emb[vocab[cur], k] = 1.0
        head[vocab[nxt], k] = 20.0
  model.save_pretrained(path, safe_serialization=True)
  return model, fast


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("judge")
  model, fast = build_judge_dir(path)
  return str(path), model, fast


def plain_chat(text):  # the plain HH template, written out independently of pit.data.tokenizer
  return "\n\nHuman: " + text + "\n\nAssistant:"


def hf_choice_logprobs(model, fast, question, first, second):
  text = plain_chat(llm_judge.PAIRWISE_TEMPLATE.format(instruction=question, first=first, second=second))
  base = fast.encode(text)   # as HF tokenizes a prompt (this tokenizer adds no bos itself)
  out = []
  for c in (" A", " B"):
    ids = fast.encode(text + c)
    assert ids[:-1] == base  # one-token choices here
    with torch.no_grad():
      logits = model(input_ids=torch.tensor([ids])).logits[0, -2].double()
    out.append(float(torch.log_softmax(logits, -1)[ids[-1]]))
  return np.array(out)


def test_pairwise_llm_judge_matches_hf_logits_both_orders(judge_dir):
  path, model, fast = judge_dir
  judge = llm_judge.LMJudge.from_hf(path, batch_size=8)
  lp = judge.choice_logprobs(QUESTIONS, GOOD, BAD)
  ref_ab = np.stack([hf_choice_logprobs(model, fast, *x) for x in zip(QUESTIONS, GOOD, BAD)])
  ref_ba = np.stack([hf_choice_logprobs(model, fast, *x) for x in zip(QUESTIONS, BAD, GOOD)])
  np.testing.assert_allclose(lp, ref_ab, atol=1e-4, rtol=0)
  diff_ab, diff_ba = ref_ab[:, 0] - ref_ab[:, 1], ref_ba[:, 0] - ref_ba[:, 1]
  assert np.all(np.abs(np.concatenate([diff_ab, diff_ba])) > 1e-3)  # verdicts are not float noise
  assert np.std(ref_ab) > 0.05  # contexts change the answer distribution
  np.testing.assert_array_equal(judge.pairwise(QUESTIONS, GOOD, BAD), np.sign(diff_ab))
  np.testing.assert_allclose(judge.prob_first(QUESTIONS, GOOD, BAD), 1 / (1 + np.exp(-diff_ab)), atol=1e-4)
  # (A random model mostly has a position bias; the protocol turns that into ties.)
  res = winrate.win_rate(QUESTIONS, GOOD, BAD, judge, name_a="good", name_b="bad")
  outcome = np.where((np.sign(diff_ab) == -np.sign(diff_ba)), np.sign(diff_ab), 0)
  assert (res.wins, res.losses, res.ties) == (int(np.sum(outcome > 0)), int(np.sum(outcome < 0)),
                                              int(np.sum(outcome == 0)))
  assert [r["b_first"] for r in res.records] == list(np.sign(diff_ba).astype(int))
  judge.tie_margin = 1e3
  assert not np.any(judge.pairwise(QUESTIONS, GOOD, BAD))


def test_pointwise_llm_judge_generates_greedily_like_hf(judge_dir, tmp_path):
  path, model, fast = judge_dir
  judge = llm_judge.LMJudge.from_hf(path, batch_size=8, max_new_tokens=5, compact=True)
  texts = judge.judge_texts(QUESTIONS[:3], GOOD[:3])
  for q, r, got in zip(QUESTIONS, GOOD, texts):
    prompt = plain_chat(judge_prompts.render_judge_prompt(q, r, compact=True))
    ids = fast.encode(prompt)
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, num_beams=1,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    new = out[0, len(ids):].tolist()
    new = new[:new.index(fast.eos_token_id)] if fast.eos_token_id in new else new
    assert got == fast.decode(new, skip_special_tokens=True)
  assert all(t.strip() for t in texts)
  # A "bigram" model that always answers "Score: 4": the parsed score reaches the Scorer.
  build_judge_dir(tmp_path / "bigram", bigram=True)
  judge = llm_judge.LMJudge.from_hf(str(tmp_path / "bigram"), batch_size=8, max_new_tokens=6,
                                    compact=True)
  assert judge.judge_texts(QUESTIONS[:2], BAD[:2]) == ["Score: 4", "Score: 4"]
  np.testing.assert_array_equal(judge.pointwise(QUESTIONS[:2], BAD[:2]), [4.0, 4.0])
  res = winrate.win_rate(QUESTIONS[:2], GOOD[:2], BAD[:2], winrate.ScorerJudge(judge.pointwise))
  assert res.ties == 2  # equal scores tie in both orders


def test_llm_judge_rejects_choices_that_merge_with_the_prompt(judge_dir):
  judge = llm_judge.LMJudge.from_hf(judge_dir[0], batch_size=8, choices=("A", "B"))
  with pytest.raises(ValueError, match="does not tokenize as a continuation"):
    judge.choice_logprobs(QUESTIONS[:1], GOOD[:1], BAD[:1])


def test_llm_judge_batches_and_pads_exactly(judge_dir):
  """A judge built directly (as for a pit-trained model): batched, right-padded, bucketed choice
  log-probs over several chunks equal one plain forward per sequence."""
  import jax
  from pit import hf_convert
  from pit import sharding as shd
  from pit.data.tokenizer import HFTokenizer
  from pit.losses import token_logprobs
  from pit.params import model_def
  cfg, params_np = hf_convert.load_hf_checkpoint(judge_dir[0])
  mdef, mesh = model_def(cfg), shd.make_mesh((4, 1, 2))
  params = hf_convert.shard_params(params_np, mdef, mesh, shd.DEFAULT_RULES)
  tok = HFTokenizer(judge_dir[0])
  judge = llm_judge.LMJudge(mdef, params, tok, mesh, chat=False, batch_size=3, choices=(" A B", " B"),
                            length_buckets=(44, 52, 128))
  assert judge.batch_size == 4  # rounded up to the data-parallel size
  qs = [q + (" " + q) * (i % 3) for i, q in enumerate(QUESTIONS)]  # lengths across buckets
  lp = judge.choice_logprobs(qs, GOOD, BAD)
  # Reference: one unmasked forward of all sequences right-padded with junk tokens (causality
  # makes the padding irrelevant to earlier positions; no mask, no buckets, no chunks).
  seqs, starts = [], []
  for q, a, b in zip(qs, GOOD, BAD):
    text = llm_judge.PAIRWISE_TEMPLATE.format(instruction=q, first=a, second=b)
    for choice in (" A B", " B"):
      seqs.append(tok.sequence_prefix + tok.encode(text + choice))
      starts.append(len(tok.sequence_prefix) + len(tok.encode(text)))
  L = max(map(len, seqs))
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (len(seqs), L)).astype(np.int32)
  for i, t in enumerate(seqs):
    ids[i, :len(t)] = t
  logp = np.asarray(token_logprobs(jax.jit(lambda p, t: mdef.merge(p)(t)[0])(params, ids[:, :-1]),
                                   ids[:, 1:]), np.float64)
  ref = np.array([logp[i, s - 1:len(t) - 1].sum() for i, (t, s) in enumerate(zip(seqs, starts))])
  np.testing.assert_allclose(lp.reshape(-1), ref, atol=1e-4, rtol=0)
  assert len(judge._forward) >= 2
