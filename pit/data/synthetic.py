"""The synthetic "sort" task: a ground-truth oracle for measuring self-improvement.

Prompt: 4-7 distinct two-digit numbers (10..99), e.g. ``"sort: 42 17 19 88\\n"``
(<= 28 bytes). Gold response: the numbers ascending, ``"17 19 42 88"`` (<= 20
bytes). Responses of graded quality come from controlled corruption of the gold
(`degrade`), at most `max_response_bytes(n)` long (gold + 12 bytes; 32 at 7 items).

Task variants (`TASKS`, `data.synthetic_task`): "sort" (the above, the default)
and "sort_long" (8-12 numbers, prompts <= 42 bytes, responses <= 47 bytes; 80 %
of its preference pairs nested), the PIT preset's task: a small model's greedy
answers to it leave room to improve. One oracle scores both.

Oracle. A response is read as its digit runs (tokens, compared as strings with
the prompt's items) and the non-digit runs between/around them. Error counts:

  bad_seps   non-digit runs that are not exactly one space (any text before the
             first or after the last number counts as one bad run each)
  foreign    tokens that are not prompt items
  dups       tokens minus distinct tokens
  missing    prompt items absent
  disorder   C(n,2) minus the concordant pairs: item pairs a<b, both present,
             with a's first occurrence before b's (so a missing item also
             costs its pairs: dropping can never "fix" the order)

Five additive criteria (1 point each, `judge_points`), met only if the response
contains at least one prompt item (otherwise it is no answer to this prompt and
meets none): well-formed (bad_seps=0), only given numbers (foreign=0), no
repeats (dups=0), complete (missing=0), sorted (disorder=0: every item present
and in ascending order of first occurrence).

  fine  = (present/n) * prod_{e in bad_seps, foreign, dups, disorder} 1/(1+e/n)
  score = 0.5 * points/5 + 0.5 * fine                          in [0, 1]

Gold scores 1, a response with no prompt item 0, and every error count enters
strictly decreasingly; `degrade` applies one error at a time and keeps only
steps that lower the score, so each error of a degraded response, fixed in the
reverse order, raises the score (PIT's step-by-step improvement is measurable).

Held-out prompts: a prompt's split is a function of its item *set* (crc32 of
the sorted items, 1 in `EVAL_MODULUS` sets are eval). Training generators
(`make_prompt`, pairs, IFT, EFT) reject eval sets; `eval_prompts` draws only
eval sets; so no eval prompt -- in any order -- is ever a training prompt,
whatever the seeds.

CLI: ``python -m pit.data.synthetic --out_dir DIR [--n_train N --n_eval N
--seed S --files ift,prompts_eval]`` writes the data files;
``python -m pit.data.synthetic score --generations FILE`` prints the mean oracle
score of a generations.jsonl next to the random and echo baselines;
``python -m pit.data.synthetic pairs --generations FILE --out PAIRS`` turns N
samples per prompt into oracle best-vs-worst pairs (on-policy DPO data).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import zlib
from typing import Sequence

import numpy as np

from pit.data import judge, records
from pit.data.pairs import PreferencePair, best_vs_worst, write_pairs_jsonl
from pit.data.records import DataError

LO, HI = 10, 99                    # item range (two-digit numbers)
MIN_ITEMS, MAX_ITEMS = 4, 7        # the default task's list lengths ("sort")
READ_MIN_ITEMS, READ_MAX_ITEMS = 4, 12   # what the oracle reads: every task's lengths
RESPONSE_SLACK_BYTES = 12          # a response may be this much longer than the gold one
MAX_RESPONSE_BYTES = 32            # = max_response_bytes(MAX_ITEMS)
MAX_ERRORS = 8
EVAL_MODULUS = 8                   # 1/8 of item sets are held out for evaluation
PREFIX = "sort: "
CRITERIA = ("form", "only", "unique", "all", "sorted")   # short names (compact EFT)
CRITERIA_TEXT = (                                         # the rubric, one line per point
    "the response is only numbers separated by single spaces",
    "it uses only numbers given in the prompt",
    "it repeats no number",
    "it contains every number of the prompt",
    "it lists every number of the prompt in ascending order",
)
ERROR_KINDS = ("drop", "dup", "foreign", "swap", "format")
_BAD_INNER = (", ", ",", "  ", ";", " - ")
_BAD_OUTER = (".", " ", ",", "!")
_PROMPT_RE = re.compile(r"sort: (\d\d(?: \d\d)*)\n?")
_DIGITS_RE = re.compile(r"[0-9]+")
# Stream ids keep the generators' random streams apart for one user seed.
_STREAM = {"pairs": 1, "ift": 2, "eft": 3, "eval": 4, "random": 5}


# ----------------------------------------------------------------- prompts

def is_eval_items(items: Sequence[str]) -> bool:
  """True for a held-out item set: crc32 of the sorted items mod `EVAL_MODULUS`
  is 0 (the order of `items` does not matter)."""
  key = ",".join(sorted(items, key=int)).encode()
  return zlib.crc32(key) % EVAL_MODULUS == 0


def make_prompt(rng: np.random.Generator, split: str = "train", task: "str | Task" = "sort") -> str:
  """A prompt of `task`'s number of distinct items (sort: 4-7, sort_long: 8-12)
  in random order; `split` 'train' or 'eval' (disjoint item sets, see module
  doc) or 'any'. ValueError on an unknown split or task."""
  if split not in ("train", "eval", "any"):
    raise ValueError(f"split must be 'train', 'eval' or 'any', got {split!r}")
  t = get_task(task)
  while True:
    k = int(rng.integers(t.min_items, t.max_items + 1))
    items = [str(x) for x in rng.choice(np.arange(LO, HI + 1), size=k, replace=False)]
    if split == "any" or is_eval_items(items) == (split == "eval"):
      return PREFIX + " ".join(items) + "\n"


def parse_prompt(prompt: str) -> list[str]:
  """The prompt's items (strings, prompt order); ValueError if not a sort prompt."""
  m = _PROMPT_RE.fullmatch(prompt)
  if not m:
    raise ValueError(f"not a synthetic sort prompt: {prompt!r}")
  items = m.group(1).split(" ")
  if len(set(items)) != len(items) or not READ_MIN_ITEMS <= len(items) <= READ_MAX_ITEMS:
    raise ValueError(f"sort prompt needs {READ_MIN_ITEMS}-{READ_MAX_ITEMS} distinct numbers: "
                     f"{prompt!r}")
  return items


