"""pit.bench --peer=torch: both sides compute the same function on the same data, the summary
takes medians and ratios the right way round, and the flat 2-D matmul equals the einsum."""
import json

import numpy as np
import pytest

from pit import bench_peer


def test_both_sides_share_batches_and_pair_layout():
  b = bench_peer.pair_batch(3, 8, 50, seed=1)
  assert b["inputs"].shape == (3, 2, 8)
  # chosen and rejected share the prompt half, differ after it; loss on the response half
  np.testing.assert_array_equal(b["inputs"][:, 0, :4], b["inputs"][:, 1, :4])
  np.testing.assert_array_equal(b["targets"][..., :-1], b["inputs"][..., 1:])
  assert b["loss_mask"][..., :3].sum() == 0 and b["loss_mask"][..., 3:].min() == 1
  s1, s2 = bench_peer.sft_batch(2, 6, 40, seed=3), bench_peer.sft_batch(2, 6, 40, seed=3)
  np.testing.assert_array_equal(s1["inputs"], s2["inputs"])


def _raw(pit, torch, key):
  return {"pit": [{"result": {key: v, "first_loss": 1.0}, "maxrss_gb": 1.0} for v in pit],
          "torch": [{"result": {key: v, "first_loss": 1.5}, "maxrss_gb": 2.0} for v in torch]}


def test_summary_takes_medians_and_ratios_pit_over_peer():
  raw = {"sft": _raw([100.0, 300.0, 200.0], [100.0, 100.0, 400.0], "tokens_per_s"),
         "dpo": _raw([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], "pairs_per_s")}
  s = bench_peer.summarize(raw, {})
  assert s["sft"]["ratio"] == pytest.approx(2.0)     # median 200 / median 100
  assert s["dpo"]["ratio"] == pytest.approx(0.5)
  assert s["sft"]["first_loss_abs_diff"] == pytest.approx(0.5)
  scaling = {"pit": [{"result": {"128": {"step_s": 2.0}}}],
             "torch": [{"result": {"128": {"step_s": 3.0}}}]}
  s = bench_peer.summarize({"scaling": scaling}, {"scaling_seqs": [128]})
  assert s["scaling"]["128"]["ratio"] == pytest.approx(1.5)   # time: peer / PIT


def test_flat_matmul_equals_tensordot():
  import jax.numpy as jnp
  from pit.model import flat_matmul
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 4, 5))
  w = rng.standard_normal((4, 5, 6, 2))
  np.testing.assert_allclose(np.asarray(flat_matmul(jnp.asarray(x), jnp.asarray(w), 2)),
                             np.tensordot(x, w, 2), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="contract"):
    flat_matmul(jnp.asarray(x), jnp.asarray(w.transpose(1, 0, 2, 3)), 2)


def test_peer_run_same_function_on_a_tiny_model(tmp_path, capsys):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from pit import bench
  out = tmp_path / "peer.json"
  bench.main(["--peer=torch", "--parts=sft,dpo,decode", "--rounds=1", "--steps=1",
              "--d_model=32", "--num_layers=2", "--num_heads=4", "--d_ff=64", "--vocab_size=96",
              "--batch_size=2", "--seq_len=16", "--decode_batches=2", "--prompt_len=8",
              "--new_tokens=20", "--decode_reps=1", f"--json_out={out}"])
  s = json.loads(out.read_text())["summary"]
  # the exported weights and the shared batches give both sides the same first-step losses
  assert s["sft"]["first_loss_abs_diff"] < 1e-4, s["sft"]
  assert s["dpo"]["first_loss_abs_diff"] < 1e-4, s["dpo"]
  assert s["decode"]["2"]["greedy_identical"]
  for part in ("sft", "dpo"):
    assert s[part]["ratio"] > 0
  assert "SFT step 2x16" in capsys.readouterr().out
