"""The synthetic sort task's preference pairs (`pit.data.synthetic`) as a TFDS
dataset (array_record, no TensorFlow): splits `train` (training item sets) and
`validation` (held-out item sets), each record prompt, chosen, rejected,
margin, scores [chosen, rejected] (oracle), errors [chosen, rejected] (number
of controlled errors), nested (chosen is the rejected response with errors
fixed). Generated deterministically from the config's (n_train, n_eval, seed);
no source files. `to_pair` turns a record read back into a PreferencePair.
The builder holds the default task ("sort"); other task variants
(`synthetic.TASKS`) are read with `data.source=synthetic` and `data.synthetic_task`.
Scores and margin are stored as float32 (TFDS serialises floats as float32), so
they read back rounded to float32; strings and error counts are exact.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from pit.data import synthetic
from pit.data.builders import _base
from pit.data.pairs import PreferencePair


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """A synthetic dataset's size (pairs per split) and generation seed."""
  n_train: int = 10000
  n_eval: int = 500
  seed: int = 0


class Synthetic(_base.PitBuilder):
  """Preference pairs of the synthetic sort task with oracle scores (generated:
  no manual_dir or download involved)."""

  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="10000 train / 500 validation pairs, seed 0"),
      SyntheticConfig(name="small", description="256 train / 64 validation pairs, seed 0",
                      n_train=256, n_eval=64),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self):
    return self.make_info(  # keeps generation order
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "prompt": tfds.features.Text(),
            "chosen": tfds.features.Text(),
            "rejected": tfds.features.Text(),
            "margin": np.float32,
            "scores": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "errors": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "nested": np.bool_,
        }))

  def expected_manual_files(self):
    """[]: the dataset is generated, there are no source files."""
    return []

  def find_manual_files(self, manual_dir):
    """{}: the dataset is generated, there are no source files."""
    return {}

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    return {"train": self._generate_examples(cfg.n_train, cfg.seed, "train"),
            "validation": self._generate_examples(cfg.n_eval, cfg.seed, "eval")}

  def _generate_examples(self, n, seed, split):
    for i, p in enumerate(synthetic.preference_pairs(n, seed, split=split)):
      yield i, to_record(p)


def to_record(p: PreferencePair) -> dict:
  """A synthetic PreferencePair -> the feature dict written (scores and margin as
  float32)."""
  m = p.meta
  return {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "margin": p.margin,
          "scores": np.array([m["chosen_score"], m["rejected_score"]], np.float32),
          "errors": np.array([m["chosen_errors"], m["rejected_errors"]], np.int32),
          "nested": bool(m["nested"])}


def _str(x) -> str:
  return bytes(x).decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def to_pair(rec: dict) -> PreferencePair:
  """A record read back (raw from `tfds.data_source` or decoded) -> PreferencePair
  equal to the one it was built from."""
  scores, errors = [float(x) for x in rec["scores"]], [int(x) for x in rec["errors"]]
  return PreferencePair(_str(rec["prompt"]), _str(rec["chosen"]), _str(rec["rejected"]),
                        float(rec["margin"]), {
                            "chosen_score": scores[0], "rejected_score": scores[1],
                            "chosen_errors": errors[0], "rejected_errors": errors[1],
                            "nested": bool(rec["nested"])})
