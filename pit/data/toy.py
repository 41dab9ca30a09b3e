"""A small deterministic prompt/response task set shipped with the repo
(`data/toy_sft.jsonl`) so the sft pipeline runs with no downloads.

Regenerate: `python -m pit.data.toy --out data/toy_sft.jsonl --n 3000`.
"""
from __future__ import annotations

import argparse
import json
import random
import string


def _word(rng, lo=3, hi=8):
  return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def make_record(rng: random.Random) -> dict:
  """One {"prompt", "response"} record of a task drawn from `rng`: reverse, upper,
  sort (digits), add (two numbers 0..99) or repeat."""
  task = rng.choice(["reverse", "upper", "sort", "add", "repeat"])
  if task == "reverse":
    w = _word(rng)
    return {"prompt": f"reverse: {w}\n", "response": w[::-1]}
  if task == "upper":
    w = " ".join(_word(rng) for _ in range(rng.randint(1, 3)))
    return {"prompt": f"upper: {w}\n", "response": w.upper()}
  if task == "sort":
    xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 7))]
    return {"prompt": f"sort: {' '.join(map(str, xs))}\n", "response": " ".join(map(str, sorted(xs)))}
  if task == "add":
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"prompt": f"add: {a}+{b}\n", "response": str(a + b)}
  w = _word(rng, 2, 4)
  k = rng.randint(2, 4)
  return {"prompt": f"repeat {k}: {w}\n", "response": " ".join([w] * k)}


def make_records(n: int, seed: int = 0) -> list[dict]:
  """`n` records from `random.Random(seed)` (the same seed gives the same records)."""
  rng = random.Random(seed)
  return [make_record(rng) for _ in range(n)]


def write_jsonl(path: str, records) -> None:
  """Writes `records` to `path`, one JSON object per line (not atomic)."""
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def main():
  """Command line: writes `--n` records (seed `--seed`) to `--out`."""
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--n", type=int, default=3000)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  write_jsonl(args.out, make_records(args.n, args.seed))


if __name__ == "__main__":
  main()