def max_response_bytes(n_items: int) -> int:
  """The longest response `degrade` writes for an n-item prompt: the gold
  response (3n - 1 bytes) plus `RESPONSE_SLACK_BYTES` (32 at 7 items, 47 at 12)."""
  return 3 * n_items - 1 + RESPONSE_SLACK_BYTES


def gold_response(prompt: str) -> str:
  """The prompt's numbers ascending, single-space separated (oracle score 1);
  ValueError if `prompt` is not a sort prompt."""
  return " ".join(sorted(parse_prompt(prompt), key=int))


# ----------------------------------------------------------------- oracle

def error_counts(prompt: str, response: str) -> dict[str, int]:
  """The oracle's error counts (see module doc) plus n, present, tokens."""
  items = parse_prompt(prompt)
  S, n = set(items), len(items)
  tokens = _DIGITS_RE.findall(response)
  seps = _DIGITS_RE.split(response)          # len(tokens) + 1 runs, outer ones may be ""
  if tokens:
    bad = sum(s != " " for s in seps[1:-1]) + (seps[0] != "") + (seps[-1] != "")
  else:
    bad = 1
  first = {}
  for i, t in enumerate(tokens):
    first.setdefault(t, i)
  order = sorted((int(t), first[t]) for t in first if t in S)   # present items by value
  pos = [p for _, p in order]
  concordant = sum(pos[i] < pos[j] for i in range(len(pos)) for j in range(i + 1, len(pos)))
  present = len(pos)
  return dict(n=n, tokens=len(tokens), present=present, bad_seps=bad,
              foreign=sum(t not in S for t in tokens), dups=len(tokens) - len(first),
              missing=n - present, disorder=n * (n - 1) // 2 - concordant)


def _criteria(c: dict) -> tuple[bool, ...]:
  if c["present"] == 0:
    return (False,) * 5
  return (c["bad_seps"] == 0, c["foreign"] == 0, c["dups"] == 0, c["missing"] == 0,
          c["disorder"] == 0)


def judge_criteria(prompt: str, response: str) -> tuple[bool, ...]:
  """Which of the five additive criteria (`CRITERIA`) the response meets."""
  return _criteria(error_counts(prompt, response))


def judge_points(prompt: str, response: str) -> int:
  """0..5: the number of additive criteria met."""
  return int(sum(judge_criteria(prompt, response)))


def _score(c: dict) -> float:
  if c["present"] == 0:
    return 0.0
  n = c["n"]
  fine = c["present"] / n
  for k in ("bad_seps", "foreign", "dups", "disorder"):
    fine /= 1.0 + c[k] / n
  return 0.5 * sum(_criteria(c)) / 5 + 0.5 * fine


def oracle_score(prompt: str, response: str) -> float:
  """Deterministic quality in [0, 1]: gold 1, no prompt item 0 (module doc)."""
  return _score(error_counts(prompt, response))


def oracle_scores(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """`oracle_score` of each (prompt, response): float32 [N] in [0, 1]; ValueError
  when the lengths differ or a prompt is not a sort prompt."""
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
  return np.asarray([oracle_score(p, r) for p, r in zip(prompts, responses)], np.float32)


# ----------------------------------------------------------------- corruption

class _Resp:
  """A response as tokens and the runs around them (len(seps) == len(toks) + 1)."""

  def __init__(self, toks, seps):
    self.toks, self.seps = list(toks), list(seps)

  @classmethod
  def parse(cls, text):
    return cls(_DIGITS_RE.findall(text), _DIGITS_RE.split(text))

  def render(self) -> str:
    out = [self.seps[0]]
    for t, s in zip(self.toks, self.seps[1:]):
      out += [t, s]
    return "".join(out)


def _insert(r: _Resp, j: int, tok: str):
  """Insert `tok` before token j (j == len: append) with one single-space run;
  the leading and trailing runs stay outermost."""
  m = len(r.toks)
  r.toks.insert(j, tok)
  r.seps.insert(j + 1 if j < m else m, " ")


def _apply(rng, items: list[str], text: str, kind: str) -> str | None:
  """One error of `kind` applied to `text`; None when it does not apply."""
  S = set(items)
  r = _Resp.parse(text)
  toks = r.toks
  once = [i for i, t in enumerate(toks) if t in S and toks.count(t) == 1]
  if kind == "drop":
    if len(toks) < 2 or not once:
      return None
    i = int(rng.choice(once))
    if i == len(toks) - 1:
      del r.seps[i]                       # keep the trailing run
    elif i == 0:
      del r.seps[1]                       # keep the leading run
    else:                                 # keep a single-space run if there is one
      left, right = r.seps[i], r.seps[i + 1]
      r.seps[i:i + 2] = [left if left == " " or right != " " else right]
    del r.toks[i]
  elif kind == "dup":
    cand = [i for i, t in enumerate(toks) if t in S]
    if not cand:
      return None
    i = int(rng.choice(cand))
    j = int(rng.integers(i + 1, len(toks) + 1))   # after the original: first occurrences unchanged
    _insert(r, j, toks[i])
  elif kind == "foreign":
    pool = [x for x in range(LO, HI + 1) if str(x) not in S and str(x) not in toks]
    new = str(int(rng.choice(pool)))
    if once and rng.random() < 0.5:
      r.toks[int(rng.choice(once))] = new
    else:
      _insert(r, int(rng.integers(0, len(toks) + 1)), new)
  elif kind == "swap":
    firsts = {}
    for i, t in enumerate(toks):
      firsts.setdefault(t, i)
    cand = [i for i in range(len(toks) - 1)
            if toks[i] in S and toks[i + 1] in S and firsts[toks[i]] == i
            and firsts[toks[i + 1]] == i + 1 and int(toks[i]) < int(toks[i + 1])]
    if not cand:
      return None
    i = int(rng.choice(cand))
    r.toks[i], r.toks[i + 1] = r.toks[i + 1], r.toks[i]
  elif kind == "format":
    inner = [i for i in range(1, len(r.seps) - 1) if r.seps[i] == " "]
    outer = [i for i in (0, len(r.seps) - 1) if r.seps[i] == "" and toks]
    if not inner and not outer:
      return None
    if inner and (not outer or rng.random() < 0.75):
      r.seps[int(rng.choice(inner))] = str(rng.choice(_BAD_INNER))
    else:
      r.seps[int(rng.choice(outer))] = str(rng.choice(_BAD_OUTER))
  else:
    raise ValueError(f"unknown error kind {kind!r} (known: {ERROR_KINDS})")
  out = r.render()
  return out if len(out.encode()) <= max_response_bytes(len(items)) else None


def degrade_chain(rng: np.random.Generator, prompt: str, n_errors: int) -> list[str]:
  """[gold, 1 error, ..., n_errors errors]: each step adds one error (kind drawn
  uniformly from `ERROR_KINDS`; another kind when it does not apply), strictly
  lowers the oracle score, and keeps at least half of the items present."""
  if not 0 <= n_errors <= MAX_ERRORS:
    raise ValueError(f"n_errors must be in 0..{MAX_ERRORS}, got {n_errors}")
  items = parse_prompt(prompt)
  chain = [gold_response(prompt)]
  for _ in range(n_errors):
    prev = chain[-1]
    prev_score = oracle_score(prompt, prev)
    for kind in rng.permutation(ERROR_KINDS):
      out = None
      for _ in range(4):                      # a few draws of the same kind
        cand = _apply(rng, items, prev, str(kind))
        if cand is None:
          continue
        c = error_counts(prompt, cand)
        if c["missing"] <= len(items) // 2 and _score(c) < prev_score:
          out = cand
          break
      if out is not None:
        break
    if out is None:
      raise ValueError(f"cannot add error {len(chain)} to {prev!r} for {prompt!r}")
    chain.append(out)
  return chain


def degrade(rng: np.random.Generator, prompt: str, n_errors: int) -> str:
  """A response with `n_errors` controlled errors (0: the gold response)."""
  return degrade_chain(rng, prompt, n_errors)[-1]


def random_response(rng: np.random.Generator, task: "str | Task" = "sort") -> str:
  """The random baseline's response: as many numbers as `task`'s prompts hold
  (uniform; sort 4-7), drawn uniformly with replacement from 10..99, single-space
  separated -- well-formed but ignorant of the prompt."""
  t = get_task(task)
  k = int(rng.integers(t.min_items, t.max_items + 1))
  return " ".join(str(int(x)) for x in rng.integers(LO, HI + 1, size=k))


def echo_response(prompt: str) -> str:
  """The prompt's numbers in prompt order (copies, does not sort)."""
  return " ".join(parse_prompt(prompt))


# ----------------------------------------------------------------- datasets

def _rng(kind: str, seed: int, task: "str | Task" = "sort") -> np.random.Generator:
  t = get_task(task)
  key = [int(seed), _STREAM[kind]] + ([] if t.name == "sort" else [t.stream])
  return np.random.default_rng(key)


# Preference pair mix of the default task: errors of the chosen response, and the
# extra errors of the rejected one (the quality gap), with their probabilities.
CHOSEN_ERRORS = ((0, 1, 2, 3), (0.3, 0.3, 0.25, 0.15))
GAP_ERRORS = ((1, 2, 3, 4), (0.4, 0.3, 0.2, 0.1))
NESTED_FRACTION = 0.6


@dataclasses.dataclass(frozen=True)
class Task:
  """A variant of the sort task: its prompts' list lengths and its preference
  pairs' error mix. The oracle is the same for every task (it reads any list of
  `READ_MIN_ITEMS`..`READ_MAX_ITEMS` items).

  min_items, max_items  list length of a prompt, drawn uniformly
  chosen_errors         (error counts, probabilities) of a pair's chosen response
  gap_errors            (extra errors, probabilities) of the rejected response
  nested_fraction       share of pairs whose rejected response is the chosen one
                        with more errors (so chosen is a fix of rejected)
  stream                keeps the task's random streams apart from the others'
  """
  name: str
  min_items: int
  max_items: int
  chosen_errors: tuple
  gap_errors: tuple
  nested_fraction: float
  stream: int
  description: str


TASKS = {t.name: t for t in (
    Task("sort", MIN_ITEMS, MAX_ITEMS, CHOSEN_ERRORS, GAP_ERRORS, NESTED_FRACTION, 0,
         "4-7 numbers; M_P's greedy answers are nearly gold (0.94), little room to improve"),
    # Longer lists: a 4-layer byte model trained for minutes no longer sorts them
    # right in one pass, and y_w is usually a fix of y_l (80 % nested pairs), so a
    # reference answer gives M_PIT the list nearly in order and errors to fix.
    Task("sort_long", 8, 12, ((0, 1, 2, 3, 4), (0.2, 0.25, 0.25, 0.15, 0.15)),
         ((1, 2, 3, 4), (0.4, 0.3, 0.2, 0.1)), 0.8, 1,
         "8-12 numbers; room to improve on M_P's greedy answers (PIT's synthetic preset)"),
)}


def get_task(task: "str | Task") -> Task:
  """The `Task` named `task` (a Task passes through); ValueError names the known ones."""
  if isinstance(task, Task):
    return task
  if task not in TASKS:
    raise ValueError(f"unknown synthetic task {task!r} (known: {', '.join(TASKS)})")
  return TASKS[task]


def preference_pairs(n: int, seed: int, split: str = "train",
                     task: "str | Task" = "sort") -> list[PreferencePair]:
  """n pairs of `task`'s prompts, chosen strictly better by the oracle, margin =
  score gap in [0, 1].

  The default task ("sort"): chosen has k in {0,1,2,3} errors (30/30/25/15%), so
  it is often imperfect; the rejected one k+g, g in {1,2,3,4} (40/30/20/10%). 60%
  are nested (the rejected response is the chosen one with g more errors, so
  chosen is a fix of rejected), 40% independent corruptions (relabelled by the
  oracle if the response with more errors scores higher; redrawn on a tie or
  when the two differ only in surrounding whitespace, which `pairs.pair_error`
  rejects).
  Other tasks set their own mix (`Task`). ValueError on an unknown task.
  """
  t = get_task(task)
  rng = _rng("pairs", seed, t) if split == "train" else _rng("eval", seed + 7919, t)
  out = []
  while len(out) < n:
    prompt = make_prompt(rng, split, t)
    kw = int(rng.choice(t.chosen_errors[0], p=t.chosen_errors[1]))
    kl = kw + int(rng.choice(t.gap_errors[0], p=t.gap_errors[1]))
    nested = bool(rng.random() < t.nested_fraction)
    if nested:
      chain = degrade_chain(rng, prompt, kl)
      w, l = chain[kw], chain[kl]
    else:
      w, l = degrade(rng, prompt, kw), degrade(rng, prompt, kl)
    sw, sl = oracle_score(prompt, w), oracle_score(prompt, l)
    if sw == sl or w.strip() == l.strip():   # a tie, or texts a reader takes as the same
      continue
    if sw < sl:
      w, l, sw, sl, kw, kl = l, w, sl, sw, kl, kw
    out.append(PreferencePair(prompt, w, l, margin=float(sw - sl), meta={
        "chosen_score": float(sw), "rejected_score": float(sl), "chosen_errors": kw,
        "rejected_errors": kl, "nested": nested}))
  return out


def ift_examples(n: int, seed: int, task: "str | Task" = "sort") -> list[dict]:
  """Instruction fine-tuning data: {"prompt", "response": gold} on train prompts."""
  rng = _rng("ift", seed, task)
  out = []
  for _ in range(n):
    p = make_prompt(rng, "train", task)
    out.append({"prompt": p, "response": gold_response(p)})
  return out


def worked_check(prompt: str, response: str) -> str:
  """The judge's worked check of a response, one step per number, so that every criterion
  but the form one is read off local comparisons instead of set operations done at once:

    "check " + each digit run of the response in order, flagged
        d  a repeat of an earlier number, given or not (dups)
        x  else: not a prompt number (foreign)
        v  a prompt number smaller than the last unflagged one (out of order)
    + " miss " + the prompt numbers absent from the response in prompt order, or "none".

  E.g. prompt "sort: 45 12 88 33\n", response "12 45 12 7 33" ->
  "check 12 45 12d 7x 33v miss 88". The last unflagged number is the running maximum of
  the first occurrences, so "sorted" (disorder = 0) holds exactly when nothing is flagged v
  and nothing is missing; "only" when nothing is x, "unique" when nothing is d, "all" when
  the miss list is "none" ("-" stands for a response with no digits). ValueError if
  `prompt` is not a sort prompt. (Chain-of-thought judging: the justification before the
  score in Yuan et al. 2024's judge prompt, worked out step by step.)"""
  items = parse_prompt(prompt)
  S = set(items)
  seen: set[str] = set()
  top = None
  parts = []
  for t in _DIGITS_RE.findall(response):
    if t in seen:
      flag = "d"
    elif t not in S:
      flag = "x"
      seen.add(t)
    else:
      seen.add(t)
      if top is not None and int(t) < top:
        flag = "v"
      else:
        flag, top = "", int(t)
    parts.append(t + flag)
  missing = [t for t in items if t not in seen]
  return (f"check {' '.join(parts) or '-'} miss "
          f"{' '.join(missing) if missing else 'none'}")


def justification(prompt: str, response: str, compact: bool = True,
                  worked: bool = False) -> str:
  """The judge's answer: criteria met / not met, then "Score: k"; with `worked`, the
  `worked_check` line first."""
  c = error_counts(prompt, response)
  met = _criteria(c)
  k = sum(met)
  if c["present"] == 0:
    why = ("irrelevant" if compact else
           "The response contains no number from the prompt, so it meets no criterion.")
  elif compact:
    why = " ".join(("+" if m else "-") + name for m, name in zip(met, CRITERIA))
  else:
    why = " ".join(f"{'Yes' if m else 'No'}: {t}." for m, t in zip(met, CRITERIA_TEXT))
  if worked:
    why = worked_check(prompt, response) + "\n" + why
  return f"{why}\nScore: {k}"


def read_justification(text: str) -> "list[bool] | None":
  """The criteria a judgement claims met, read back from `justification`'s criteria line
  (the first, or the second after a `worked_check` line) in either form ("+form -only ..." or "Yes: <criterion>. No: ..."): five booleans in
  `CRITERIA` order, or None when the line does not name all five in order ("irrelevant",
  free text, a cut-off judgement)."""
  lines = text.strip().split("\n") if text else [""]
  if lines[0].startswith("check ") and len(lines) > 1:   # a worked judgement's check line
    lines = lines[1:]
  line = lines[0].strip()
  toks = line.split()
  if len(toks) == len(CRITERIA) and all(
      t[:1] in "+-" and t[1:] == name for t, name in zip(toks, CRITERIA)):
    return [t[0] == "+" for t in toks]
  want = [f"{{}}: {t}." for t in CRITERIA_TEXT]
  out, rest = [], line
  for w in want:
    for verdict in ("Yes", "No"):
      if rest.startswith(w.format(verdict)):
        out.append(verdict == "Yes")
        rest = rest[len(w.format(verdict)):].lstrip()
        break
    else:
      return None
  return out if not rest else None


def criterion_accuracy(items, texts) -> dict:
  """How often a judge's claimed criteria (`read_justification`) are true of the response:
  per criterion, accuracy over readable justifications, and the majority-class rate (what
  always answering the commoner verdict scores). `items` are (prompt, response) pairs and
  `texts[i]` the judgements of item i. Returns {criterion: {accuracy, majority, n}} and
  "readable" / "judgements" counts."""
  hits = np.zeros(len(CRITERIA))
  true = np.zeros(len(CRITERIA))
  n = total = 0
  for (prompt, response), judged in zip(items, texts):
    truth = judge_criteria(prompt, response)
    for text in judged:
      total += 1
      claimed = read_justification(text)
      if claimed is None:
        continue
      n += 1
      hits += np.asarray(claimed) == np.asarray(truth)
      true += np.asarray(truth, float)
  out = {"judgements": total, "readable": n}
  for j, name in enumerate(CRITERIA):
    out[name] = ({"accuracy": float(100.0 * hits[j] / n),
                  "majority": float(100.0 * max(true[j], n - true[j]) / n),
                  "n": n} if n else {"accuracy": float("nan"), "majority": float("nan"), "n": 0})
  return out


def eft_examples(n: int, seed: int, compact: bool = True, task: "str | Task" = "sort",
                 worked: bool = False) -> list[dict]:
  """Evaluation fine-tuning data: judge prompt over (train prompt, response of
  0..6 errors uniformly, or 10% random responses) -> justification + "Score: k"
  (`worked`: with the `worked_check` line first). Each record also carries "points"
  (= k) and "oracle" (the oracle score)."""
  rng = _rng("eft", seed, task)
  out = []
  for _ in range(n):
    p = make_prompt(rng, "train", task)
    if rng.random() < 0.1:
      r = random_response(rng, task)
    else:
      r = degrade(rng, p, int(rng.integers(0, 7)))
    out.append({"prompt": judge.render_judge_prompt(p, r, compact=compact),
                "response": justification(p, r, compact, worked), "points": judge_points(p, r),
                "oracle": oracle_score(p, r)})
  return out


def eval_prompts(n: int, seed: int, task: "str | Task" = "sort") -> list[str]:
  """n distinct held-out prompts of `task` (distinct item sets, never a training set)."""
  rng = _rng("eval", seed, task)
  out, seen = [], set()
  while len(out) < n:
    p = make_prompt(rng, "eval", task)
    key = frozenset(parse_prompt(p))
    if key not in seen:
      seen.add(key)
      out.append(p)
  return out


def random_baseline_score(n: int, seed: int, task: "str | Task" = "sort") -> float:
  """Mean oracle score of `random_response`s on `eval_prompts(n, seed, task)`."""
  rng = _rng("random", seed, task)
  prompts = eval_prompts(n, seed, task)
  return float(oracle_scores(prompts, [random_response(rng, task) for _ in prompts]).mean())


def echo_baseline_score(prompts: Sequence[str]) -> float:
  """Mean oracle score of copying the prompt's numbers unsorted."""
  return float(oracle_scores(prompts, [echo_response(p) for p in prompts]).mean())


# ----------------------------------------------------------------- CLI

FILES = ("pairs_train", "pairs_eval", "ift", "eft", "prompts_eval", "sft_chosen")


def write_files(out_dir: str, n_train: int, n_eval: int, seed: int,
                files: Sequence[str] = FILES, task: "str | Task" = "sort") -> dict[str, str]:
  """Write `files` (names from `FILES`) of `task` as DIR/<name>.jsonl; returns
  {name: path}. ValueError on an unknown file name or task."""
  get_task(task)
  unknown = sorted(set(files) - set(FILES))
  if unknown:
    raise ValueError(f"unknown file(s) {unknown} (known: {FILES})")
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for name in files:
    path = paths[name] = os.path.join(out_dir, f"{name}.jsonl")
    if name == "pairs_train":
      write_pairs_jsonl(path, preference_pairs(n_train, seed, task=task))
    elif name == "sft_chosen":   # SFT data of the usual RLHF recipe: x -> y_w of pairs_train
      with open(path, "w") as f:
        for q in preference_pairs(n_train, seed, task=task):
          f.write(json.dumps({"prompt": q.prompt, "response": q.chosen}) + "\n")
    elif name == "pairs_eval":
      write_pairs_jsonl(path, preference_pairs(n_eval, seed, split="eval", task=task))
    else:
      recs = (ift_examples(n_train, seed, task) if name == "ift" else
              eft_examples(n_train, seed, task=task) if name == "eft" else
              [{"prompt": p} for p in eval_prompts(n_eval, seed, task)])
      with open(path, "w") as f:
        for r in recs:
          f.write(json.dumps(r) + "\n")
  return paths


def read_generations(path: str) -> tuple[list[str], list[str]]:
  """(prompts, responses) of a generations.jsonl; the response may be empty."""
  prompts, responses = [], []
  for lineno, raw in records.iter_lines(path):   # .gz too; a damaged file is named
    if not raw.strip():
      continue
    where = f"{path}:{lineno}"
    try:
      rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise DataError(f"{where}: malformed JSON ({e})") from None
    if not isinstance(rec, dict):
      raise DataError(f"{where}: expected a JSON object")
    for k in ("prompt", "response"):
      if not isinstance(rec.get(k), str):
        raise DataError(f"{where}: field '{k}' is missing or not a string")
    try:
      parse_prompt(rec["prompt"])
    except ValueError as e:
      raise DataError(f"{where}: field 'prompt': {e}") from None
    prompts.append(rec["prompt"])
    responses.append(rec["response"])
  if not prompts:
    raise DataError(f"{path}: no generations")
  return prompts, responses


def score_summary(prompts: Sequence[str], responses: Sequence[str], seed: int = 0,
                  task: "str | Task" = "sort") -> dict:
  """n, oracle mean/std (in [0, 1]), exact-match rate, mean judge points (0..5),
  the echo baseline on the same prompts and the random baseline (`seed`) on
  `task`'s held-out prompts."""
  s = oracle_scores(prompts, responses)
  pts = [judge_points(p, r) for p, r in zip(prompts, responses)]
  return {"n": len(s), "oracle_mean": float(s.mean()), "oracle_std": float(s.std()),
          "exact_match": float(np.mean([r == gold_response(p) for p, r in zip(prompts, responses)])),
          "judge_points_mean": float(np.mean(pts)),
          "random_baseline": random_baseline_score(len(s), seed, task),
          "echo_baseline": echo_baseline_score(prompts)}


def oracle_pairs(prompts: Sequence[str], responses: Sequence[str],
                 min_gap: float = 0.0) -> tuple[list[PreferencePair], dict]:
  """Best-vs-worst pairs by the oracle from N sampled responses per prompt
  (rows of one prompt grouped in first-seen order): on-policy DPO data. Empty
  responses are dropped (a pair's texts must be non-empty) and counted."""
  groups: dict[str, list[str]] = {}
  empty = 0
  for p, r in zip(prompts, responses):
    group = groups.setdefault(p, [])
    if r.strip():
      group.append(r)
    else:
      empty += 1
  pairs = []
  for p, rs in groups.items():
    pair = best_vs_worst(p, rs, [oracle_score(p, r) for r in rs], min_gap)
    if pair is not None:
      pairs.append(pair)
  sizes = [len(rs) for rs in groups.values()]
  return pairs, {"prompts": len(groups), "pairs": len(pairs), "empty_dropped": empty,
                 "candidates_min": min(sizes),
                 "candidates_max": max(sizes),
                 "mean_margin": float(np.mean([q.margin for q in pairs])) if pairs else 0.0}


def main(argv=None):
  """The CLI (module doc): write data files, `score`, or `pairs`; returns the
  exit status (2 on a bad or unreadable generations file)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "pairs":
    ap = argparse.ArgumentParser(
        prog="python -m pit.data.synthetic pairs",
        description="Oracle best-vs-worst preference pairs from a generations.jsonl with "
                    "several samples per prompt (generate.num_samples > 1).")
    ap.add_argument("--generations", required=True)
    ap.add_argument("--out", required=True, help="pairs JSONL to write")
    ap.add_argument("--min_gap", type=float, default=0.0,
                    help="keep a prompt only if best - worst oracle score exceeds this")
    a = ap.parse_args(argv[1:])
    try:
      pairs, stats = oracle_pairs(*read_generations(a.generations), min_gap=a.min_gap)
    except (OSError, DataError) as e:
      sys.stderr.write(f"error: {e}\n")
      return 2
    write_pairs_jsonl(a.out, pairs)
    print(json.dumps(stats))
    return 0
  if argv and argv[0] == "score":
    ap = argparse.ArgumentParser(prog="python -m pit.data.synthetic score",
                                 description="Mean oracle score of a generations.jsonl.")
    ap.add_argument("--generations", required=True)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    ap.add_argument("--task", default="sort", choices=list(TASKS),
                    help="task of the random baseline's prompts")
    a = ap.parse_args(argv[1:])
    try:
      summary = score_summary(*read_generations(a.generations), seed=a.seed, task=a.task)
    except (OSError, DataError) as e:
      sys.stderr.write(f"error: {e}\n")
      return 2
    print(f"oracle score {summary['oracle_mean']:.4f} (n={summary['n']}, exact match "
          f"{summary['exact_match']:.3f}, judge points {summary['judge_points_mean']:.2f}/5) | "
          f"random baseline {summary['random_baseline']:.4f} | "
          f"echo baseline {summary['echo_baseline']:.4f}")
    print(json.dumps(summary))
    return 0
  ap = argparse.ArgumentParser(prog="python -m pit.data.synthetic",
                               description="Write the synthetic sort task's data files.")
  ap.add_argument("--out_dir", required=True)
  ap.add_argument("--n_train", type=int, default=10000)
  ap.add_argument("--n_eval", type=int, default=500)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--files", default=",".join(FILES), help=f"comma list of {FILES}")
  ap.add_argument("--task", default="sort", choices=list(TASKS), help="task variant")
  a = ap.parse_args(argv)
  paths = write_files(a.out_dir, a.n_train, a.n_eval, a.seed,
                      [f for f in a.files.split(",") if f], task=a.task)
  for name, path in paths.items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
