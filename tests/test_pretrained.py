"""`model.init_from`: every pipeline starts from a pretrained model, and what flows is checked —
the weights a stage trains from (logits equal transformers'), the shape and tokenizer saved
with the run, the trunk a reward model gets, and export back to HF."""
import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pit import pretrained, roles  # noqa: E402
from pit import sharding as shd  # noqa: E402
from pit.main import run  # noqa: E402
from tests.helpers import CHATML, build_hf_model_dir  # noqa: E402

CORPUS = ["add: 97+53\n150", "reverse: qpmzj\njzmpq", "sort: 3 1 2\n1 2 3", "upper: pit\nPIT",
          "Human: hello there Assistant: hi, how can I help?"] * 20


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf_llama")
  model = build_hf_model_dir(path, CORPUS)
  return str(path), model


def _config(name, preset, **model):
  c = importlib.import_module(f"configs.{name}").get_config(preset)
  c.progress = False
  c.train.update(steps=1, batch_size=8, log_every=1, eval_every=0)
  c.optim.update(learning_rate=0.0, warmup_steps=0)  # weights stay what they started as
  c.checkpoint.update(every=1, async_save=False)
  c.model.update(model)
  return c


def _logits(mdef, params, ids):
  mesh = shd.make_mesh((1, -1, 1))

  @jax.jit
  def f(p, t):
    with shd.axis_rules(mesh, shd.DEFAULT_RULES):
      return mdef.merge(p)(t)[0]
  return np.asarray(f(params, ids))


def _hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(ids, np.int64))).logits.numpy()


