"""Parameters are created directly in their shards; config validation."""
import jax
import numpy as np
import pytest
from flax import nnx

from pit import sharding as shd
from pit.model import ModelConfig, Transformer
from pit.params import init_params, model_def, num_params
from tests.helpers import mesh


def test_init_never_materialises_whole_params_on_one_device():
  cfg = ModelConfig(vocab_size=512, d_model=256, num_layers=2, num_heads=8, d_ff=1024)
  mdef = model_def(cfg)
  m = mesh((1, 8, 1))
  shardings = mdef.shardings(m, shd.DEFAULT_RULES)
  init = jax.jit(lambda key: nnx.state(Transformer(cfg, nnx.Rngs(params=key))).to_pure_dict(),
                 out_shardings=shardings)
  stats = init.lower(jax.random.key(0)).compile().memory_analysis()
  total_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(mdef.abstract_params))
  # Per-device output and temporaries stay near 1/8 of the model, never the whole model.
  assert stats.output_size_in_bytes <= total_bytes / 8 * 1.1
  assert stats.temp_size_in_bytes < total_bytes / 2
  params = init_params(mdef, m, shd.DEFAULT_RULES, 0)
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(params))
  assert per_device <= total_bytes / 8 * 1.1
  assert num_params(params) == sum(a.size for a in jax.tree.leaves(mdef.abstract_params))


def test_same_seed_same_params_on_any_mesh():
  mdef = model_def(ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64))
  a = jax.device_get(init_params(mdef, mesh((1, 1, 1)), shd.DEFAULT_RULES, 5))
  b = jax.device_get(init_params(mdef, mesh((2, 2, 2)), shd.DEFAULT_RULES, 5))
  c = jax.device_get(init_params(mdef, mesh((1, 1, 1)), shd.DEFAULT_RULES, 6))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["embed"], c["embed"])


@pytest.mark.parametrize("field,value,needle", [
    ("num_kv_heads", 3, "num_kv_heads"), ("norm", "batchnorm", "model.norm"),
    ("d_model", 0, "model.d_model"), ("mlp", "swish", "model.mlp")])
def test_bad_model_config_names_the_field(field, value, needle):
  base = dict(vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64)
  with pytest.raises(ValueError, match=needle):
    ModelConfig(**{**base, field: value})
  with pytest.raises(ValueError, match="unknown field"):
    ModelConfig.from_config({**base, "n_layer": 2})


def test_mesh_shape_minus_one_and_errors():
  assert dict(shd.make_mesh((2, -1, 1)).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="needs 6 devices"):
    shd.make_mesh((2, 3, 1))
  with pytest.raises(ValueError, match="at most one"):
    shd.make_mesh((-1, -1, 1))


def test_logical_rules_drop_axes_that_do_not_divide():
  m = shd.make_mesh((2, 2, 2))
  rules = shd.DEFAULT_RULES
  assert shd.logical_to_spec(("embed", "mlp"), rules, m, (64, 128)) == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert shd.logical_to_spec(("embed", "mlp"), rules, m, (63, 128)) == jax.sharding.PartitionSpec(None, "tensor")
  assert shd.logical_to_spec(("activation_batch", None), rules, m, (4, 3)) == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None)
  assert shd.logical_to_spec(("activation_batch", None), rules, m, (2, 3)) == \
      jax.sharding.PartitionSpec("data", None)
