"""Iterative improvement at inference: PIT (Wang et al., 2023) and the
Self-Refine baseline (Madaan et al., 2023).

PIT: y_{t+1} ~ M_PIT(. | x, y_t), batched over all rows still active. With a gap
reward model a row stops at the first iteration whose candidate brings no gain,

  gain_t = r_gap(x, y_{t+1}, y_t) - r_gap(x, y_t, y_t) <= min_gain,

and keeps y_t (the self-comparison r_gap(x, y_t, y_t) is the "no change"
baseline, so r_gap's zero needs no calibration). Without a gap scorer every row
runs `max_iters` iterations.

Self-Refine: the same base model is prompted for feedback on its answer, then
to refine the answer given that feedback; a row stops when the feedback says so
(a stop phrase, or a judge score >= `stop_score` for the judge templates) or
after `max_iters` refinements.

`generate_fn(texts, call) -> texts` is any text-to-text function; `call` numbers
the generate calls of one run (seeds derive from it). `pit.generation.Generator` is the
one that samples a checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import numpy as np

from pit.data import judge
from pit.pit_format import policy_prompt

GenerateFn = Callable[[Sequence[str], int], list]

FEEDBACK_TEMPLATES = {
    "chat": ("{prompt} {response}\n\nHuman: Review your last response: is it helpful, honest and "
             "harmless? Point out concretely what should change. If nothing should, say "
             "\"no changes needed\".\n\nAssistant:"),
    "plain": "judge_compact",
}
REFINE_TEMPLATES = {
    "chat": ("{prompt} {response}\n\nHuman: Feedback on your response: {feedback}\nRewrite your "
             "response, applying this feedback.\n\nAssistant:"),
    "plain": "{prompt}answer: {response}\nfeedback: {feedback}\nrevised: ",
}
STOP_PHRASES = {"chat": "no changes needed", "plain": ""}
JUDGE_TEMPLATES = ("judge", "judge_compact")


@dataclasses.dataclass
class ImproveResult:
  """What `iterative_improve` did, per iteration and row (shapes in the field comments:
  T = max_iters, n = rows; `active` holds the number of active rows). Gains are
  differences of the gap reward model's raw scalar outputs."""
  responses: list      # [max_iters + 1][n]: each row's answer after t iterations (stopped rows carry theirs)
  candidates: list     # [max_iters][n]: the candidate generated at iteration t+1, None if the row was inactive
  gains: np.ndarray    # float64 [max_iters, n]: gain_t; NaN where inactive or without a gap scorer
  accepted: np.ndarray  # int [n]: candidates kept (the final answer is responses[accepted[i]][i])
  stopped_at: np.ndarray  # int [n]: iteration (1-based) in which the row stopped; max_iters if it never did early
  active: list         # [max_iters]: rows that generated at iteration t+1

  @property
  def final(self) -> list:
    """Each row's final answer (the last entry of `responses`), [n]."""
    return list(self.responses[-1])


def _check_rows(prompts, initial_responses, max_iters):
  if len(prompts) != len(initial_responses):
    raise ValueError(f"{len(prompts)} prompts but {len(initial_responses)} initial responses")
  if int(max_iters) < 0:
    raise ValueError(f"max_iters must be >= 0, got {max_iters}")


def iterative_improve(generate_fn: GenerateFn, prompts: Sequence[str],
                      initial_responses: Sequence[str], *, template: str = "plain",
                      max_iters: int = 3, gap_scorer=None, min_gain: float = 0.0) -> ImproveResult:
  """PIT's inference loop; one `generate_fn` call per iteration over the active rows and
  one `gap_scorer` call (candidates and self-comparisons together) when given."""
  _check_rows(prompts, initial_responses, max_iters)
  n, T = len(prompts), int(max_iters)
  current = list(initial_responses)
  responses, candidates, active_counts = [list(current)], [], []
  gains = np.full((T, n), np.nan)
  accepted = np.zeros(n, int)
  stopped_at = np.full(n, T, int)
  live = list(range(n))
  for t in range(T):
    active_counts.append(len(live))
    cand_t = [None] * n
    if live:
      xs, ys = [prompts[i] for i in live], [current[i] for i in live]
      new = list(generate_fn([policy_prompt(x, y, template) for x, y in zip(xs, ys)], t))
      if len(new) != len(live):
        raise ValueError(f"generate_fn returned {len(new)} responses for {len(live)} prompts")
      keep = np.ones(len(live), bool)
      if gap_scorer is not None:
        scores = np.asarray(gap_scorer(xs + xs, new + ys, ys + ys), np.float64)
        if scores.shape != (2 * len(live),):
          raise ValueError(f"gap scorer returned shape {scores.shape}, expected ({2 * len(live)},)")
        g = scores[:len(live)] - scores[len(live):]
        gains[t, live] = g
        keep = g > float(min_gain)
      still = []
      for j, i in enumerate(live):
        cand_t[i] = new[j]
        if keep[j]:
          current[i] = new[j]
          accepted[i] += 1
          still.append(i)
        else:
          stopped_at[i] = t + 1
      live = still
    candidates.append(cand_t)
    responses.append(list(current))
    logging.info("improve iteration %d: %d active, %d kept their candidate", t + 1,
                 active_counts[-1], len(live))
  return ImproveResult(responses, candidates, gains, accepted, stopped_at, active_counts)


