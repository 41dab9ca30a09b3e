"""Reward-model and DPO-family losses vs float64 numpy references of the published
formulas (explicit loops over pairs and tokens), pair batching, and the losses'
train steps on a 2x4 mesh vs one device."""
import functools
import math

import jax
import numpy as np
import pytest

from pit import losses, optim
from pit import sharding as shd
from pit import train_step as ts
from pit.data import batching, pair_batching
from pit.data.pairs import PreferencePair
from pit.data.tokenizer import ByteTokenizer
from pit.params import init_params
from tests.helpers import mesh, optim_cfg, tiny_mdef

TOK = ByteTokenizer()
V = 260  # byte tokenizer (259) rounded up


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _np_logsoftmax(row):
  row = np.asarray(row, np.float64)
  m = row.max()
  return row - m - math.log(np.exp(row - m).sum())


def _pairs(n=6, seed=0):
  rng = np.random.default_rng(seed)
  word = lambda lo, hi: "".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(lo, hi)))
  return [PreferencePair(word(3, 12), word(1, 15), word(1, 15), float(rng.normal()))
          for _ in range(n)]


def _examples(n=6, seed=0, max_len=40, max_resp=16):
  data = dict(prompt_format="Q: {prompt}\nA:", max_len=max_len, max_response_len=max_resp)
  return pair_batching.tokenize_pairs(_pairs(n, seed), TOK, _Cfg(data))


class _Cfg:
  def __init__(self, d):
    self.__dict__.update(d)


def _batch(examples, weights=None, length=48):
  return pair_batching.collate_pairs(examples, length, TOK.pad_id, weights)


# ------------------------------------------------------------------ pair batching

def test_pair_examples_use_the_sft_truncation_policy():
  p = PreferencePair("x" * 30, "y" * 30, "z", 1.5)
  ex = pair_batching.make_pair_example(p, TOK, prompt_format="{prompt}", max_len=24,
                                       max_response_len=10)
  ref_c = batching.make_example([TOK.bos_id] + TOK.encode("x" * 30), TOK.encode("y" * 30),
                                eos_id=TOK.eos_id, max_len=24, max_response_len=10)
  np.testing.assert_array_equal(ex.chosen.tokens, ref_c.tokens)
  np.testing.assert_array_equal(ex.chosen.target_mask, ref_c.target_mask)
  assert len(ex.chosen.tokens) == 24 and ex.rejected.tokens[-1] == TOK.eos_id
  assert ex.margin == 1.5


def test_collate_pairs_layout_and_padding():
  exs = _examples(4)
  b = _batch(exs, weights=[1, 1, 1, 0])
  assert b["inputs"].shape == (4, 2, 48) and b["margin"].shape == (4,)
  for i, ex in enumerate(exs):
    for j, e in enumerate((ex.chosen, ex.rejected)):
      n = len(e.tokens) - 1
      np.testing.assert_array_equal(b["inputs"][i, j, :n], e.tokens[:-1])
      np.testing.assert_array_equal(b["targets"][i, j, :n], e.tokens[1:])
      assert not b["mask"][i, j, n:].any() and (b["inputs"][i, j, n:] == TOK.pad_id).all()
      np.testing.assert_array_equal(b["loss_mask"][i, j, :n], e.target_mask[1:])
  np.testing.assert_allclose(b["margin"], [e.margin for e in exs], rtol=1e-6)
  np.testing.assert_array_equal(b["weight"], [1, 1, 1, 0])
  with pytest.raises(ValueError, match="longer than the batch length"):
    _batch(exs, length=8)


def test_full_sequences_rebuild_the_token_rows():
  exs = _examples(5)
  b = _batch(exs)
  tok, m = losses.full_sequences(losses.flatten_pairs(b["inputs"]),
                                 losses.flatten_pairs(b["targets"]),
                                 losses.flatten_pairs(b["mask"]))
  tok, m = np.asarray(tok), np.asarray(m)
  rows = [e for ex in exs for e in (ex.chosen, ex.rejected)]
  for r, e in enumerate(rows):
    n = len(e.tokens)
    np.testing.assert_array_equal(tok[r, :n], e.tokens)
    assert m[r, :n].all() and not m[r, n:].any()


