"""Small shared builders for tests."""
import signal
import subprocess
import time

import ml_collections
import numpy as np

from pit import sharding as shd
from pit.model import ModelConfig
from pit.params import model_def

TINY = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
            max_seq_len=64)


def tiny_mdef(**kw):
  return model_def(ModelConfig(**{**TINY, **kw}))


def optim_cfg(**kw):
  base = dict(learning_rate=1e-2, warmup_steps=2, decay_steps=20, end_lr_ratio=0.1,
              grad_clip_norm=1.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  return ml_collections.ConfigDict({**base, **kw})


def random_lm_batch(B=8, L=16, V=64, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(L // 2, L + 1, B)
  mask = np.arange(L)[None] < lengths[:, None]
  loss_mask = (mask & (rng.random((B, L)) < 0.7)).astype(np.float32)
  return dict(inputs=rng.integers(0, V, (B, L)).astype(np.int32),
              targets=rng.integers(0, V, (B, L)).astype(np.int32),
              loss_mask=loss_mask, mask=mask,
              positions=np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy())


def mesh(shape, n=None):
  import jax
  devices = jax.devices()[: (n or int(np.prod(shape)))]
  return shd.make_mesh(shape, devices=devices)


def sigkill_when(cmd, *, cwd, env, marker, timeout: float = 300.0):
  """Starts `cmd` and SIGKILLs it as soon as the path `marker` exists (e.g. a checkpoint
  directory), asserting it was still running then."""
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not marker.exists():
    assert proc.poll() is None, "run finished before it could be killed"
    assert time.time() < deadline, f"no {marker} after {timeout} s"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL


def without_run(summary: dict) -> dict:
  """A pipeline summary less what depends on how the run was interrupted ("run")."""
  return {k: v for k, v in summary.items() if k != "run"}


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_hf_model_dir(path, corpus, *, family="llama", vocab_size=300, seed=0, **config):
  """A tiny random HF causal LM (transformers, PyTorch CPU) with a byte-level BPE tokenizer
  trained on `corpus` and a ChatML chat template, saved as safetensors. Returns the model."""
  import torch
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
  t = Tokenizer(models.BPE(unk_token="<unk>"))
  t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = decoders.ByteLevel()
  t.train_from_iterator(list(corpus), trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=t, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>",
      unk_token="<unk>")
  fast.chat_template = CHATML
  fast.save_pretrained(str(path))
  cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
  kw = dict(vocab_size=len(fast), hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, num_hidden_layers=2, max_position_embeddings=256,
            tie_word_embeddings=True, pad_token_id=fast.pad_token_id,
            bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, **config)
  cfg = getattr(transformers, cls[family][0])(**kw)
  torch.manual_seed(seed)
  model = getattr(transformers, cls[family][1])(cfg).float().eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(str(path))
  return model


def final_params(workdir, pipeline: str = "sft"):
  """(params on the host, step) of the latest checkpoint of a pipeline's workdir, in the model
  shape its `config_<pipeline>.json` saved, restored onto one device."""
  import json
  import os
  import jax
  from pit.checkpoint import Checkpointer
  from pit.model import ModelConfig
  cfg = json.load(open(os.path.join(workdir, f"config_{pipeline}.json")))
  mdef = model_def(ModelConfig.from_config(cfg["model"]))
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1)
  params, step = ckpt.restore_params(mdef.sharded_abstract(mesh, shd.DEFAULT_RULES))
  ckpt.close()
  return jax.device_get(params), step
