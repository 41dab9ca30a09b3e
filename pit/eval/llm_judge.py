"""An LLM judge (LLM-as-a-Judge) from a Hugging Face directory or any pit model.

Two modes:
- pairwise (`LMJudge.pairwise`, a `pit.eval.winrate.PairJudge`): the prompt
  shows the instruction and two responses and ends with "...Answer:"; the verdict
  compares log p(" A" | prompt) with log p(" B" | prompt) (the sum over the
  choice's tokens when a choice spans several). Deterministic, nothing sampled.
  Verdict: +1 (first better) if logp_A - logp_B > `tie_margin`, -1 if below
  -tie_margin, else 0. P(first better) = sigmoid(logp_A - logp_B).
- pointwise (`LMJudge.pointwise`, a `Scorer`): the Self-Rewarding additive
  5-point prompt (`pit.data.judge.render_judge_prompt`) is answered greedily by
  the one sampler (`pit.sampler.Sampler`, temperature 0) and read with
  `pit.data.judge.parse_judge_score`; unparseable judgements score NaN (a tie
  in `ScorerJudge`, dropped by `rm_agreement` callers).

Prompts are wrapped in the tokenizer's chat template when `chat=True` (instruct
models) and are encoded by `pit.data.encoding.prompt_ids` (as everywhere). Choice
scoring runs one jitted forward per (batch, length bucket); shapes are static.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pit import generation, hf_convert
from pit import sharding as shd
from pit.data import encoding
from pit.data.batching import bucket_length, default_buckets
from pit.losses import token_logprobs
from pit.params import ModelDef, model_def
from pit.sampler import Sampler

PAIRWISE_TEMPLATE = (
    "Which response is more helpful, accurate and harmless as an answer to the user's "
    "question? Answer A or B.\n\n"
    "Question: {instruction}\n\n"
    "Response A: {first}\n\n"
    "Response B: {second}\n\n"
    "Answer:")


class LMJudge:
  """An LM prompted as a judge: `pairwise` (a PairJudge from the log-probs of the two
  choices) and `pointwise` (a Scorer, the 0-5 additive score of a greedy judgement); see the
  module docstring. Raises ValueError for a model whose head is not 'lm'. `batch_size` is
  rounded up to a multiple of the mesh's data-parallel size."""
  def __init__(self, mdef: ModelDef, params, tokenizer, mesh, rules=shd.DEFAULT_RULES, *,
               chat: bool = True, batch_size: int = 16, choices: tuple[str, str] = (" A", " B"),
               template: str = PAIRWISE_TEMPLATE, tie_margin: float = 0.0,
               max_new_tokens: int = 256, compact: bool = False,
               length_buckets: Optional[Sequence[int]] = None):
    if mdef.cfg.head != "lm":
      raise ValueError("LMJudge needs a language-model head (model.head='lm')")
    self.mdef, self.params, self.tok, self.mesh, self.rules = mdef, params, tokenizer, mesh, tuple(rules)
    self.chat, self.choices, self.template = chat, tuple(choices), template
    self.tie_margin, self.max_new_tokens, self.compact = float(tie_margin), int(max_new_tokens), compact
    m = shd.data_parallel_size(mesh, self.rules)
    self.batch_size = -(-int(batch_size) // m) * m  # rows per forward, a multiple of the data axes
    self.buckets = tuple(length_buckets or default_buckets(mdef.cfg.max_seq_len, 16))
    self._forward = {}
    self._sampler = None
    self.unparsed = 0   # pointwise judgements whose score could not be read (NaN)

  @classmethod
  def from_hf(cls, path: str, *, tokenizer_path: Optional[str] = None, mesh=None,
              rules=shd.DEFAULT_RULES, dtype: Optional[str] = None, **kw) -> "LMJudge":
    """config.json + *.safetensors (+ tokenizer files, or `tokenizer_path`) in `path`."""
    from pit.data.tokenizer import HFTokenizer
    overrides = {"dtype": dtype} if dtype else {}
    cfg = hf_convert.config_from_hf(hf_convert.read_hf_config(path), **overrides)
    # The judge renders the template itself (`chat`), so the tokenizer must not add one.
    tok = HFTokenizer(tokenizer_path or path, chat_template=False)
    if tok.vocab_size > cfg.vocab_size:
      raise ValueError(f"{path}: tokenizer has {tok.vocab_size} ids but the model only "
                       f"{cfg.vocab_size} embeddings")
    mesh = mesh if mesh is not None else shd.make_mesh((-1, 1, 1))
    mdef = model_def(cfg)
    # tensor by tensor onto the mesh (no whole fp32 copy on the host first)
    return cls(mdef, hf_convert.load_params_sharded(path, mdef, mesh, rules), tok, mesh, rules, **kw)

  # ------------------------------------------------------------------ prompts
  def render(self, text: str) -> str:
    """`text` as one user turn of the tokenizer's chat template (`chat=True`), else
    unchanged."""
    return self.tok.render_chat([("user", text)]) if self.chat else text

  def pairwise_prompt(self, instruction: str, first: str, second: str) -> str:
    """The rendered pairwise prompt: `template` filled with the instruction and the two
    responses (first shown as A)."""
    return self.render(self.template.format(instruction=instruction, first=first, second=second))

  def _ids(self, text: str) -> list[int]:
    return encoding.prompt_ids(self.tok, text)

  def choice_sequences(self, prompt_text: str) -> list[tuple[list[int], int]]:
    """Per choice: (token ids of prompt + choice, number of prompt tokens)."""
    base = self._ids(prompt_text)
    out = []
    for c in self.choices:
      full = self._ids(prompt_text + c)
      if full[:len(base)] != base or len(full) == len(base):
        raise ValueError(f"choice {c!r} does not tokenize as a continuation of the judge prompt "
                         "(tokens merge across the boundary); change the template ending or choices")
      out.append((full, len(base)))
    return out

  # ------------------------------------------------------------------ scoring
  def _build_forward(self, L: int):
    mdef, mesh, rules = self.mdef, self.mesh, self.rules

    def run(params, inputs_BL, targets_BL, mask_BL, cont_BL):
      with shd.axis_rules(mesh, rules):
        positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), inputs_BL.shape)
        logits_BLV, _ = mdef.merge(params)(inputs_BL, positions_BL, mask_BL)
        return jnp.sum(token_logprobs(logits_BLV, targets_BL) * cont_BL, axis=1)

    out = shd.batch_sharding(mesh, rules, 1, (self.batch_size,))
    return jax.jit(run, out_shardings=out)

  def sequence_logprobs(self, sequences: Sequence[tuple[Sequence[int], int]]) -> np.ndarray:
    """Sum of log p(token) over tokens[start:] for each (tokens, start), float64 [n]."""
    n, R, pad = len(sequences), self.batch_size, self.tok.pad_id
    out = np.zeros(n, np.float64)
    for lo in range(0, n, R):
      chunk = sequences[lo:lo + R]
      longest = max(len(t) for t, _ in chunk) - 1
      if longest > self.buckets[-1]:
        raise ValueError(f"judge input {lo + int(np.argmax([len(t) for t, _ in chunk]))} has "
                         f"{longest + 1} tokens; the model takes at most {self.buckets[-1]}")
      L = bucket_length(longest, self.buckets)
      inputs = np.full((R, L), pad, np.int32)
      targets = np.full((R, L), pad, np.int32)
      mask = np.zeros((R, L), bool)
      cont = np.zeros((R, L), np.float32)
      for i, (t, start) in enumerate(chunk):  # right padding, inputs[j] predicts t[j + 1]
        t = np.asarray(t, np.int32)
        inputs[i, :len(t) - 1], targets[i, :len(t) - 1] = t[:-1], t[1:]
        mask[i, :len(t) - 1] = True
        cont[i, start - 1:len(t) - 1] = 1.0
      if L not in self._forward:
        self._forward[L] = self._build_forward(L)
      batch = shd.put_global((inputs, targets, mask, cont), self.mesh, self.rules)
      lp = shd.to_host(self._forward[L](self.params, *batch)).astype(np.float64)
      out[lo:lo + len(chunk)] = lp[:len(chunk)]
    return out

  def choice_logprobs(self, prompts, first, second) -> np.ndarray:
    """float64 [n, 2]: log p(choice A), log p(choice B) after each pairwise prompt."""
    if not (len(prompts) == len(first) == len(second)):
      raise ValueError(f"{len(prompts)} prompts, {len(first)} first and {len(second)} second responses")
    seqs = []
    for p, a, b in zip(prompts, first, second):
      seqs += self.choice_sequences(self.pairwise_prompt(p, a, b))
    return self.sequence_logprobs(seqs).reshape(len(prompts), 2)

  def pairwise(self, prompts, first, second) -> np.ndarray:
    """PairJudge: +1 first better, -1 second better, 0 tie (|logp_A - logp_B| <= tie_margin)."""
    from pit.eval.winrate import sign_with_tolerance
    lp = self.choice_logprobs(prompts, first, second)
    return sign_with_tolerance(lp[:, 0] - lp[:, 1], self.tie_margin)

  __call__ = pairwise

  def prob_first(self, prompts, first, second) -> np.ndarray:
    """P(first better) = sigmoid(logp_A - logp_B), renormalised over the two choices."""
    lp = self.choice_logprobs(prompts, first, second)
    return 1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0]))

  # ------------------------------------------------------------------ pointwise
  def judge_texts(self, instructions: Sequence[str], responses: Sequence[str], *,
                  temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Judgements of the 5-point additive prompt by the one sampler: greedy by default,
    sampled at `temperature` > 0 (seeded by `seed` and the batch)."""
    from pit.data.judge import render_judge_prompt
    if len(instructions) != len(responses):
      raise ValueError(f"{len(instructions)} instructions but {len(responses)} responses")
    if self._sampler is None:
      self._sampler = Sampler(self.mdef, self.mesh, self.rules, pad_id=self.tok.pad_id,
                              eos_id=self.tok.eos_id, prompt_buckets=self.buckets)
    settings = generation.Settings(max_new_tokens=self.max_new_tokens, temperature=temperature,
                                   seed=int(seed), batch_size=self.batch_size,
                                   prompt_buckets=self.buckets)
    gen = generation.Generator(self._sampler, self.params, self.tok, settings)
    return gen([self.render(render_judge_prompt(i, r, self.compact))
                for i, r in zip(instructions, responses)])

  def pointwise(self, instructions, responses, references=None) -> np.ndarray:
    """Scorer: the parsed 0-5 score per response, NaN where no score could be read."""
    from pit.data.judge import parse_judge_score
    del references  # the 5-point prompt judges the response alone
    out = []
    for text in self.judge_texts(list(instructions), list(responses)):
      s = parse_judge_score(text)
      out.append(math.nan if s is None else float(s))
    n_bad = sum(math.isnan(x) for x in out)
    self.unparsed += n_bad
    if n_bad:
      logging.warning("LLM judge: %d of %d judgement(s) had no readable score (NaN, counted in "
                      "LMJudge.unparsed)", n_bad, len(out))
    return np.asarray(out, np.float64)
