"""Evaluation declared in config: systems x decodings x comparisons x judges, with intervals.

A run's outputs are `{system: {decoding: [response per prompt]}}` where the decoding is a
temperature ("t0" greedy, "t1" temperature 1, ...). A comparison "A vs B" is evaluated only
between A and B decoded the same way, so no row mixes decodings (the PIT headline of an
earlier stop compared a sampled Original with a greedy PIT). `config.eval` (see
`pit.config_base.eval_defaults`):

  temperatures   the decodings every system is produced at
  comparisons    ((a, b), ...) system names; each evaluated at every decoding
  judges         judge names (the pipeline maps them to `pit.eval.judges.Judge`s)
  confidence     interval level (0.95)
  bootstrap      resamples for the Δ interval; seed

For each (comparison, decoding, judge): win / lose / tie % judged both ways round
(`pit.eval.winrate`), exact Clopper-Pearson intervals for win % and lose % (n prompts,
binomial), a paired bootstrap interval for Δ = win - lose (prompts resampled, the
per-prompt outcome in {-1, 0, 1} kept paired); for a scalar judge also each system's mean
score and the paired per-prompt difference of means with its standard error and a
t-interval (prompts whose score is NaN in either system are left out and counted).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from pit.eval import judges as judges_lib
from pit.eval import winrate


def decoding_name(temperature: float) -> str:
  """"t0" for greedy, "t1" for temperature 1, "t0.7" for 0.7."""
  t = float(temperature)
  return f"t{t:g}"


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Exact (Clopper-Pearson) interval for a proportion k/n, in %."""
  from scipy.stats import binomtest
  if n == 0:
    return (math.nan, math.nan)
  ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
  return (100.0 * ci.low, 100.0 * ci.high)


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 10000,
                       seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of mean(values) (values resampled with replacement)."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return (math.nan, math.nan)
  rng = np.random.default_rng(seed)
  means = v[rng.integers(0, v.size, (int(resamples), v.size))].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
  return (float(lo), float(hi))


def mean_scores(judge, prompts, responses_by_iteration) -> list[float]:
  """A judge's mean score of each iteration's responses (NaN judgements left out)."""
  return [float(np.nanmean(judge.score(prompts, r))) for r in responses_by_iteration]


@dataclasses.dataclass
class PairedDifference:
  """mean(a - b) over the prompts both scored, with its standard error and t-interval."""
  mean_a: float
  mean_b: float
  diff: float
  stderr: float
  low: float
  high: float
  n: int
  dropped: int   # prompts with a NaN score in a or b

  def as_dict(self) -> dict:
    """JSON-ready fields."""
    return dataclasses.asdict(self)


def paired_difference(scores_a, scores_b, confidence: float = 0.95) -> PairedDifference:
  """mean(a - b) per prompt over prompts scored in both (NaN left out, counted), its standard
  error sd(a - b)/sqrt(n) and the Student-t interval at `confidence` (the paired t-test's)."""
  from scipy.stats import t as student_t
  a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired_difference: shapes {a.shape} and {b.shape} differ")
  ok = ~(np.isnan(a) | np.isnan(b))
  d = a[ok] - b[ok]
  n = int(d.size)
  if n == 0:
    return PairedDifference(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0,
                            int((~ok).sum()))
  mean = float(d.mean())
  se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  half = float(student_t.ppf(0.5 + confidence / 2, n - 1) * se) if n > 1 else math.nan
  return PairedDifference(float(a[ok].mean()), float(b[ok].mean()), mean, se, mean - half,
                          mean + half, n, int((~ok).sum()))


@dataclasses.dataclass
class Row:
  """One (comparison, decoding, judge) of the evaluation."""
  a: str
  b: str
  decoding: str
  judge: str
  result: winrate.WinRateResult
  win_ci: tuple[float, float]
  lose_ci: tuple[float, float]
  delta_ci: tuple[float, float]
  paired: PairedDifference | None = None

  def as_dict(self) -> dict:
    """JSON-ready fields (the win-rate summary, intervals and paired difference)."""
    d = {"a": self.a, "b": self.b, "decoding": self.decoding, "judge": self.judge,
         **self.result.summary(), "win_ci": list(self.win_ci), "lose_ci": list(self.lose_ci),
         "delta_ci": list(self.delta_ci)}
    if self.paired is not None:
      d["paired"] = self.paired.as_dict()
    return d


