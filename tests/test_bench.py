"""pit.bench: FLOP count vs a hand count and vs XLA's cost analysis; smoke runs."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pit import bench
from pit import sharding as shd
from pit.model import ModelConfig, Transformer

RULES = shd.DEFAULT_RULES
TINY = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   d_ff=48, max_seq_len=64)


def _hand_counts(D, Lyr, H, K, E, F, V, *, tied=False, gated=True, pos=0):
  attn = D * H * E + 2 * D * K * E + H * E * D
  mlp = (3 if gated else 2) * D * F
  head = D * V
  norms = (2 * Lyr + 1) * D
  embed = V * D + pos * D
  n_matmul = Lyr * (attn + mlp) + head
  total = Lyr * (attn + mlp) + norms + embed + (0 if tied else head)
  return n_matmul, total, embed


@pytest.mark.parametrize("kw", [
    dict(),
    dict(tie_embeddings=True),
    dict(mlp="gelu", position="learned", head_dim=16),
    dict(scan_layers=True),                  # stacked norm scales [N, D] are not matmuls
    dict(qkv_bias=True, scan_layers=True),   # nor are the [heads, head_dim] biases
    dict(qkv_bias=True),
])
def test_param_and_flop_counts_match_hand_count(kw):
  cfg = TINY.replace(**kw)
  E = cfg.dim_per_head
  n_matmul, total, embed = _hand_counts(
      32, 2, 4, 2, E, 48, 64, tied=cfg.tie_embeddings, gated=cfg.mlp == "swiglu",
      pos=cfg.max_seq_len if cfg.position == "learned" else 0)
  if cfg.qkv_bias:
    total += 2 * (4 + 2 * 2) * E   # bq [H, E], bk and bv [K, E] per layer
  c = bench.flop_counts(cfg, seq_len=16)
  assert c["params_matmul"] == n_matmul
  assert c["params_total"] == total
  assert c["params_non_embedding"] == total - embed
  attn = 12 * 2 * 16 * 4 * E
  assert c["attention_flops_per_token_train"] == attn
  assert c["flops_per_token_train"] == 6 * n_matmul + attn
  assert c["flops_per_token_fwd"] * 3 == c["flops_per_token_train"]


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_flop_formula_matches_xla_cost_analysis():
  # Matmul-dominated config so elementwise work (norms, softmax, RoPE) is small.
  cfg = ModelConfig(vocab_size=256, d_model=128, num_layers=1, num_heads=4, d_ff=384,
                    max_seq_len=64)
  B, L = 2, 64
  c = bench.flop_counts(cfg, seq_len=L)
  model = Transformer(cfg, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  batch = bench.random_batch(B, L, cfg.vocab_size)

  def loss(params, batch):
    logits, _ = nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["mask"])
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  fwd = _xla_flops(loss, params, batch) / (B * L)
  train = _xla_flops(jax.grad(loss), params, batch) / (B * L)
  # XLA also counts elementwise FLOPs, so it sits slightly above the matmul-only count.
  assert c["flops_per_token_fwd"] <= fwd <= 1.06 * c["flops_per_token_fwd"], (fwd, c)
  assert c["flops_per_token_train"] <= train <= 1.06 * c["flops_per_token_train"], (train, c)


def test_cli_writes_json(tmp_path, capsys):
  # One bfloat16 run covers every part (a float32 run is the same code minus the
  # float32 reference ceiling); compiles dominate the test's time.
  out = tmp_path / "bench.json"
  report = bench.main([
      "--d_model=32", "--num_layers=1", "--num_heads=2", "--d_ff=64", "--vocab_size=64",
      "--seq_len=16", "--batch_size=8", "--steps=1", "--warmup=1", "--dtype=bfloat16",
      "--decode_batches=1", "--decode_tokens=3", "--prompt_len=4", "--matmul_reps=1",
      "--matmul_squares=64", "--mesh=1,1,1", "--compile_layers=3", f"--json_out={out}"],
      devices=jax.devices()[:1])
  text = capsys.readouterr().out
  assert "FLOPs/token (train)" in text and "achieved / ceiling" in text and "decode" in text
  assert "cross-check: XLA cost_analysis" in text and "float32 ceiling (reference)" in text
  saved = json.loads(out.read_text())
  assert saved["counts"] == report["counts"]
  t = saved["train"]
  assert t["tokens_per_step"] == 8 * 16 and t["tokens_per_s"] > 0 and t["num_compiled"] == 1
  assert np.isfinite(t["final_loss"]) and t["fraction_of_ceiling"] > 0
  ce = saved["ceiling"]
  assert ce["dtype"] == "bfloat16" and ce["float32_ceiling_flops_per_s"] > 0
  assert {c["kind"] for c in ce["cases"]} == {"nn", "tn", "nt"}
  assert ce["ceiling_flops_per_s"] == max(c["flops_per_s"] for c in ce["cases"])
  assert t["fraction_of_float32_ceiling"] == pytest.approx(
      t["flops_per_s"] / ce["float32_ceiling_flops_per_s"])
  co = saved["compile"]
  assert co["num_layers"] == 3 and "trace + lower / compile" in text
  assert all(co[k]["lower_s"] > 0 and co[k]["compile_s"] > 0 for k in ("unrolled", "scanned"))
  [d] = saved["decode"]
  assert d["batch_size"] == 1 and d["new_tokens"] == 3 and d["decode_tokens_per_s"] > 0
