"""The one generation service: text prompts in, sampled responses out, with the one sampler.

Every place PIT samples text goes through a `Generator`: `pipeline=generate` (N samples per
prompt), PIT's iterative improvement and Self-Refine, the references an RL round samples from
M_P, LLM judges' judgements and the evaluation's systems. (PPO rollouts call the sampler on
token ids directly: they need the ids and log-probs, not text.)

Decoding: `Settings` (max_new_tokens, temperature, top_k, top_p, seed, batch_size,
max_prompt_len, prompt_buckets); temperature 0 is greedy. Prompts are encoded by
`pit.data.encoding.prompt_ids` (a longer prompt keeps its prefix and its end). Batching by
length: prompts are sorted by token length (stable) and cut into chunks of `batch_size` (the
last padded with repeats, so every chunk has one static shape), and each chunk is left-padded
to the smallest prompt bucket that holds it; answers come back in input order. Seeds: chunk
c of call k samples with `seed + k * CALL_STRIDE + c`, so a run is reproducible and distinct
calls draw distinct samples; greedy outputs do not depend on batching at all.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from pit import roles
from pit.data import encoding
from pit.sampler import Sampler

CALL_STRIDE = 100_003


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a Generator decodes (temperature 0: greedy; top_k 0 / top_p 1: off; max_new_tokens
  and max_prompt_len in tokens)."""
  max_new_tokens: int = 64
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  batch_size: int = 32
  max_prompt_len: int = 0          # 0: no truncation
  prompt_buckets: tuple = ()       # () -> the sampler's default buckets

  @classmethod
  def from_config(cls, section, **overrides) -> "Settings":
    """From a config section with these fields (`improve`, `generate`, ...), missing ones
    at their defaults."""
    get = lambda k, d: section.get(k, d) if hasattr(section, "get") else getattr(section, k, d)
    kw = {f.name: get(f.name, f.default) for f in dataclasses.fields(cls)}
    kw.update(overrides)
    kw["prompt_buckets"] = tuple(kw["prompt_buckets"] or ())
    for k in ("max_new_tokens", "top_k", "seed", "batch_size", "max_prompt_len"):
      kw[k] = int(kw[k])
    for k in ("temperature", "top_p"):
      kw[k] = float(kw[k])
    return cls(**kw)

  def at_temperature(self, temperature: float) -> "Settings":
    """The same settings decoding at `temperature`."""
    return dataclasses.replace(self, temperature=float(temperature))


@dataclasses.dataclass
class Generation:
  """One sampled response: its text, token ids (the eos, when sampled, last), summed log-prob
  (nats) and whether the model ended it (sampled eos) rather than the token budget."""
  text: str
  tokens: list[int]
  logprob: float      # sum of the sampled tokens' log-probs (unfiltered, temperature 1)
  ended: bool = False


class Generator:
  """`generator(texts, call) -> responses` (see module docstring)."""

  def __init__(self, sampler: Sampler, params, tokenizer, settings: Settings):
    if settings.batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {settings.batch_size}")
    self.sampler, self.params, self.tok, self.settings = sampler, params, tokenizer, settings

  def generations(self, texts: Sequence[str], call: int = 0) -> list[Generation]:
    """One Generation per text, in input order (batched by length; seeds from `call`)."""
    s, bs = self.settings, self.settings.batch_size
    ids = [encoding.prompt_ids(self.tok, t, s.max_prompt_len) for t in texts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: list[Generation | None] = [None] * len(ids)
    for c, start in enumerate(range(0, len(ids), bs)):
      rows = [int(i) for i in order[start:start + bs]]
      chunk = [ids[i] for i in rows]
      chunk += [chunk[-1]] * (bs - len(chunk))
      res = self.sampler.generate(self.params, chunk, max_new_tokens=s.max_new_tokens,
                                  temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                  seed=s.seed + int(call) * CALL_STRIDE + c)
      for j, i in enumerate(rows):
        n = int(res.lengths[j])
        toks = [int(t) for t in res.tokens[j, :n]]
        out[i] = Generation(self.tok.decode(toks), toks, float(np.sum(res.logprobs[j, :n])),
                            ended=bool(toks) and toks[-1] == self.tok.eos_id)
    return out

  def __call__(self, texts: Sequence[str], call: int = 0) -> list[str]:
    return [g.text for g in self.generations(texts, call)]

  def sample(self, texts: Sequence[str], n: int, call: int = 0) -> list[list[Generation]]:
    """`n` samples per prompt ([prompt][sample]); sample k is call `call * n + k`."""
    if n < 1:
      raise ValueError(f"num_samples must be >= 1, got {n}")
    if n > 1 and self.settings.temperature <= 0:
      raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding repeats one "
                       "response)")
    draws = [self.generations(texts, call * n + k) for k in range(n)]
    return [[d[i] for d in draws] for i in range(len(texts))]


def sampler_for(mdef, tokenizer, mesh, rules, settings: Settings, samplers: dict | None = None):
  """The compiled sampler of a model shape, shared through `samplers` (shape -> Sampler)."""
  samplers = {} if samplers is None else samplers
  key = (mdef.cfg, settings.prompt_buckets)
  if key not in samplers:
    samplers[key] = Sampler(mdef, mesh, rules, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                            prompt_buckets=settings.prompt_buckets or None)
  return samplers[key]


def from_checkpoint(rt, path: str, settings: Settings, *, field: str = "policy",
                    samplers: dict | None = None, seed_offset: int = 0) -> Generator:
  """A Generator of the policy at `path` (a workdir or checkpoints folder; its saved model
  shape, else `rt.mdef`; `pit.roles`), sharing compiled samplers through `samplers`."""
  model = roles.load("policy", path, mesh=rt.mesh, rules=rt.rules, default_mdef=rt.mdef,
                     field=field)
  logging.info("%s: %s at step %d", field, path, model.step)
  sampler = sampler_for(model.mdef, rt.tokenizer, rt.mesh, rt.rules, settings, samplers)
  return Generator(sampler, model.params, rt.tokenizer,
                   dataclasses.replace(settings, seed=settings.seed + int(seed_offset)))
