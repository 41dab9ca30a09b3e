"""The one way text becomes token ids, for every trainer, sampler and scorer.

A (prompt, response) pair is `prefix + encode(prompt) + encode(response) + [eos]`,
the prompt and the response encoded separately (a sampled response is the tokens
generated after the prompt's ids, so training and scoring see the boundary where
the policy does), with the tokenizer's `sequence_prefix` in front (or, for a
prompt a chat template rendered, exactly the template's ids: see
`pit.data.tokenizer`). Truncation is `pit.data.batching.make_example`'s: the
response is cut to `max_response_len` (eos kept), then the prompt keeps its prefix
and its end. SFT rows, preference pairs, PIT's gap-RM rows, reward-model and
gap-RM scorers, the sampler's prompts (generate, improve, rollouts, LLM judges)
all call these functions, so the same pair gives the same ids everywhere.
"""
from __future__ import annotations

from typing import Sequence

from pit.data import batching


def prompt_ids(tokenizer, text: str, max_len: int = 0) -> list[int]:
  """The ids of a prompt to sample from: its prefix and, when longer than `max_len`
  (> 0), its last tokens."""
  prefix, body = tokenizer.encode_prompt_parts(text)
  if max_len and len(prefix) + len(body) > max_len:
    keep = max(int(max_len) - len(prefix), 0)
    body = body[len(body) - keep:] if keep else []
  return prefix + body


def example(tokenizer, prompt: str, response: str, *, max_len: int, max_response_len: int,
            stats: batching.TruncationStats | None = None) -> batching.Example:
  """[prefix] prompt response [eos] with the loss on response + eos. With a chat template
  (`chat_active`) the response's leading whitespace is dropped: the template's assistant
  header already separates it (HH responses start with a space)."""
  prefix, body = tokenizer.encode_prompt_parts(prompt)
  if getattr(tokenizer, "chat_active", False):
    response = response.lstrip()
  return batching.make_example(prefix + body, tokenizer.encode(response), eos_id=tokenizer.eos_id,
                               max_len=max_len, max_response_len=max_response_len,
                               keep_prefix=len(prefix), stats=stats)


def text_example(tokenizer, text: str, *, max_len: int,
                 stats: batching.TruncationStats | None = None) -> batching.Example:
  """[prefix] text [eos] with the loss on every token of the text (a {"text"} record)."""
  prefix = list(tokenizer.sequence_prefix)
  return batching.make_example(prefix, tokenizer.encode(text), eos_id=tokenizer.eos_id,
                               max_len=max_len, max_response_len=max_len - len(prefix),
                               keep_prefix=len(prefix), stats=stats)


def sequence_ids(tokenizer, prompt: str, response: str, *, max_len: int,
                 max_response_len: int) -> list[int]:
  """The whole token row of `example` (what a reward model reads, eos last)."""
  return example(tokenizer, prompt, response, max_len=max_len,
                 max_response_len=max_response_len).tokens.tolist()


def prompts_ids(tokenizer, texts: Sequence[str], max_len: int = 0) -> list[list[int]]:
  """`prompt_ids` of each text."""
  return [prompt_ids(tokenizer, t, max_len) for t in texts]