def test_sft_and_reward_start_from_hf_and_checkpoint_and_export_back(hf_dir, tmp_path):
  path, model = hf_dir
  mesh = shd.make_mesh((1, -1, 1))
  ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (8, 12))

  # SFT from hf:DIR. The default preset says d_model 128 and a byte tokenizer: both come
  # from the HF directory instead, and the saved config says so.
  sft_dir = str(tmp_path / "sft")
  run(_config("sft", "tiny", init_from=f"hf:{path}"), sft_dir)
  saved = json.load(open(os.path.join(sft_dir, "config_sft.json")))
  assert saved["model"]["d_model"] == 32 and saved["model"]["vocab_size"] == model.config.vocab_size
  assert saved["model"]["family"] == "llama" and saved["model"]["tie_embeddings"] is True
  assert saved["tokenizer"] == {"kind": "hf", "path": path, "chat_template": True}
  policy = roles.load("policy", sft_dir, mesh=mesh, rules=shd.DEFAULT_RULES)
  np.testing.assert_allclose(_logits(policy.mdef, policy.params, ids), _hf_logits(model, ids),
                             atol=1e-4, rtol=0)

  # A reward model from hf:DIR: the HF trunk and a fresh scalar head.
  rm_dir = str(tmp_path / "rm")
  rm_cfg = _config("reward", "tiny", init_from=f"hf:{path}")
  rm_cfg.data.update(synthetic_train_size=64, synthetic_eval_size=16)
  run(rm_cfg, rm_dir)
  rm = roles.load("reward", rm_dir, mesh=mesh, rules=shd.DEFAULT_RULES)
  for k in ("embed", "block_1", "final_norm"):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 rm.params[k], policy.params[k])
  assert float(np.std(np.asarray(rm.params["score"]))) > 0   # a real (random) head, not zeros

  # checkpoint:DIR — a stage starting from a PIT run of an HF model.
  sft2 = str(tmp_path / "sft2")
  run(_config("sft", "tiny", init_from=f"checkpoint:{sft_dir}"), sft2)
  again = roles.load("policy", sft2, mesh=mesh, rules=shd.DEFAULT_RULES)
  np.testing.assert_allclose(_logits(again.mdef, again.params, ids), _hf_logits(model, ids),
                             atol=1e-4, rtol=0)
  assert json.load(open(os.path.join(sft2, "config_sft.json")))["tokenizer"]["path"] == path

  # Export back: transformers loads the model, the tokenizer and its chat template.
  out = str(tmp_path / "exported")
  r = subprocess.run([sys.executable, "-m", "pit.convert", f"--from={sft2}", f"--to=hf:{out}"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  np.testing.assert_allclose(_hf_logits(back, ids), _hf_logits(model, ids), atol=1e-5)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>"

  # ... and the reward model as a sequence classifier.
  r = subprocess.run([sys.executable, "-m", "pit.convert", f"--from={rm_dir}",
                      f"--to=hf:{tmp_path / 'rm_hf'}"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  cls = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm_hf"))
  assert type(cls).__name__ == "LlamaForSequenceClassification"


def test_convert_hf_to_checkpoint_and_back(hf_dir, tmp_path):
  path, model = hf_dir
  ck = str(tmp_path / "ck")
  r = subprocess.run([sys.executable, "-m", "pit.convert", f"--from=hf:{path}", f"--to=checkpoint:{ck}"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  loaded = roles.load("policy", ck, mesh=shd.make_mesh((1, -1, 1)), rules=shd.DEFAULT_RULES)
  ids = np.arange(24).reshape(2, 12) % model.config.vocab_size
  np.testing.assert_allclose(_logits(loaded.mdef, loaded.params, ids), _hf_logits(model, ids),
                             atol=1e-4, rtol=0)
  r = subprocess.run([sys.executable, "-m", "pit.convert", "--from=hf:/no/such/dir", "--to=hf:x"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "model.init_from" in r.stderr and "/no/such/dir" in r.stderr


def test_teacher_and_judge_models_compute_like_the_run(hf_dir, tmp_path):
  """pretrained.load_lm (self-rewarding teachers and LLM judges): an hf: or checkpoint: model
  takes the run's scanned layers and attention path, and computes the same logits."""
  from pit.model import ModelConfig
  path, model = hf_dir
  ck = str(tmp_path / "ck")
  r = subprocess.run([sys.executable, "-m", "pit.convert", f"--from=hf:{path}", f"--to=checkpoint:{ck}"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  mesh = shd.make_mesh((1, -1, 1))
  run_cfg = ModelConfig(scan_layers=True, attention="dot_product")   # the run's; shape unrelated
  ids = np.arange(24).reshape(2, 12) % model.config.vocab_size
  for spec in (f"hf:{path}", ck):
    mdef, params, _ = pretrained.load_lm(spec, mesh, shd.DEFAULT_RULES, compute_like=run_cfg)
    assert mdef.cfg.scan_layers and mdef.cfg.attention == "dot_product", spec
    assert mdef.cfg.d_model == 32 and "layers" in params, spec    # its own shape, stacked
    np.testing.assert_allclose(_logits(mdef, params, ids), _hf_logits(model, ids), atol=1e-4,
                               rtol=0, err_msg=spec)
    plain, _, _ = pretrained.load_lm(spec, mesh, shd.DEFAULT_RULES)
    assert not plain.cfg.scan_layers and plain.cfg.attention == "plain"


def test_bad_init_from_values_are_named(tmp_path):
  with pytest.raises(ValueError, match="model.init_from: 'llama:/x'"):
    pretrained.parse("llama:/x")
  with pytest.raises(FileNotFoundError, match="model.init_from: directory not found: /no/where"):
    pretrained.parse("hf:/no/where")
  with pytest.raises(FileNotFoundError, match="model.init_from: file not found"):
    pretrained.parse(f"gguf:{tmp_path}/missing.gguf")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    pretrained.source_model_config(*pretrained.parse(f"hf:{tmp_path / 'empty'}"))
  assert pretrained.parse("") == ("", "")


def test_ppo_policy_value_and_kl_reference_come_from_init_from(hf_dir, tmp_path):
  """PPO with no init checkpoint: policy, KL reference and value trunk are the HF model."""
  from pit.pipelines import ppo as ppo_pipeline
  path, model = hf_dir
  c = _config("ppo", "tiny", init_from=f"hf:{path}")
  c.ppo.update(init_checkpoint_dir="", rollout_batch_size=8, max_new_tokens=4, epochs=1,
               scorer="oracle")
  c.train.update(steps=1, batch_size=8)
  seen = {}
  orig = ppo_pipeline.Rollouts.__init__

  def spy(self, *a, **kw):
    orig(self, *a, **kw)
    seen["rollouts"] = self
  ppo_pipeline.Rollouts.__init__ = spy
  try:
    run(c, str(tmp_path / "ppo"))
  finally:
    ppo_pipeline.Rollouts.__init__ = orig
  ref = seen["rollouts"].ref_params
  rt_mdef = roles.load("policy", str(tmp_path / "ppo"), mesh=shd.make_mesh((1, -1, 1)),
                       rules=shd.DEFAULT_RULES).mdef
  ids = np.arange(24).reshape(2, 12) % model.config.vocab_size
  np.testing.assert_allclose(_logits(rt_mdef, ref, ids), _hf_logits(model, ids), atol=1e-4, rtol=0)
