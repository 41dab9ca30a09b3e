"""Sampler: greedy = naive reference loop, EOS handling, logprobs, seeds, top-k/top-p."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pit import sharding as shd
from pit.model import ModelConfig
from pit.params import init_params, model_def
from pit.sampler import SAMPLE_BLOCK, Sampler, filter_logits, sample_categorical, sample_token

RULES = shd.DEFAULT_RULES
CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                  max_seq_len=64, init_std=0.1, lm_head_bias=True)
PAD = 0
PROMPTS = [[5, 6, 7], [9], [10, 11, 12, 13, 14, 15, 16, 17], [3, 4, 60, 61, 2]]
N = 10
NO_EOS = -1  # never generated


def mesh_of(shape):
  return shd.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])


@functools.cache
def setup(shape=(1, 1, 1)):
  mdef = model_def(CFG)
  mesh = mesh_of(shape)
  return mdef, mesh, init_params(mdef, mesh, RULES, 0)


def make_sampler(eos_id, shape=(1, 1, 1)):
  mdef, mesh, _ = setup(shape)
  return Sampler(mdef, mesh, RULES, pad_id=PAD, eos_id=eos_id, prompt_buckets=(8,))


@functools.cache
def full_logits_fn():
  mdef = model_def(CFG)
  return jax.jit(lambda params, tokens_BT, mask_BT: mdef.merge(params)(tokens_BT, None, mask_BT)[0])


def right_padded(seqs, T):
  tokens_BT = np.full((len(seqs), T), PAD, np.int32)
  mask_BT = np.zeros((len(seqs), T), bool)
  for b, s in enumerate(seqs):
    tokens_BT[b, :len(s)], mask_BT[b, :len(s)] = s, True
  return tokens_BT, mask_BT


def logprobs_of(params, prompts, new_tokens):
  """log p(new_tokens[b][j]) from one full forward over prompt + new tokens (right-padded)."""
  seqs = [list(p) + list(t) for p, t in zip(prompts, new_tokens)]
  logits_BTV = full_logits_fn()(params, *right_padded(seqs, max(map(len, seqs))))
  logp_BTV = np.asarray(jax.nn.log_softmax(logits_BTV, axis=-1))
  return [np.array([logp_BTV[b, len(p) - 1 + j, t] for j, t in enumerate(new)])
          for b, (p, new) in enumerate(zip(prompts, new_tokens))]


def reference_greedy(params, prompts, n, eos_id):
  """Repeated full forward passes + argmax; stops a row at eos. Returns token lists, logprobs."""
  seqs = [list(p) for p in prompts]
  done = [False] * len(prompts)
  T = max(map(len, prompts)) + n
  for _ in range(n):
    logits_BTV = np.asarray(full_logits_fn()(params, *right_padded(seqs, T)))
    for b, s in enumerate(seqs):
      if not done[b]:
        tok = int(np.argmax(logits_BTV[b, len(s) - 1]))
        s.append(tok)
        done[b] = tok == eos_id
  new = [s[len(p):] for s, p in zip(seqs, prompts)]
  return new, logprobs_of(params, prompts, new)


def pick_eos(ref_tokens):
  """The emitted token that, as eos, gives the most distinct row lengths (some rows never stop)."""
  def lengths(t):
    return [row.index(t) + 1 if t in row else N for row in ref_tokens]
  candidates = [t for row in ref_tokens for t in row if N in lengths(t)]
  assert candidates, ref_tokens
  return max(candidates, key=lambda t: (len(set(lengths(t))), -t))


def as_padded(rows, n, fill):
  out = np.full((len(rows), n), fill, np.asarray(rows[0]).dtype)
  for b, r in enumerate(rows):
    out[b, :len(r)] = r
  return out


def test_greedy_matches_reference_loop_and_stops_at_eos_per_row():
  _, _, params = setup()
  free_tokens, _ = reference_greedy(params, PROMPTS, N, NO_EOS)
  eos = pick_eos(free_tokens)
  ref_tokens, ref_logprobs = reference_greedy(params, PROMPTS, N, eos)
  ref_lengths = np.array([len(r) for r in ref_tokens])
  assert len(set(ref_lengths)) >= 3 and ref_lengths.max() == N  # rows stop at different steps

  sampler = make_sampler(eos)
  out = sampler.generate(params, PROMPTS, max_new_tokens=N, temperature=0.0, seed=0)
  np.testing.assert_array_equal(out.lengths, ref_lengths)
  np.testing.assert_array_equal(out.tokens, as_padded(ref_tokens, N, PAD))
  np.testing.assert_allclose(out.logprobs, as_padded(ref_logprobs, N, 0.0), atol=1e-5, rtol=0)
  for b, n in enumerate(out.lengths):  # invariants: eos only as the last token, pad after it
    assert eos not in out.tokens[b, :n - 1]
    assert np.all(out.tokens[b, n:] == PAD) and np.all(out.logprobs[b, n:] == 0)
  assert np.all(out.logprobs[out.tokens != PAD] < 0)

  again = sampler.generate(params, PROMPTS, max_new_tokens=N, temperature=0.0, seed=123)
  np.testing.assert_array_equal(again.tokens, out.tokens)  # greedy ignores the seed
  np.testing.assert_array_equal(again.logprobs, out.logprobs)
  assert sampler.num_compiled == 1


def test_eos_bias_stops_every_row_at_once():
  _, _, params = setup()
  eos = 7
  params = {**params, "lm_head_bias": params["lm_head_bias"].at[eos].add(100.0)}
  out = make_sampler(eos).generate(params, PROMPTS, max_new_tokens=N, temperature=1.0, seed=0)
  np.testing.assert_array_equal(out.lengths, [1] * len(PROMPTS))
  assert np.all(out.tokens[:, 0] == eos) and np.all(out.tokens[:, 1:] == PAD)
  np.testing.assert_allclose(out.logprobs[:, 0], 0.0, atol=1e-5)
  assert np.all(out.logprobs[:, 1:] == 0)


def test_sampling_seeds_logprobs_and_a_single_compilation():
  _, _, params = setup()
  sampler = make_sampler(NO_EOS)
  gen = functools.partial(sampler.generate, params, PROMPTS, max_new_tokens=N)
  a = gen(temperature=1.0, seed=0)
  np.testing.assert_array_equal(gen(temperature=1.0, seed=0).tokens, a.tokens)
  assert not np.array_equal(gen(temperature=1.0, seed=1).tokens, a.tokens)
  greedy = gen(temperature=0.0)
  assert not np.array_equal(greedy.tokens, a.tokens)
  np.testing.assert_array_equal(a.lengths, [N] * len(PROMPTS))
  # Logprobs are the temperature-1 model's, at the sampled tokens.
  expected = logprobs_of(params, PROMPTS, a.tokens)
  np.testing.assert_allclose(a.logprobs, np.stack(expected), atol=1e-5, rtol=0)
  hot = gen(temperature=1.7, seed=2)  # ... whatever temperature the tokens were sampled at
  np.testing.assert_allclose(hot.logprobs, np.stack(logprobs_of(params, PROMPTS, hot.tokens)),
                             atol=1e-5, rtol=0)
  # Top-k 1 is greedy; changing temperature / top-k / top-p never recompiles.
  np.testing.assert_array_equal(gen(temperature=0.7, top_k=1, seed=3).tokens, greedy.tokens)
  gen(temperature=0.3, top_k=5, top_p=0.9, seed=4)
  gen(temperature=1.5, top_p=0.5, seed=5)
  assert sampler.num_compiled == 1
  assert all(fn._cache_size() == 1 for fn in sampler._compiled.values())


def test_sharded_sampler_matches_single_device():
  _, _, params1 = setup()
  _, _, params8 = setup((2, 4, 1))
  sampler = make_sampler(NO_EOS, (2, 4, 1))
  assert sampler.batch_multiple == 8  # 4 prompts are padded to a batch of 8
  out8 = sampler.generate(params8, PROMPTS, max_new_tokens=N, temperature=0.0)
  out1 = make_sampler(NO_EOS).generate(params1, PROMPTS, max_new_tokens=N, temperature=0.0)
  assert out8.tokens.shape == (len(PROMPTS), N)
  np.testing.assert_array_equal(out8.tokens, out1.tokens)
  np.testing.assert_allclose(out8.logprobs, out1.logprobs, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- filtering semantics

PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32)
LOGITS_1V = jnp.log(jnp.asarray(PROBS))[None]


def survivors(temperature=1.0, top_k=0, top_p=1.0, logits_1V=LOGITS_1V):
  out_1V = filter_logits(logits_1V, jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
  return np.flatnonzero(np.isfinite(np.asarray(out_1V)[0])).tolist()


def test_top_k_and_top_p_survivors():
  assert survivors() == [0, 1, 2, 3, 4]
  assert survivors(top_k=2) == [0, 1]
  assert survivors(top_k=1) == [0]
  # Nucleus: keep a token if the mass of strictly more likely tokens is < top_p
  # (so the token that crosses top_p is kept). The most likely token always survives.
  assert survivors(top_p=0.55) == [0, 1]       # before = 0, .5 | .7
  assert survivors(top_p=0.68) == [0, 1]
  assert survivors(top_p=0.72) == [0, 1, 2]    # before(2) = .7 < .72
  assert survivors(top_p=0.3) == [0]
  assert survivors(top_p=1e-6) == [0]
  # Exact boundary with exactly representable probabilities .5 .25 .125 .0625 .0625:
  # before = 0, .5, .75, .875
  pow2_1V = jnp.log(jnp.asarray([[0.5, 0.25, 0.125, 0.0625, 0.0625]]))
  assert survivors(top_p=0.5, logits_1V=pow2_1V) == [0]          # before == top_p is dropped
  assert survivors(top_p=0.5001, logits_1V=pow2_1V) == [0, 1]
  assert survivors(top_p=0.75, logits_1V=pow2_1V) == [0, 1]
  assert survivors(top_p=0.7501, logits_1V=pow2_1V) == [0, 1, 2]
  # Ties with the last kept token are all kept (no arbitrary order among equal tokens)
  flat_1V = jnp.zeros((1, 4))
  assert len(survivors(top_p=0.5, logits_1V=flat_1V)) == 4
  assert len(survivors(top_k=2, logits_1V=flat_1V)) == 4
  assert survivors(top_p=0.9, logits_1V=pow2_1V) == [0, 1, 2, 3, 4]   # .0625 tie at the edge
  # Against a sort-based reference on random rows of a large vocabulary (no ties)
  rng = np.random.default_rng(0)
  big_BV = rng.normal(size=(6, 5000)).astype(np.float32) * 3
  for k, p_ in ((0, 0.9), (50, 1.0), (300, 0.7), (0, 0.05)):
    got = np.isfinite(np.asarray(filter_logits(jnp.asarray(big_BV), jnp.float32(0.8),
                                               jnp.int32(k), jnp.float32(p_))))
    for row, keep in zip(big_BV, got):
      order = np.argsort(-row)
      probs = np.exp((row - row.max()) / 0.8)
      probs = probs / probs.sum()
      ranks = np.arange(len(row)) < (k if k > 0 else len(row))
      q = np.where(ranks, probs[order], 0.0)
      q = q / q.sum()
      before = np.cumsum(q) - q
      want = np.zeros(len(row), bool)
      want[order] = ranks & ((before < p_) | (np.arange(len(row)) == 0) | (p_ >= 1.0))
      assert (keep == want).all(), (k, p_, np.flatnonzero(keep != want)[:5])
  # Top-p acts on the top-k renormalised distribution: top-3 gives .588 .235 .176.
  assert survivors(top_k=3, top_p=0.8) == [0, 1]   # unrenormalised would keep [0, 1, 2]
  # Top-p acts after temperature: T=.5 gives .769 .123 .069 ...
  assert survivors(temperature=0.5, top_p=0.8) == [0, 1]
  assert survivors(temperature=1.0, top_p=0.8) == [0, 1, 2]


def filtered_dist(keep, temperature=1.0):
  p = PROBS ** (1.0 / temperature)
  p = np.where(np.isin(np.arange(len(p)), keep), p, 0.0)
  return p / p.sum()


@pytest.mark.parametrize("temperature,top_k,top_p,keep", [
    (1.0, 0, 1.0, [0, 1, 2, 3, 4]),
    (1.0, 2, 1.0, [0, 1]),
    (1.0, 0, 0.8, [0, 1, 2]),
    (1.0, 3, 0.8, [0, 1]),
    (0.5, 0, 1.0, [0, 1, 2, 3, 4]),
    (2.0, 4, 1.0, [0, 1, 2, 3]),
])
def test_empirical_frequencies_match_filtered_distribution(temperature, top_k, top_p, keep):
  n = 20000
  logits_BV = jnp.broadcast_to(LOGITS_1V, (n, 5))
  tokens_B, logprobs_B = jax.jit(sample_token)(logits_BV, jax.random.key(0), jnp.float32(temperature),
                                               jnp.int32(top_k), jnp.float32(top_p))
  freq = np.bincount(np.asarray(tokens_B), minlength=5) / n
  np.testing.assert_allclose(freq, filtered_dist(keep, temperature), atol=0.015)
  assert set(np.unique(np.asarray(tokens_B)).tolist()) == set(keep)
  # Logprobs are under the unfiltered temperature-1 distribution.
  np.testing.assert_allclose(np.asarray(logprobs_B), np.log(PROBS)[np.asarray(tokens_B)], atol=1e-5)


@pytest.mark.parametrize("V", [SAMPLE_BLOCK, 3 * SAMPLE_BLOCK + 37])
def test_two_level_inverse_cdf_draws_the_categorical_distribution(V):
  # Mass in the first and last slot of blocks, in the padded last block, zeros between.
  from scipy import stats
  rng = np.random.default_rng(0)
  support = sorted({0, SAMPLE_BLOCK - 1, V - 1} | set(rng.choice(V, 5, replace=False).tolist()))
  w_V = np.zeros(V)
  w_V[support] = rng.uniform(0.5, 3.0, len(support))
  n = 40000
  tokens_B = np.asarray(jax.jit(sample_categorical)(
      jnp.broadcast_to(jnp.asarray(w_V, jnp.float32), (n, V)), jax.random.key(7)))
  assert set(np.unique(tokens_B).tolist()) <= set(support)      # a zero weight is never drawn
  counts = np.bincount(tokens_B, minlength=V)[support]
  p = stats.chisquare(counts, n * w_V[support] / w_V.sum()).pvalue
  assert p > 1e-3, (counts, w_V[support])
  # Same key, same draws; one weight: always that index.
  again = np.asarray(jax.jit(sample_categorical)(
      jnp.broadcast_to(jnp.asarray(w_V, jnp.float32), (n, V)), jax.random.key(7)))
  np.testing.assert_array_equal(tokens_B, again)
  one = np.zeros((4, V), np.float32)
  one[:, V - 1] = 1e-30
  np.testing.assert_array_equal(sample_categorical(jnp.asarray(one), jax.random.key(0)), V - 1)


def test_temperature_zero_is_argmax_whatever_the_filters():
  logits_BV = jnp.asarray(np.random.default_rng(0).standard_normal((16, 64)), jnp.float32)
  for top_k, top_p in [(0, 1.0), (3, 0.5), (1, 0.01)]:
    tokens_B, _ = sample_token(logits_BV, jax.random.key(1), jnp.float32(0.0), jnp.int32(top_k),
                               jnp.float32(top_p))
    np.testing.assert_array_equal(tokens_B, np.argmax(np.asarray(logits_BV), -1))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_a_model_trained_with_remat_samples_like_the_plain_one(remat):
  """Remat is a training-time memory trade; generation from a model configured with it (the
  HH and accelerator presets sample from their remat SFT models) gives the plain model's
  tokens and logprobs (it crashed inside the decode loop: nnx.remat under lax.while_loop)."""
  import dataclasses
  _, mesh, params = setup()
  plain = make_sampler(NO_EOS).generate(params, PROMPTS, max_new_tokens=N, temperature=1.0, seed=3)
  mdef = model_def(dataclasses.replace(CFG, remat=remat))
  out = Sampler(mdef, mesh, RULES, pad_id=PAD, eos_id=NO_EOS, prompt_buckets=(8,)).generate(
      params, PROMPTS, max_new_tokens=N, temperature=1.0, seed=3)
  np.testing.assert_array_equal(out.tokens, plain.tokens)
  np.testing.assert_allclose(out.logprobs, plain.logprobs, atol=1e-5, rtol=0)
