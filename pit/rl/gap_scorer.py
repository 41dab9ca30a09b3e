"""PIT's gap reward model as an RL scorer: r_gap(x, y, y_ref) through the one
`RewardModelScorer`, with the input text of `pit_format.gap_input` (the same
text `pit.data.gap_batching` trains on). Rollouts must pass the references."""
from __future__ import annotations

from pit import pit_format
from pit.rl import scorers


def gap_format(template: str = "plain", prompt_format: str = "{prompt}") -> scorers.FormatFn:
  """format_fn(x, y, y_ref) = gap_input(prompt_format(x), y, y_ref, template)."""
  pit_format.template(template)

  def fmt(prompt, response, reference):
    if reference is None:
      raise ValueError("the gap reward model r_gap(x, y, y_ref) needs reference responses")
    return pit_format.gap_input(prompt_format.format(prompt=prompt), response, reference, template)
  return fmt


def gap_reward_scorer(mdef, params, tokenizer, mesh, rules, *, template: str = "plain",
                      prompt_format: str = "{prompt}", max_len: int, batch_size: int = 32,
                      buckets=None) -> scorers.RewardModelScorer:
  """A `RewardModelScorer` reading r_gap(x, y, y_ref): call it as
  scorer(prompts, responses, references)."""
  return scorers.RewardModelScorer(mdef, params, tokenizer, mesh, rules,
                                   format_fn=gap_format(template, prompt_format), max_len=max_len,
                                   batch_size=batch_size, buckets=buckets)