@dataclasses.dataclass
class RefineResult:
  """What `self_refine` did, per round and row (shapes in the field comments:
  T = max_iters, n = rows); scores are the judge's 0-5 points (NaN when not parsed or not a
  judge template)."""
  responses: list      # [max_iters + 1][n]: each row's answer after t refinements
  feedback: list       # [max_iters][n]: feedback on responses[t], None if the row was inactive
  scores: np.ndarray   # float64 [max_iters, n]: judge score parsed from the feedback (judge templates), else NaN
  stopped_at: np.ndarray  # int [n]: refinements the row received (max_iters if never stopped by feedback)
  active: list         # [max_iters]: rows asked for feedback in round t
  judged: bool = False  # feedback came from a judge template (scores parsed)

  @property
  def final(self) -> list:
    """Each row's final answer (the last entry of `responses`), [n]."""
    return list(self.responses[-1])

  @property
  def unparsed_judgements(self) -> list[int]:
    """Per round: judge-template feedback whose score could not be read (`parse_judge_score`
    gave None); 0 for free-text feedback templates."""
    return [int(sum(f is not None and np.isnan(s) for f, s in zip(fb_t, self.scores[t])))
            if self.judged else 0 for t, fb_t in enumerate(self.feedback)]


def _fill(template: str, **fields) -> str:
  out = template
  for k, v in fields.items():   # one field at a time: braces inside the texts stay literal
    out = out.replace("{" + k + "}", v)
  return out


def feedback_prompt(template: str, prompt: str, response: str) -> str:
  """The prompt asking for feedback on `response`: the Self-Rewarding 5-point judge
  prompt for 'judge' / 'judge_compact' (`pit.data.judge.render_judge_prompt`), else
  `template` with {prompt} and {response} filled in (braces in the texts kept literal)."""
  if template in JUDGE_TEMPLATES:
    return judge.render_judge_prompt(prompt, response, compact=template == "judge_compact")
  return _fill(template, prompt=prompt, response=response)


def check_refine_templates(feedback_template: str, refine_template: str):
  """Raises ValueError when a feedback template (other than 'judge' /
  'judge_compact') lacks {prompt} or {response}, or the refine template lacks {prompt},
  {response} or {feedback}."""
  if feedback_template not in JUDGE_TEMPLATES:
    for f in ("{prompt}", "{response}"):
      if f not in feedback_template:
        raise ValueError(f"self-refine feedback template lacks the field {f}: {feedback_template!r}")
  for f in ("{prompt}", "{response}", "{feedback}"):
    if f not in refine_template:
      raise ValueError(f"self-refine refine template lacks the field {f}: {refine_template!r}")


def self_refine(generate_fn: GenerateFn, prompts: Sequence[str], initial_responses: Sequence[str],
                *, feedback_template: str, refine_template: str, max_iters: int = 3,
                stop_phrase: str = "", stop_score: float = judge.MAX_SCORE) -> RefineResult:
  """Self-Refine with one model: in round t, feedback on y_t; a row stops (keeping y_t)
  when the feedback contains `stop_phrase` (case-insensitive; '' disables) or, for the judge templates
  ('judge', 'judge_compact'), parses to a score >= `stop_score`; otherwise
  y_{t+1} = refine(x, y_t, feedback_t). `max_iters` rounds (two generate calls each:
  feedback, refine) over the rows still active."""
  _check_rows(prompts, initial_responses, max_iters)
  check_refine_templates(feedback_template, refine_template)
  n, T = len(prompts), int(max_iters)
  is_judge = feedback_template in JUDGE_TEMPLATES
  stop = stop_phrase.strip().lower()
  current = list(initial_responses)
  responses, feedback, active_counts = [list(current)], [], []
  scores = np.full((T, n), np.nan)
  stopped_at = np.full(n, T, int)
  live = list(range(n))
  for t in range(T):
    active_counts.append(len(live))
    fb_t, still = [None] * n, []
    if live:
      fb = list(generate_fn([feedback_prompt(feedback_template, prompts[i], current[i])
                             for i in live], 2 * t))
      if len(fb) != len(live):
        raise ValueError(f"generate_fn returned {len(fb)} responses for {len(live)} prompts")
      for j, i in enumerate(live):
        fb_t[i] = fb[j]
        done = bool(stop) and stop in fb[j].lower()
        if is_judge:
          s = judge.parse_judge_score(fb[j])
          scores[t, i] = np.nan if s is None else s
          done = done or (s is not None and s >= stop_score)
        if done:
          stopped_at[i] = t
        else:
          still.append(i)
    live = still
    if live:
      refined = list(generate_fn([_fill(refine_template, prompt=prompts[i], response=current[i],
                                        feedback=fb_t[i]) for i in live], 2 * t + 1))
      if len(refined) != len(live):
        raise ValueError(f"generate_fn returned {len(refined)} responses for {len(live)} prompts")
      for j, i in enumerate(live):
        current[i] = refined[j]
    feedback.append(fb_t)
    responses.append(list(current))
    logging.info("self-refine round %d: %d asked for feedback, %d refined", t + 1,
                 active_counts[-1], len(live))
  n_bad = sum(int(np.sum(np.isnan(scores[t]) & np.array([f is not None for f in feedback[t]])))
              for t in range(T)) if is_judge else 0
  if n_bad:
    logging.warning("self-refine: %d judgement(s) had no readable score (counted as no score, "
                    "the row continues)", n_bad)
  return RefineResult(responses, feedback, scores, stopped_at, active_counts, judged=is_judge)
