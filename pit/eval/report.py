"""Report helpers: PIT-style win-rate tables (markdown) and PNG plots of metric series.

The table mirrors PIT's Table ("Dataset | Comparison | Win rate / Lose rate / Δ (%)"
with one column per judge, e.g. an LLM judge and a reward model).
"""
from __future__ import annotations

import math
import os
import re
from typing import Mapping, Sequence

import numpy as np

from pit.eval.rm_agreement import AgreementResult
from pit.eval.winrate import WinRateResult


def format_cell(r: WinRateResult | None, digits: int = 2) -> str:
  """"win/lose/Δ" of a result in % (`digits` decimals); "-" for None."""
  if r is None:
    return "-"
  return f"{r.win:.{digits}f}/{r.lose:.{digits}f}/{r.delta:.{digits}f}"


def winrate_table(rows: Sequence[tuple[str, Mapping[str, WinRateResult]]],
                  judges: Sequence[str] | None = None, *, digits: int = 2,
                  show_n: bool = True) -> str:
  """Markdown table. `rows`: (dataset, {judge name: result}) with the same A vs B per row.

  A judge missing from a row is shown as '-'. Cells are win / lose / Δ in %.
  """
  if not rows:
    raise ValueError("winrate_table: no rows")
  if judges is None:
    judges = []
    for _, by_judge in rows:
      judges += [j for j in by_judge if j not in judges]
  header = ["Dataset", "Comparison"] + [f"{j}: win / lose / Δ (%)" for j in judges]
  if show_n:
    header.append("n")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for dataset, by_judge in rows:
    if not by_judge:
      raise ValueError(f"winrate_table: row {dataset!r} has no results")
    first = next(iter(by_judge.values()))
    pairs = {(r.name_a, r.name_b) for r in by_judge.values()}
    if len(pairs) != 1:
      raise ValueError(f"winrate_table: row {dataset!r} mixes comparisons {sorted(pairs)}")
    cells = [dataset, f"{first.name_a} vs {first.name_b}"]
    cells += [format_cell(by_judge.get(j), digits) for j in judges]
    if show_n:
      cells.append("/".join(sorted({str(r.n) for r in by_judge.values()})))
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return "\n".join(lines) + "\n"


def metric_series(metrics_path: str, key: str, split: str = "train"):
  """(steps, values) of `key` in a run's metrics.jsonl ([] when absent)."""
  from pit.metrics import read_jsonl
  if not os.path.exists(metrics_path):
    return [], []
  recs = [r for r in read_jsonl(metrics_path) if r.get("split") == split and key in r]
  return [r["step"] for r in recs], [r[key] for r in recs]


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "metric"


def plot_series(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                title: str = "", xlabel: str = "step", ylabel: str = "") -> str:
  """One PNG with a line per series; `series[name] = (xs, ys)`; non-finite ys are skipped."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if not series:
    raise ValueError("plot_series: no series")
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  try:
    for name, (xs, ys) in series.items():
      xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
      if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"series {name!r}: x shape {xs.shape} vs y shape {ys.shape}")
      ok = np.isfinite(ys)
      ax.plot(xs[ok], ys[ok], marker="o" if ok.sum() < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
      ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
      ax.legend()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
  finally:
    plt.close(fig)
  return path


def write_report(out_dir: str, *, title: str, table_md: str | None = None,
                 metrics: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]] | None = None,
                 notes: str = "", filename: str = "report.md",
                 xlabels: Mapping[str, str] | None = None) -> str:
  """Writes `out_dir/report.md` (title, table, notes, embedded plots) and one PNG per
  entry of `metrics` ({plot title: {series name: (xs, ys)}}; x axis `xlabels[title]`,
  default "step"). Returns the markdown path."""
  os.makedirs(out_dir, exist_ok=True)
  parts = [f"# {title}\n"]
  if table_md:
    parts.append(table_md)
  if notes:
    parts.append(notes.rstrip() + "\n")
  for plot_title, series in (metrics or {}).items():
    png = f"{_slug(plot_title)}.png"
    plot_series(os.path.join(out_dir, png), series, title=plot_title,
                xlabel=(xlabels or {}).get(plot_title, "step"))
    parts.append(f"![{plot_title}]({png})\n")
  path = os.path.join(out_dir, filename)
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path


def examples_markdown(prompts: Sequence[str], outputs: Mapping[str, Mapping[str, Sequence[str]]],
                      decoding: str, *, k: int = 3, max_chars: int = 500,
                      display: Mapping[str, str] | None = None) -> str:
  """A "## Example answers" section: for the first `k` prompts, the prompt's end and every
  system's answer at `decoding` (`outputs[system][decoding][i]`), each cut to `max_chars`
  (marked "…"), as quoted markdown."""
  def cut(text: str, tail: bool = False) -> str:
    text = text.strip()
    if len(text) <= max_chars:
      return text
    return "…" + text[-max_chars:] if tail else text[:max_chars] + "…"

  def quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.splitlines() or [""]))

  lines = [f"## Example answers ({decoding}, first {min(k, len(prompts))} held-out prompts)\n"]
  for i, prompt in enumerate(prompts[:k]):
    lines.append(f"### Prompt {i + 1}\n")
    lines.append(quote(cut(prompt, tail=True)) + "\n")
    for name, by_dec in outputs.items():
      answers = by_dec.get(decoding)
      if answers is not None and i < len(answers):
        lines.append(f"**{(display or {}).get(name, name)}**\n")
        lines.append(quote(cut(answers[i])) + "\n")
  return "\n".join(lines)


def finite_or_dash(x: float, digits: int = 3) -> str:
  """`x` with `digits` decimals, or "-" when it is None or not finite."""
  return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


AGREEMENT_ROWS = (("Pairwise accuracy (%)", "pairwise_accuracy", 1), ("5-best %", "best5", 1),
                  ("Exact match %", "exact_match", 1), ("Spearman corr.", "spearman", 3),
                  ("Kendall τ corr.", "kendall_tau", 3))


def agreement_table(results: Mapping[str, AgreementResult]) -> str:
  """Self-Rewarding Table 4 layout: one column per model, one row per metric."""
  if not results:
    raise ValueError("agreement_table: no results")
  names = list(results)
  lines = ["| Metric | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
  for label, field, digits in AGREEMENT_ROWS + (("prompts", "num_prompts", 0),):
    cells = [finite_or_dash(float(getattr(results[m], field)), digits) for m in names]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