def evaluate(prompts: Sequence[str], outputs: Mapping[str, Mapping[str, Sequence[str]]],
             comparisons: Sequence[tuple[str, str]], judges: Mapping[str, judges_lib.Judge], *,
             references: Sequence[str] | None = None, confidence: float = 0.95,
             resamples: int = 10000, seed: int = 0,
             display: Mapping[str, str] | None = None) -> list[Row]:
  """Every comparison at every decoding both systems have, by every judge. Scalar judges
  score each (system, decoding) once; `references` (e.g. y_ref for a gap RM) go to judges
  that need them. `display` maps system names to the names shown in rows."""
  display = dict(display or {})
  scores: dict[tuple[str, str, str], np.ndarray] = {}

  def scored(judge_name, system, dec):
    key = (judge_name, system, dec)
    if key not in scores:
      j = judges[judge_name]
      scores[key] = j.score(prompts, outputs[system][dec],
                            references if j.needs_references else None)
    return scores[key]

  rows = []
  for a, b in comparisons:
    for name in (a, b):
      if name not in outputs:
        raise KeyError(f"eval.comparisons: no system {name!r} (have {sorted(outputs)})")
    decodings = [d for d in outputs[a] if d in outputs[b]]
    if not decodings:
      raise ValueError(f"eval.comparisons: {a} and {b} share no decoding "
                       f"({sorted(outputs[a])} vs {sorted(outputs[b])}); rows never mix decodings")
    for dec in decodings:
      for jname, judge in judges.items():
        if judge.kind == "scalar":
          sa, sb = scored(jname, a, dec), scored(jname, b, dec)
          # both ways round: a scalar judge's verdict is the sign of the score difference
          first = winrate.sign_with_tolerance(sa - sb)
          second = winrate.sign_with_tolerance(sb - sa)
          paired = paired_difference(sa, sb, confidence)
        else:
          first = winrate.check_preferences(judge.verdicts(prompts, outputs[a][dec],
                                                           outputs[b][dec]), len(prompts))
          second = winrate.check_preferences(judge.verdicts(prompts, outputs[b][dec],
                                                            outputs[a][dec]), len(prompts))
          paired = None
        outcome = winrate.combine_orders(first, second)
        res = winrate.summarize(outcome, first, second, name_a=display.get(a, a),
                                name_b=display.get(b, b))
        rows.append(Row(a, b, dec, jname, res, binomial_interval(res.wins, res.n, confidence),
                        binomial_interval(res.losses, res.n, confidence),
                        bootstrap_interval(100.0 * outcome, confidence, resamples, seed),
                        paired))
  return rows


def table_markdown(rows: Sequence[Row], title_names: Mapping[str, str] | None = None) -> str:
  """One line per (comparison, decoding, judge): win / lose / Δ with 95% intervals and n,
  and the paired difference of mean scores for scalar judges."""
  names = dict(title_names or {})
  lines = ["| comparison | decoding | judge | win % [95% CI] | lose % [95% CI] | Δ [95% CI] | "
           "mean score a / b | paired diff ± s.e. [95% CI] | n |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    res = r.result
    p = r.paired
    means = f"{p.mean_a:.4g} / {p.mean_b:.4g}" if p is not None else "-"
    diff = (f"{p.diff:+.4f} ± {p.stderr:.4f} [{p.low:+.4f}, {p.high:+.4f}]"
            + (f" ({p.dropped} unjudged)" if p.dropped else "")) if p is not None else "-"
    lines.append(
        f"| {names.get(r.a, res.name_a)} vs {names.get(r.b, res.name_b)} | {r.decoding} | "
        f"{r.judge} | {res.win:.1f} [{r.win_ci[0]:.1f}, {r.win_ci[1]:.1f}] | "
        f"{res.lose:.1f} [{r.lose_ci[0]:.1f}, {r.lose_ci[1]:.1f}] | "
        f"{res.delta:+.1f} [{r.delta_ci[0]:+.1f}, {r.delta_ci[1]:+.1f}] | {means} | {diff} | "
        f"{res.n} |")
  return "\n".join(lines) + "\n"
