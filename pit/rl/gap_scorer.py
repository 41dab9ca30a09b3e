"""PIT's gap reward model as an RL scorer: r_gap(x, y, y_ref) through the one
`RewardModelScorer`, with the input text of `pit_format.gap_input` (the same
text `pit.data.gap_batching` trains on). Rollouts must pass the references."""
from __future__ import annotations

from pit import pit_format
from pit.rl import scorers


def gap_format(template: str = "plain", prompt_format: str = "{prompt}") -> scorers.FormatFn:
  """format_fn(x, y, y_ref) = (policy_prompt(prompt_format(x), y_ref, template), y): the
  (prompt, response) of `pit.data.gap_batching`'s training rows."""
  pit_format.template(template)

  def fmt(prompt, response, reference):
    if reference is None:
      raise ValueError("the gap reward model r_gap(x, y, y_ref) needs reference responses")
    return pit_format.policy_prompt(prompt_format.format(prompt=prompt), reference, template), response
  return fmt


def gap_reward_scorer(mdef, params, tokenizer, mesh, rules, *, template: str = "plain",
                      prompt_format: str = "{prompt}", max_len: int, batch_size: int = 32,
                      buckets=None, max_response_len: int = 0) -> scorers.RewardModelScorer:
  """A `RewardModelScorer` reading r_gap(x, y, y_ref): call it as
  scorer(prompts, responses, references). Give the lengths the model was trained with
  (`gap_reward_scorer_from_dir` reads them) so scored rows equal training rows."""
  return scorers.RewardModelScorer(mdef, params, tokenizer, mesh, rules,
                                   format_fn=gap_format(template, prompt_format), max_len=max_len,
                                   batch_size=batch_size, buckets=buckets,
                                   max_response_len=max_response_len)


def gap_reward_scorer_from_dir(rm_dir: str, tokenizer, mesh, rules, *, template: str = "plain",
                               prompt_format: str = "{prompt}", batch_size: int = 32,
                               max_len: int = 0) -> scorers.RewardModelScorer:
  """`gap_reward_scorer` for the gap reward model in workdir `rm_dir`, truncating rows as
  it was trained (`scorers.reward_model_scorer`)."""
  return scorers.reward_model_scorer(rm_dir, tokenizer, mesh, rules,
                                     format_fn=gap_format(template, prompt_format),
                                     batch_size=batch_size, max_len=max_len)
