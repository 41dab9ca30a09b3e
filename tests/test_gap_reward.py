"""PIT's gap reward model r_gap(x, y, y_ref): the four-ordering loss vs a float64
numpy reference, gap batching (the 4 rows decode back to gap_input strings),
the train step on a 2x4 mesh vs one device, a short training on synthetic
pairs, the pipeline from pit.main, and the PPO scorer."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pit import losses, optim, pit_format
from pit import sharding as shd
from pit import train_step as ts
from pit.data import batching, gap_batching, synthetic
from pit.data.pairs import PreferencePair
from pit.data.tokenizer import ByteTokenizer
from pit.params import init_params
from pit.rl import gap_scorer
from tests.helpers import mesh, optim_cfg, tiny_mdef

TOK = ByteTokenizer()
V = 260


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _np_gap_loss(wl, ww, ll, lw, tie, center):
  """The published ordering r_wl >= r_ww ~ r_ll >= r_lw as pairwise logistic terms."""
  order = -(_log_sigmoid(wl - ww) + _log_sigmoid(wl - ll) + _log_sigmoid(ww - lw)
            + _log_sigmoid(ll - lw))
  return order + tie * (ww - ll) ** 2 + center * (ww ** 2 + ll ** 2) / 2


class _Cfg:
  def __init__(self, **d):
    self.__dict__.update(d)


DATA = _Cfg(prompt_format="Q: {prompt}\n", max_len=128, max_response_len=20)


def _pairs(n=6, seed=0):
  rng = np.random.default_rng(seed)
  word = lambda lo, hi: "".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(lo, hi)))
  return [PreferencePair(word(3, 10), word(1, 12), word(1, 12), float(rng.normal()))
          for _ in range(n)]


def _model(seed=0):
  mdef = tiny_mdef(vocab_size=V, head="scalar", max_seq_len=128)
  return mdef, init_params(mdef, mesh((1, 1, 1)), shd.DEFAULT_RULES, seed)


# ------------------------------------------------------------------ batching

@pytest.mark.parametrize("tmpl", ["plain", "chat"])
def test_gap_batches_hold_the_four_gap_inputs(tmpl):
  pairs = _pairs(5, seed=1)
  exs = gap_batching.tokenize_gap_pairs(pairs, TOK, DATA, tmpl)
  b = gap_batching.collate_gap(exs, 128, TOK.pad_id, [1, 1, 1, 1, 0])
  assert b["inputs"].shape == (5, 4, 128) and b["weight"].tolist() == [1, 1, 1, 1, 0]
  tokens, mask = jax.device_get(losses.full_sequences(
      losses.flatten_pairs(b["inputs"]), losses.flatten_pairs(b["targets"]),
      losses.flatten_pairs(b["mask"]), TOK.pad_id))
  for i, p in enumerate(pairs):
    x = DATA.prompt_format.format(prompt=p.prompt)
    want = [pit_format.gap_input(x, p.chosen, p.rejected, tmpl),
            pit_format.gap_input(x, p.chosen, p.chosen, tmpl),
            pit_format.gap_input(x, p.rejected, p.rejected, tmpl),
            pit_format.gap_input(x, p.rejected, p.chosen, tmpl)]
    for k in range(4):
      row = tokens[4 * i + k][mask[4 * i + k]]
      assert row[0] == TOK.bos_id and row[-1] == TOK.eos_id
      assert TOK.decode(row[1:]) == want[k], (i, gap_batching.GAP_ROWS[k])
      resp = [p.chosen, p.chosen, p.rejected, p.rejected][k]
      # loss mask (unused by r_gap, kept for the shared format) marks response + eos
      assert b["loss_mask"][i, k].sum() == len(resp) + 1


def test_gap_examples_use_the_sft_truncation_policy():
  p = PreferencePair("x" * 20, "y" * 30, "z" * 25)
  stats = batching.TruncationStats()
  ex = gap_batching.make_gap_example(p, TOK, template="plain", prompt_format="{prompt}",
                                     max_len=40, max_response_len=12, stats=stats)
  for (prompt, resp), e in zip(gap_batching.gap_texts(p, "plain"), ex.rows):
    ref = batching.make_example([TOK.bos_id] + TOK.encode(prompt), TOK.encode(resp),
                                eos_id=TOK.eos_id, max_len=40, max_response_len=12)
    np.testing.assert_array_equal(e.tokens, ref.tokens)
    np.testing.assert_array_equal(e.target_mask, ref.target_mask)
    assert len(e.tokens) == 40
  assert stats.prompts_cut == 4 and stats.responses_cut == 4
  with pytest.raises(ValueError, match="lacks the field"):
    gap_batching.tokenize_gap_pairs([p], TOK, DATA, "no fields here")


def test_gap_iterator_buckets_and_resumes():
  exs = gap_batching.tokenize_gap_pairs(_pairs(10, seed=2), TOK, DATA, "plain")
  mk = lambda: gap_batching.gap_iterator(exs, batch_size=4, buckets=(48, 64), pad_id=TOK.pad_id,
                                         seed=3)
  it = mk()
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(4)]
  it2 = mk()
  it2.set_state(state)
  for a, b in zip(after, [next(it2) for _ in range(4)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  for b in first + after:
    assert b["inputs"].shape[:2] == (4, 4) and b["inputs"].shape[2] in (48, 64)
  fixed = gap_batching.fixed_gap_batches(exs, batch_size=4, buckets=(48, 64), pad_id=TOK.pad_id)
  assert sorted(i for _, idx in fixed for i in idx) == list(range(10))
  assert sum(float(b["weight"].sum()) for b, _ in fixed) == 10


# ---------------------------------------------------------------------- loss

@pytest.mark.parametrize("tie,center", [(0.0, 0.0), (0.3, 0.0), (0.1, 0.05)])
def test_gap_reward_losses_match_float64_formula(tie, center):
  r = np.random.default_rng(4).normal(0, 2, (64, 4)).astype(np.float32)
  got = jax.jit(lambda r: losses.gap_reward_losses(r[:, 0], r[:, 1], r[:, 2], r[:, 3],
                                                   tie_coef=tie, center_coef=center))(r)
  r64 = r.astype(np.float64)
  want = [_np_gap_loss(*row, tie, center) for row in r64]
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6, atol=1e-6)


def test_gap_reward_loss_and_metrics_match_reference_with_padding():
  tie, center = 0.2, 0.05
  mdef, params = _model(0)
  model = mdef.merge(params)
  pairs = _pairs(6, seed=5)
  exs = gap_batching.tokenize_gap_pairs(pairs, TOK, DATA, "plain")
  weights = [1, 0, 1, 1, 1, 0]
  b = gap_batching.collate_gap(exs, 64, TOK.pad_id, weights)
  fn = losses.make_gap_reward_loss(_Cfg(tie_coef=tie, center_coef=center))
  loss, weight, metrics = jax.jit(fn)(model, b, None, None)
  # reference: each gap_input string as [bos text eos], causal forward with no
  # mask, read at the index of its own last token
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(
      t, np.broadcast_to(np.arange(t.shape[1]), t.shape), None)[0])
  r = np.zeros((6, 4))
  for i, p in enumerate(pairs):
    x = DATA.prompt_format.format(prompt=p.prompt)
    for k, (y, ref) in enumerate([(p.chosen, p.rejected), (p.chosen, p.chosen),
                                  (p.rejected, p.rejected), (p.rejected, p.chosen)]):
      ids = [TOK.bos_id] + TOK.encode(pit_format.gap_input(x, y, ref, "plain")) + [TOK.eos_id]
      row = np.full((1, 64), TOK.pad_id, np.int32)
      row[0, :len(ids)] = ids
      r[i, k] = float(np.asarray(fwd(state, row), np.float64)[0, len(ids) - 1])
  keep = [i for i in range(6) if weights[i]]
  per = [_np_gap_loss(*r[i], tie, center) for i in keep]
  np.testing.assert_allclose(float(loss), np.mean(per), rtol=1e-6, atol=1e-6)
  assert float(weight) == 4
  rk = r[keep]
  holds = np.stack([rk[:, 0] > rk[:, 1], rk[:, 0] > rk[:, 2], rk[:, 1] > rk[:, 3],
                    rk[:, 2] > rk[:, 3]], 1)
  np.testing.assert_allclose(float(metrics["ordering_accuracy"]), holds.mean(), atol=1e-7)
  np.testing.assert_allclose(float(metrics["all_orderings_accuracy"]), holds.all(1).mean(),
                             atol=1e-7)
  np.testing.assert_allclose(float(metrics["gap_accuracy"]), np.mean(rk[:, 0] > rk[:, 3]),
                             atol=1e-7)
  np.testing.assert_allclose(float(metrics["self_gap"]), np.abs(rk[:, 1] - rk[:, 2]).mean(),
                             atol=1e-6)
  np.testing.assert_allclose(float(metrics["reward_mean"]), rk.mean(), atol=1e-6)
  np.testing.assert_allclose(float(metrics["reward_std"]), rk.std(), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="tie_coef"):
    losses.make_gap_reward_loss(_Cfg(tie_coef=-1.0, center_coef=0.0))


# ------------------------------------------------------------- train steps

def _train_steps(mesh_shape, n_steps=3):
  m = mesh(mesh_shape)
  rules = shd.DEFAULT_RULES
  mdef = tiny_mdef(vocab_size=V, head="scalar", max_seq_len=128, num_layers=1)
  opt = optim.make_optimizer(optim_cfg())
  state, shardings = ts.create_train_state(init_params(mdef, m, rules, 0), opt, m,
                                           mdef.shardings(m, rules))
  fn = losses.make_gap_reward_loss(_Cfg(tie_coef=0.1, center_coef=0.01))
  step = ts.make_train_step(mdef, fn, opt, m, rules, shardings, donate=False)
  exs = gap_batching.tokenize_gap_pairs(_pairs(8, seed=6), TOK, DATA, "plain")
  batch = shd.put_batch(gap_batching.collate_gap(exs, 64, TOK.pad_id, [1] * 7 + [0]), m, rules)
  out = []
  for _ in range(n_steps):
    state, metrics = step(state, batch, None)
    out.append(jax.device_get(metrics))
  return out


def test_gap_train_step_on_2x4_mesh_equals_one_device():
  one, sharded = _train_steps((1, 1, 1)), _train_steps((2, 4, 1))
  for a, b in zip(one, sharded):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b["ordering_accuracy"], a["ordering_accuracy"], atol=1e-6)
    assert float(a["weight"]) == 7
  assert one[-1]["loss"] != one[0]["loss"]  # the steps trained


# ------------------------------------------------- pipeline on synthetic pairs

def _config(workdir_steps=60):
  from configs.gap_reward import get_config
  c = get_config("tiny")
  c.data.update(synthetic_train_size=300, synthetic_eval_size=128, buckets=(128,))
  c.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, d_ff=64)
  c.mesh.shape = (1, -1, 1)
  c.train.update(steps=workdir_steps, batch_size=16, log_every=20, eval_every=0)
  c.optim.update(learning_rate=3e-3, warmup_steps=5, decay_steps=workdir_steps, weight_decay=0.0)
  c.checkpoint.update(every=workdir_steps, async_save=False)
  c.progress = False
  return c


def test_short_training_on_synthetic_pairs_beats_chance_and_scores_via_ppo_scorer(tmp_path):
  from pit.main import run
  from pit.rl import scorers
  config = _config(60)
  summary = run(config, str(tmp_path))
  with open(tmp_path / "gap_reward_summary.json") as f:
    assert json.load(f)["final_eval"] == summary["final_eval"]
  ev = summary["final_eval"]
  assert summary["eval_pairs"] == 128 and summary["run"]["steps_run"] == 60
  # chance: 0.5 per inequality and for the gap (60 steps of a 1-layer model: a
  # weak but real signal; configs/gap_reward.py:tiny reaches far more)
  assert ev["ordering_accuracy"] > 0.55, ev
  assert ev["gap_accuracy"] > 0.6, ev
  assert ev["eval_pairs"] == 128 and 0 < ev["ordering_accuracy_se"] < 0.05, ev
  # r_gap plugs into PPO through the one RewardModelScorer with the gap_input format
  rt_mesh, rules = mesh((1, 1, 1)), shd.rules_from_config(config.mesh)
  mdef, params = scorers.load_reward_model(str(tmp_path), rt_mesh, rules)
  scorer = gap_scorer.gap_reward_scorer(mdef, params, TOK, rt_mesh, rules, template="plain",
                                        max_len=128, batch_size=8)
  pairs = synthetic.preference_pairs(6, 0, split="eval")
  xs = [p.prompt for p in pairs]
  got = scorer(xs + xs, [p.chosen for p in pairs] + [p.rejected for p in pairs],
               [p.rejected for p in pairs] + [p.chosen for p in pairs])
  exs = gap_batching.tokenize_gap_pairs(pairs, TOK, config.data, "plain")
  b = gap_batching.collate_gap(exs, 128, TOK.pad_id)
  with shd.axis_rules(rt_mesh, rules):
    r = np.asarray(jax.jit(losses.gap_rewards)(mdef.merge(params), b))
  np.testing.assert_allclose(got[:6], r[:, 0], rtol=1e-5, atol=1e-5)   # r(x, y_w, y_l)
  np.testing.assert_allclose(got[6:], r[:, 3], rtol=1e-5, atol=1e-5)   # r(x, y_l, y_w)
  with pytest.raises(ValueError, match="reference"):
    scorer(xs, [p.chosen for p in pairs])


def test_pipeline_rejects_an_lm_head(tmp_path):
  from pit.main import run
  config = _config(2)
  config.model.head = "lm"
  with pytest.raises(ValueError, match="model.head must be 'scalar'"):
    run(config, str(tmp_path))


def test_deeper_reward_model_from_an_lm_trunk_starts_as_that_trunk(tmp_path):
  """trunk_from_lm_checkpoint: an RM with one block more than the LM takes the LM's
  blocks, and its extra top block is the identity, so it scores exactly as the
  same-depth RM with the same head; a gap in the middle is an error."""
  from pit.checkpoint import Checkpointer
  from pit.pretrained import trunk_from_lm_checkpoint
  m, rules = mesh((1, 1, 1)), shd.DEFAULT_RULES
  lm = tiny_mdef(vocab_size=V)
  lm_params = init_params(lm, m, rules, 3)
  ckpt = Checkpointer(str(tmp_path / "lm"), save_every=1, keep=1, async_save=False)
  ckpt.save(1, {"params": lm_params}, {})
  ckpt.close()
  same = trunk_from_lm_checkpoint(tiny_mdef(vocab_size=V, head="scalar"), m, rules,
                                  str(tmp_path / "lm"), 0)
  deep_def = tiny_mdef(vocab_size=V, head="scalar", num_layers=3)
  deep = trunk_from_lm_checkpoint(deep_def, m, rules, str(tmp_path / "lm"), 0)
  for k in ("embed", "block_0", "block_1", "final_norm"):
    jax.tree.map(np.testing.assert_array_equal, deep[k], lm_params[k])
  assert not np.any(deep["block_2"]["attn"]["wo"]) and not np.any(deep["block_2"]["mlp"]["w_down"])
  assert np.any(deep["block_2"]["attn"]["wq"])      # the rest of the new block is trainable
  deep.update(score=same["score"], score_bias=same["score_bias"])
  tokens = np.random.default_rng(0).integers(3, V, (2, 12)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  score = lambda mdef, p: np.asarray(losses.score_sequences(mdef.merge(p), tokens, mask))
  np.testing.assert_allclose(score(deep_def, deep),
                             score(tiny_mdef(vocab_size=V, head="scalar"), same), rtol=1e-6)
  lm1 = {k: v for k, v in lm_params.items() if k != "block_0"}   # the LM lacks a lower block
  ckpt = Checkpointer(str(tmp_path / "holey"), save_every=1, keep=1, async_save=False)
  ckpt.save(1, {"params": lm1}, {})
  ckpt.close()
  with pytest.raises(ValueError, match="block_0"):
    trunk_from_lm_checkpoint(deep_def, m, rules, str(tmp_path / "holey"), 0)


def test_held_out_accuracy_standard_errors_against_scipy():
  """The s.e. of the gap RM's held-out accuracies, pair as the unit, against
  scipy.stats.sem of per-pair values computed by plain loops."""
  from scipy import stats
  from pit.pipelines import gap_reward as gap_pipeline
  rng = np.random.default_rng(0)
  r = rng.normal(size=(57, 4)).astype(np.float32)
  r[:, 0] += 1.0                                  # r_wl tends to be highest
  got = gap_pipeline.accuracy_standard_errors(r)
  order, gap, every = [], [], []
  for wl, ww, ll, lw in r.tolist():
    holds = [wl > ww, wl > ll, ww > lw, ll > lw]
    order.append(sum(holds) / 4)
    gap.append(float(wl > lw))
    every.append(float(all(holds)))
  assert got["eval_pairs"] == 57
  for key, vals in (("ordering", order), ("gap", gap), ("all_orderings", every)):
    assert got[f"{key}_accuracy_se"] == pytest.approx(stats.sem(vals), rel=1e-12)
  m = losses.gap_reward_metrics(jnp.asarray(r), jnp.ones(57, jnp.float32))
  assert float(m["ordering_accuracy"]) == pytest.approx(np.mean(order), abs=1e-6)
  assert np.isnan(gap_pipeline.accuracy_standard_errors(r[:1])["gap_accuracy_se"])
