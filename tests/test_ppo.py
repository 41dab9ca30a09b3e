"""PPO: numerics vs float64 numpy references of the published formulas, the PPO
step on a mesh vs one device, rollout determinism, and SIGKILL-resume."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pit import optim, ppo
from pit import sharding as shd
from pit import train_step as ts
from pit.params import init_params
from tests.conftest import REPO
from tests.helpers import mesh, optim_cfg, sigkill_when, tiny_mdef, without_run


def _case(B=5, N=9, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([N, 1, 4, 0, 7][:B])
  mask = (np.arange(N)[None] < lengths[:, None]).astype(np.float64)
  f = lambda scale=1.0: rng.normal(size=(B, N)) * scale
  return rng, mask, f


def _np_masked_mean(x, m):
  return (x * m).sum() / max(m.sum(), 1.0)


def test_gae_matches_python_recursion_with_padding():
  rng, mask, f = _case()
  rewards, values = f(), f()
  rewards[mask == 0] = 123.0  # garbage in padding must not leak in
  values[mask == 0] = -77.0
  for gamma, lam in [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)]:
    B, N = mask.shape
    adv = np.zeros((B, N))
    for b in range(B):
      n = int(mask[b].sum())
      last = 0.0
      for t in reversed(range(n)):
        next_v = values[b, t + 1] if t + 1 < n else 0.0
        delta = rewards[b, t] + gamma * next_v - values[b, t]
        last = delta + gamma * lam * last
        adv[b, t] = last
    ret = (adv + values) * mask
    got_adv, got_ret = ppo.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                               jnp.asarray(mask), gamma, lam)
    np.testing.assert_allclose(got_adv, adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_ret, ret, rtol=1e-5, atol=1e-5)


def test_kl_estimators_whitening_rewards():
  rng, mask, f = _case(seed=1)
  logp, ref = -np.abs(f()), -np.abs(f())
  k1 = logp - ref
  r = np.exp(ref - logp)
  k3 = (r - 1) - np.log(r)
  x = jnp.asarray
  np.testing.assert_allclose(ppo.kl_penalty(x(logp), x(ref), "k1"), k1, atol=1e-6)
  np.testing.assert_allclose(ppo.kl_penalty(x(logp), x(ref), "k3"), k3, rtol=1e-6, atol=1e-6)
  assert (np.asarray(ppo.kl_penalty(x(logp), x(ref), "k3")) >= 0).all()
  with pytest.raises(ValueError, match="kl_estimator"):
    ppo.kl_penalty(x(logp), x(ref), "k2")
  # whitening (masked mean, biased masked variance)
  v = f(3.0) + 2.0
  mean = _np_masked_mean(v, mask)
  var = _np_masked_mean((v - mean) ** 2, mask)
  want = (v - mean) / np.sqrt(var + 1e-8) * mask
  np.testing.assert_allclose(ppo.masked_whiten(x(v, jnp.float32), x(mask)), want, rtol=1e-5, atol=1e-5)
  # rewards: -beta * kl everywhere, + score at the last response token
  scores, beta = rng.normal(size=mask.shape[0]), 0.3
  want = -beta * k1 * mask
  for b in range(mask.shape[0]):
    n = int(mask[b].sum())
    if n:
      want[b, n - 1] += scores[b]
  got = ppo.token_rewards(x(scores, jnp.float32), x(k1 * mask, jnp.float32), x(mask), beta)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_clipped_policy_value_losses_entropy_approx_kl():
  rng, mask, f = _case(seed=2)
  logp, old = -np.abs(f(0.5)), -np.abs(f(0.5))
  adv = f()
  x = lambda a: jnp.asarray(a, jnp.float32)
  for eps in (0.1, 0.2):
    ratio = np.exp(logp - old)
    l1, l2 = -adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps)
    want = _np_masked_mean(np.maximum(l1, l2), mask)
    want_cf = _np_masked_mean((l2 > l1).astype(float), mask)
    got, cf = ppo.policy_loss(x(logp), x(old), x(adv), x(mask), eps)
    np.testing.assert_allclose(float(got), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(cf), want_cf, atol=1e-6)
    assert 0 < want_cf < 1  # both branches exercised
  v, v_old, ret = f(), f(), f()
  eps = 0.2
  vc = v_old + np.clip(v - v_old, -eps, eps)
  e1, e2 = (v - ret) ** 2, (vc - ret) ** 2
  got, cf = ppo.value_loss(x(v), x(v_old), x(ret), x(mask), eps)
  np.testing.assert_allclose(float(got), 0.5 * _np_masked_mean(np.maximum(e1, e2), mask), rtol=1e-6)
  np.testing.assert_allclose(float(cf), _np_masked_mean((e2 > e1).astype(float), mask), atol=1e-6)
  np.testing.assert_allclose(float(ppo.approx_kl(x(logp), x(old), x(mask))),
                             0.5 * _np_masked_mean((logp - old) ** 2, mask), rtol=1e-6)
  logits = rng.normal(size=(3, 4, 11)) * 2
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(ppo.entropy(x(logits)), -(p * np.log(p)).sum(-1), rtol=1e-5)


def test_adaptive_kl_controller():
  c = ppo.KLController(0.2, adaptive=True, target=2.0, horizon=100.0)
  want = 0.2
  for kl in (5.0, 2.2, 1.0, 0.0):
    want *= 1 + np.clip(kl / 2.0 - 1, -0.2, 0.2) * 16 / 100.0
    np.testing.assert_allclose(c.update(kl, 16), want, rtol=1e-12)
  fixed = ppo.KLController(0.2, adaptive=False, target=2.0, horizon=100.0)
  assert fixed.update(100.0, 16) == 0.2


def _ppo_batch(B=8, P=6, N=7, V=64, seed=0):
  rng = np.random.default_rng(seed)
  plen = rng.integers(2, P + 1, B)
  rlen = rng.integers(1, N + 1, B)
  mask = np.zeros((B, P + N), bool)
  for i in range(B):
    mask[i, P - plen[i]:P] = True
    mask[i, P:P + rlen[i]] = True
  rmask = (np.arange(N)[None] < rlen[:, None]).astype(np.float32)
  return dict(tokens=rng.integers(0, V, (B, P + N)).astype(np.int32), mask=mask,
              positions=np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32),
              response_mask=rmask,
              old_logprobs=(-rng.random((B, N)) * 4 - 2).astype(np.float32) * rmask,
              old_values=rng.normal(size=(B, N)).astype(np.float32) * rmask,
              advantages=rng.normal(size=(B, N)).astype(np.float32) * rmask,
              returns=rng.normal(size=(B, N)).astype(np.float32) * rmask)


def _ppo_steps(shape, accum, n_steps=2):
  acdef = ppo.ActorCriticDef(tiny_mdef(), tiny_mdef(head="scalar"))
  m = mesh(shape)
  rules = shd.DEFAULT_RULES
  opt = optim.make_optimizer(optim_cfg(learning_rate=3e-3))
  params = {"policy": init_params(acdef.policy, m, rules, 0),
            "value": init_params(acdef.value, m, rules, 1)}
  state, sh = ts.create_train_state(params, opt, m, acdef.shardings(m, rules))
  loss = ppo.make_ppo_loss(clip_ratio=0.2, value_clip=0.2, vf_coef=0.5, ent_coef=0.01)
  step = ts.make_train_step(acdef, loss, opt, m, rules, sh, accum_steps=accum)
  hist = []
  for i in range(n_steps):
    state, met = step(state, shd.put_batch(_ppo_batch(seed=i), m, rules))
    hist.append(jax.device_get(met))
  return jax.device_get(state.params), hist


def test_ppo_step_on_2x4_mesh_equals_one_device():
  p_one, h_one = _ppo_steps((1, 1, 1), 1)
  p_mesh, h_mesh = _ppo_steps((2, 4, 1), 2)
  for a, b in zip(h_one, h_mesh):
    for k in ("loss", "policy_loss", "value_loss", "entropy", "clip_fraction"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
  assert h_one[1]["clip_fraction"] > 0  # second step is off-policy: clipping is exercised
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p_one, p_mesh)
  # the loss at the first step also matches a float64 numpy evaluation of the formulas
  acdef = ppo.ActorCriticDef(tiny_mdef(), tiny_mdef(head="scalar"))
  m = mesh((1, 1, 1))
  params = {"policy": init_params(acdef.policy, m, shd.DEFAULT_RULES, 0),
            "value": init_params(acdef.value, m, shd.DEFAULT_RULES, 1)}
  b = _ppo_batch(seed=0)
  @jax.jit
  def forward(params, b):
    model = acdef.merge(params)
    return (model.policy(b["tokens"], b["positions"], b["mask"])[0],
            model.value(b["tokens"], b["positions"], b["mask"])[0])
  logits, values = forward(params, {k: b[k] for k in ("tokens", "positions", "mask")})
  N = b["response_mask"].shape[1]
  lg = np.asarray(logits, np.float64)[:, -N - 1:-1]
  lp_all = lg - lg.max(-1, keepdims=True)
  lp_all = lp_all - np.log(np.exp(lp_all).sum(-1, keepdims=True))
  logp = np.take_along_axis(lp_all, b["tokens"][:, -N:, None], -1)[..., 0]
  v = np.asarray(values, np.float64)[:, -N - 1:-1]
  mk = b["response_mask"].astype(np.float64)
  ratio = np.exp(logp - b["old_logprobs"])
  A = b["advantages"]
  pg = _np_masked_mean(np.maximum(-A * ratio, -A * np.clip(ratio, 0.8, 1.2)), mk)
  vc = b["old_values"] + np.clip(v - b["old_values"], -0.2, 0.2)
  vf = 0.5 * _np_masked_mean(np.maximum((v - b["returns"]) ** 2, (vc - b["returns"]) ** 2), mk)
  ent = _np_masked_mean(-(np.exp(lp_all) * lp_all).sum(-1), mk)
  np.testing.assert_allclose(h_one[0]["loss"], pg + 0.5 * vf - 0.01 * ent, rtol=1e-5)


def test_reward_model_scorer_reads_last_token_of_formatted_text():
  from pit.data.tokenizer import ByteTokenizer
  from pit.rl import scorers
  tok = ByteTokenizer()
  mdef = tiny_mdef(head="scalar", vocab_size=384)
  m = mesh((1, 2, 1))
  params = init_params(mdef, m, shd.DEFAULT_RULES, 3)
  fmt = scorers.template_format("{prompt}|{reference}|{response}", "Q: {prompt}\n")
  sc = scorers.RewardModelScorer(mdef, params, tok, m, shd.DEFAULT_RULES, format_fn=fmt,
                                 max_len=40, batch_size=2)
  prompts, responses, refs = ["ab", "a much longer prompt " * 3, "c"], ["x", "yz", ""], ["r1", "r2", "r3"]
  got = sc(prompts, responses, refs)
  model = mdef.merge(jax.device_get(params))
  for p, r, ref, g in zip(prompts, responses, refs, got):
    ids = [tok.bos_id] + tok.encode(f"Q: {p}\n|{ref}|{r}") + [tok.eos_id]
    ids = ids if len(ids) <= 40 else [tok.bos_id] + ids[len(ids) - 39:]
    values, _ = model(jnp.asarray([ids], jnp.int32))
    np.testing.assert_allclose(g, float(values[0, -1]), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="reference"):
    sc(prompts, responses, None)


# ---------------------------------------------------------------- end to end (CLI)

PPO_ARGS = ["--config=configs/ppo.py:tiny", "--config.progress=False",
            "--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.num_layers=1",
            "--config.data.synthetic_train_size=64", "--config.ppo.scorer=reward_model",
            "--config.ppo.rollout_batch_size=8", "--config.train.batch_size=4",
            "--config.ppo.epochs=1", "--config.ppo.max_new_tokens=8", "--config.train.steps=12",
            "--config.checkpoint.every=2", "--config.train.log_every=2",
            "--config.optim.learning_rate=1e-3", "--config.mesh.shape=(1,-1,1)"]


def _model_cfg(head):
  from pit.model import ModelConfig
  return ModelConfig(vocab_size=384, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
                     d_ff=64, max_seq_len=128, head=head)


def _write_checkpoint(workdir, head, seed):
  from pit.checkpoint import Checkpointer
  from pit.params import model_def
  mdef = model_def(_model_cfg(head))
  params = init_params(mdef, mesh((1, 1, 1)), shd.DEFAULT_RULES, seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"config_{head}.json"), "w") as f:
    json.dump({"model": {"head": head, **{k: getattr(mdef.cfg, k) for k in
                                          ("vocab_size", "d_model", "num_layers", "num_heads",
                                           "num_kv_heads", "d_ff", "max_seq_len")}}}, f)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1, async_save=False)
  ckpt.save(1, {"params": params}, {}, force=True)
  ckpt.close()


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _final_policy(workdir):
  from pit.checkpoint import Checkpointer
  from pit.params import model_def
  acdef = ppo.ActorCriticDef(model_def(_model_cfg("lm")), model_def(_model_cfg("scalar")))
  m = mesh((1, 1, 1))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        acdef.abstract_params, acdef.shardings(m, shd.DEFAULT_RULES))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1)
  params, step = ckpt.restore_params(target)
  ckpt.close()
  return jax.device_get(params), step


def test_ppo_cli_sigkill_resumes_to_identical_params(tmp_path):
  _write_checkpoint(tmp_path / "sft", "lm", 0)
  _write_checkpoint(tmp_path / "rm", "scalar", 1)
  args = [*PPO_ARGS, f"--config.ppo.init_checkpoint_dir={tmp_path / 'sft'}",
          f"--config.ppo.reward_model_dir={tmp_path / 'rm'}"]
  cmd = lambda wd: [sys.executable, "-m", "pit.main", *args, f"--workdir={wd}"]
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  r = subprocess.run(cmd(ref), cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  sigkill_when(cmd(killed), cwd=REPO, env=_env(2),
               marker=killed / "checkpoints" / "4")
  assert not (killed / "checkpoints" / "12").exists()
  r = subprocess.run(cmd(killed), cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(killed / "ppo_summary.json"))
  assert summary["run"]["resumed_from"] is not None and 4 <= summary["run"]["resumed_from"] < 12
  assert without_run(summary) == without_run(json.load(open(ref / "ppo_summary.json")))
  assert summary["rollouts"] == 6
  p_ref, s_ref = _final_policy(ref)
  p_res, s_res = _final_policy(killed)
  assert s_ref == s_res == 12
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_res)
  from pit.params import model_def
  p_init = jax.device_get(init_params(model_def(_model_cfg("lm")), mesh((1, 1, 1)),
                                      shd.DEFAULT_RULES, 0))
  assert not np.allclose(p_ref["policy"]["embed"], p_init["embed"])  # training moved the policy
  recs = [json.loads(l) for l in open(ref / "metrics.jsonl")]
  assert [r_["step"] for r_ in recs] == list(range(2, 13, 2))
  for rec in recs:  # one rollout per logged record; sampler and forward pass agree
    assert rec["sampler_logprob_gap"] < 1e-3, rec
    for k in ("score", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss", "approx_kl",
              "response_length", "policy_loss"):
      assert k in rec, k
  assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # first rollout: policy == reference
  res = [json.loads(l) for l in open(killed / "metrics.jsonl")]
  assert [r_["step"] for r_ in res] == list(range(2, 13, 2))