def test_pair_iterator_buckets_and_resumes():
  exs = _examples(20, seed=3)
  it = pair_batching.pair_iterator(exs, batch_size=4, buckets=(24, 48), pad_id=TOK.pad_id, seed=5)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  again = pair_batching.pair_iterator(exs, batch_size=4, buckets=(24, 48), pad_id=TOK.pad_id,
                                      seed=5)
  again.set_state(state)
  for a, b in zip(want, (next(again) for _ in range(4))):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert {b["inputs"].shape[2] for b in want} <= {24, 48}


def test_fixed_batches_cover_every_pair_once():
  exs = _examples(11, seed=4)
  batches = pair_batching.fixed_batches(exs, batch_size=4, buckets=(24, 48), pad_id=TOK.pad_id)
  seen = sorted(i for _, idx in batches for i in idx)
  assert seen == list(range(11))
  for b, idx in batches:
    assert b["inputs"].shape[0] == 4 and b["weight"].sum() == len(idx)


# ------------------------------------------------------------------ references

def _np_seq_logprob(logits_row, targets_row, loss_mask_row):
  """Sum over response tokens of log p(target), float64, explicit loop."""
  total = 0.0
  for t in range(len(targets_row)):
    if loss_mask_row[t]:
      total += _np_logsoftmax(logits_row[t])[targets_row[t]]
  return total


@functools.lru_cache(maxsize=None)
def _forward(graphdef):
  """Jitted unmasked forward (causal: logits at t < n do not see the padding after n)."""
  from flax import nnx
  return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)[0])


def _model_logits(model, b):
  """Logits of every row, run with no attention mask and no positions (the row's
  real tokens come first, so causal attention makes its padding irrelevant)."""
  from flax import nnx
  graphdef, state = nnx.split(model)
  rows = b["inputs"].reshape(-1, b["inputs"].shape[-1])
  logits = np.asarray(_forward(graphdef)(state, rows), np.float64)
  out = {}
  for i in range(b["inputs"].shape[0]):
    for j in range(2):
      n = int(b["mask"][i, j].sum())
      out[i, j] = logits[2 * i + j, :n]
  return out


def _np_seq_logprobs(model, b):
  logits = _model_logits(model, b)
  res = np.zeros((b["inputs"].shape[0], 2))
  for (i, j), lg in logits.items():
    n = lg.shape[0]
    res[i, j] = _np_seq_logprob(lg, b["targets"][i, j, :n], b["loss_mask"][i, j, :n])
  return res


def _np_dpo(kind, pw, pl, rw, rl, beta, eps):
  h = (pw - rw) - (pl - rl)
  if kind == "sigmoid":
    return -(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h)
  if kind == "ipo":
    return (h - 1 / (2 * beta)) ** 2
  if kind == "hinge":
    return max(0.0, 1 - beta * h)
  if kind == "robust":
    return ((1 - eps) * -_log_sigmoid(beta * h) + eps * _log_sigmoid(-beta * h)) / (1 - 2 * eps)
  raise AssertionError(kind)


def _weighted_mean(values, weights):
  return sum(v * w for v, w in zip(values, weights)) / sum(weights)


@functools.lru_cache(maxsize=None)
def _lm(seed=0, head="lm"):
  mdef = tiny_mdef(vocab_size=V, head=head)
  return mdef, init_params(mdef, mesh((1, 1, 1)), shd.DEFAULT_RULES, seed)


@pytest.mark.parametrize("kind,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0),
                                      ("hinge", 0.0), ("robust", 0.1)])
def test_dpo_losses_match_float64_reference(kind, eps):
  beta = 0.7
  mdef, params = _lm(0)
  model = mdef.merge(params)
  exs = _examples(6, seed=1)
  weights = [1, 1, 0, 1, 1, 0]  # padding pairs carry weight 0
  rng = np.random.default_rng(2)
  ref = rng.normal(-40, 5, (6, 2))
  for ex, r in zip(exs, ref):
    ex.ref_logps = (float(r[0]), float(r[1]))
  b = _batch(exs, weights)
  fn = losses.make_dpo_loss(_Cfg(dict(loss=kind, beta=beta, label_smoothing=eps)))
  loss, weight, metrics = jax.jit(fn)(model, b, None, None)
  pol = _np_seq_logprobs(model, b)
  ref32 = b["ref_logps"].astype(np.float64)
  per = [_np_dpo(kind, pol[i, 0], pol[i, 1], ref32[i, 0], ref32[i, 1], beta, eps) for i in range(6)]
  np.testing.assert_allclose(float(loss), _weighted_mean(per, weights), rtol=1e-6, atol=1e-6)
  assert float(weight) == 4
  rw, rl = beta * (pol[:, 0] - ref32[:, 0]), beta * (pol[:, 1] - ref32[:, 1])
  np.testing.assert_allclose(float(metrics["reward_margin"]), _weighted_mean(rw - rl, weights),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(metrics["reward_accuracy"]),
                             _weighted_mean((rw > rl).astype(float), weights), atol=1e-7)
  np.testing.assert_allclose(float(metrics["kl_logratio"]),
                             _weighted_mean((rw + rl) / (2 * beta), weights), rtol=1e-5, atol=1e-4)


def test_dpo_nll_term_matches_float64_reference():
  mdef, params = _lm(0)
  model = mdef.merge(params)
  exs = _examples(5, seed=3)
  weights = [1, 0, 1, 1, 1]
  ref = np.random.default_rng(4).normal(-40, 5, (5, 2))
  for ex, r in zip(exs, ref):
    ex.ref_logps = (float(r[0]), float(r[1]))
  b = _batch(exs, weights)
  base = losses.make_dpo_loss(_Cfg(dict(loss="sigmoid", beta=0.3, label_smoothing=0.0)))
  rpo = losses.make_dpo_loss(_Cfg(dict(loss="sigmoid", beta=0.3, label_smoothing=0.0,
                                       nll_coef=0.5)))
  loss0, _, m0 = jax.jit(base)(model, b, None, None)
  loss1, _, m1 = jax.jit(rpo)(model, b, None, None)
  pol = _np_seq_logprobs(model, b)
  n_chosen = b["loss_mask"][:, 0].astype(np.float64).sum(-1)
  nll = _weighted_mean(-pol[:, 0] / n_chosen, weights)
  ref32 = b["ref_logps"].astype(np.float64)
  dpo = _weighted_mean([_np_dpo("sigmoid", pol[i, 0], pol[i, 1], ref32[i, 0], ref32[i, 1], 0.3, 0)
                        for i in range(5)], weights)
  np.testing.assert_allclose(float(m0["nll_chosen"]), nll, rtol=1e-6)
  np.testing.assert_allclose(float(loss0), dpo, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(float(loss1), dpo + 0.5 * nll, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="nll_coef"):
    losses.make_dpo_loss(_Cfg(dict(loss="sigmoid", beta=0.3, label_smoothing=0.0, nll_coef=-1)))


def test_dpo_live_reference_matches_reference_and_precomputed():
  mdef, params = _lm(0)
  _, ref_params = _lm(1)
  model, ref_model = mdef.merge(params), mdef.merge(ref_params)
  exs = _examples(4, seed=5)
  b = _batch(exs, [1, 1, 1, 0])
  cfg = _Cfg(dict(loss="sigmoid", beta=0.5, label_smoothing=0.0))
  fn = losses.make_dpo_loss(cfg)
  loss, _, metrics = jax.jit(fn)(model, b, None, {"ref_params": ref_params})
  pol, ref = _np_seq_logprobs(model, b), _np_seq_logprobs(ref_model, b)
  per = [_np_dpo("sigmoid", pol[i, 0], pol[i, 1], ref[i, 0], ref[i, 1], 0.5, 0) for i in range(4)]
  np.testing.assert_allclose(float(loss), _weighted_mean(per, [1, 1, 1, 0]), rtol=1e-6, atol=1e-6)
  # exact token KL(pi || ref) summed over response positions, averaged over responses
  lp, lr = _model_logits(model, b), _model_logits(ref_model, b)
  kl = np.zeros((4, 2))
  for (i, j), lg in lp.items():
    for t in range(lg.shape[0]):
      if b["loss_mask"][i, j, t]:
        p, q = _np_logsoftmax(lg[t]), _np_logsoftmax(lr[i, j][t])
        kl[i, j] += float((np.exp(p) * (p - q)).sum())
  np.testing.assert_allclose(float(metrics["kl_tokens"]), _weighted_mean(kl.mean(1), [1, 1, 1, 0]),
                             rtol=1e-5)
  assert float(metrics["kl_tokens"]) > 0
  # the same loss from precomputed reference log-probs
  for ex, r in zip(exs, ref):
    ex.ref_logps = (float(r[0]), float(r[1]))
  loss2, _, _ = jax.jit(fn)(model, _batch(exs, [1, 1, 1, 0]), None, None)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)


def test_dpo_config_errors():
  with pytest.raises(ValueError, match="unknown DPO loss 'nope'"):
    losses.make_dpo_loss(_Cfg(dict(loss="nope", beta=0.1, label_smoothing=0.0)))
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.make_dpo_loss(_Cfg(dict(loss="robust", beta=0.1, label_smoothing=0.5)))
  mdef, params = _lm(0)
  with pytest.raises(ValueError, match="ref_params"):
    losses.make_dpo_loss(_Cfg(dict(loss="ipo", beta=0.1, label_smoothing=0.0)))(
        mdef.merge(params), _batch(_examples(2)), None, None)


@pytest.mark.parametrize("margin_scale,center", [(0.0, 0.0), (0.5, 0.0), (1.0, 0.05)])
def test_reward_loss_matches_float64_reference(margin_scale, center):
  mdef, params = _lm(0, "scalar")
  model = mdef.merge(params)
  exs = _examples(6, seed=7)
  weights = [1, 0, 1, 1, 1, 0]
  b = _batch(exs, weights)
  fn = losses.make_reward_loss(_Cfg(dict(margin_scale=margin_scale, center_coef=center)))
  loss, weight, metrics = jax.jit(fn)(model, b, None, None)
  # reference: each whole row [bos prompt response eos], right-padded to 48 with
  # no mask (causal), read at the index of its own last token
  from flax import nnx
  graphdef, state = nnx.split(model)
  rows = np.full((12, 48), 0, np.int32)
  for k, e in enumerate(e for ex in exs for e in (ex.chosen, ex.rejected)):
    rows[k, :len(e.tokens)] = e.tokens
  values = np.asarray(_forward(graphdef)(state, rows), np.float64)
  r = np.zeros((6, 2))
  for i, ex in enumerate(exs):
    for j, e in enumerate((ex.chosen, ex.rejected)):
      r[i, j] = values[2 * i + j, len(e.tokens) - 1]
  m32 = b["margin"].astype(np.float64)
  per = [-_log_sigmoid(r[i, 0] - r[i, 1] - margin_scale * m32[i]) + center * (r[i, 0] + r[i, 1]) ** 2
         for i in range(6)]
  np.testing.assert_allclose(float(loss), _weighted_mean(per, weights), rtol=1e-6, atol=1e-6)
  assert float(weight) == 4
  keep = [i for i in range(6) if weights[i]]
  allr = np.concatenate([r[keep, 0], r[keep, 1]])
  np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(r[keep, 0] > r[keep, 1]))
  np.testing.assert_allclose(float(metrics["margin"]), np.mean(r[keep, 0] - r[keep, 1]), atol=1e-6)
  np.testing.assert_allclose(float(metrics["reward_mean"]), allr.mean(), atol=1e-6)
  np.testing.assert_allclose(float(metrics["reward_std"]), allr.std(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------ train step on meshes

def _train(kind, mesh_shape, n_steps=3):
  m = mesh(mesh_shape)
  rules = shd.DEFAULT_RULES
  mdef = tiny_mdef(vocab_size=V, head="scalar" if kind == "reward" else "lm")
  ocfg = optim_cfg()
  opt = optim.make_optimizer(ocfg)
  params = init_params(mdef, m, rules, 0)
  state, shardings = ts.create_train_state(params, opt, m, mdef.shardings(m, rules))
  exs = _examples(8, seed=11)
  extra, extra_sh = None, None
  if kind == "reward":
    fn = losses.make_reward_loss(_Cfg(dict(margin_scale=0.5, center_coef=0.01)))
  else:
    fn = losses.make_dpo_loss(_Cfg(dict(loss="sigmoid", beta=0.3, label_smoothing=0.1)))
    extra = {"ref_params": init_params(mdef, m, rules, 1)}
    extra_sh = {"ref_params": mdef.shardings(m, rules)}
  step = ts.make_train_step(mdef, fn, opt, m, rules, shardings, accum_steps=1,
                            extra_shardings=extra_sh, donate=False)
  batch = shd.put_batch(_batch(exs, [1] * 7 + [0]), m, rules)
  out = []
  for _ in range(n_steps):
    state, metrics = step(state, batch, extra)
    out.append(jax.device_get(metrics))
  return out


@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_pair_train_steps_on_2x4_mesh_equal_one_device(kind):
  one, sharded = _train(kind, (1, 1, 1)), _train(kind, (2, 4, 1))
  for a, b in zip(one, sharded):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5, atol=1e-5)
    assert float(a["weight"]) == 7
  assert one[-1]["loss"] < one[0]["loss"]
