"""Self-instruction creation: new prompts written by the model itself, few-shot from the seed
instructions (Self-Rewarding LMs, Yuan et al. 2024, §3.2 "Self-Instruction Creation" step 1,
after Self-Instruct, Wang et al. 2023).

A few-shot prompt shows `shots` seed instructions drawn at random (one draw per attempt, seeded)
and asks for one more; the model's continuation up to the template's end marker is the new
instruction. Two layouts (`FEWSHOT_TEMPLATES`):

  tags   "<instruction>...</instruction>" per example (multi-line instructions are safe; the
         default for text data)
  lines  one instruction per line (short single-line instructions: the synthetic task)

An instruction is the user's text; `PromptStyle` turns it into the prompt a dataset's models
see (the plain HH dialogue "\\n\\nHuman: ...\\n\\nAssistant:", or the text itself plus a fixed
suffix such as the sort task's newline) and back.

`filter_candidates` keeps a generated instruction only if it parses (a closed instruction),
its length is within [min_chars, max_chars], `valid` accepts it (the synthetic task: a sort
prompt whose items are not a held-out set) and it is new: not a seed instruction and not a
repeat of an earlier kept one (compared after `normalize`: case, whitespace). Every drop is
counted by reason.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Sequence

import numpy as np

FEWSHOT_TEMPLATES = {
    "tags": ("Below are example instructions. Write one new instruction of the same kind, "
             "different from all of them.\n\n", "<instruction>{instruction}</instruction>\n",
             "<instruction>", "</instruction>"),
    "lines": ("New instruction like these:\n", "{instruction}\n", "", "\n"),
}
DROP_REASONS = ("unterminated", "empty", "too_short", "too_long", "invalid", "seed_duplicate",
                "duplicate")


def normalize(text: str) -> str:
  """The comparison key of an instruction: lower case, whitespace runs collapsed, stripped."""
  return re.sub(r"\s+", " ", text).strip().lower()


def fewshot_prompt(examples: Sequence[str], layout: str = "tags") -> str:
  """The few-shot prompt for `examples` (instructions) in `layout` (FEWSHOT_TEMPLATES), ending
  where the model writes the new instruction. ValueError on an unknown layout, no examples, or
  an example containing the layout's end marker (it would end the example early)."""
  if layout not in FEWSHOT_TEMPLATES:
    raise ValueError(f"unknown few-shot layout {layout!r} (known: {', '.join(FEWSHOT_TEMPLATES)})")
  if not examples:
    raise ValueError("fewshot_prompt: no examples")
  head, item, opener, end = FEWSHOT_TEMPLATES[layout]
  for e in examples:
    if end in e:
      raise ValueError(f"few-shot example {e!r} contains the {layout!r} layout's end marker "
                       f"{end!r}")
  return head + "".join(item.format(instruction=e) for e in examples) + opener


def parse_generated(text: str, layout: str = "tags", ended: bool = False) -> str | None:
  """The new instruction in a continuation of `fewshot_prompt`: the text before the layout's
  end marker, stripped. Without the marker: when the model `ended` the text itself (sampled
  eos: a chat model answers the few-shot prompt as a user turn, so its reply is the new
  instruction and closes with eos, often without the tag), the whole reply, a leading opener
  tag removed; else None (cut off by the token budget: unterminated)."""
  opener, end = FEWSHOT_TEMPLATES[layout][2], FEWSHOT_TEMPLATES[layout][3]
  i = text.find(end)
  if i >= 0:
    text = text[:i]
  elif not ended:
    return None
  text = text.strip()
  if opener and text.startswith(opener):
    text = text[len(opener):].strip()
  return text


def training_row(examples: Sequence[str], target: str, layout: str = "tags") -> dict:
  """An instruction-creation SFT row {"prompt": the few-shot prompt, "response": target + the
  end marker}: teaches a model trained from scratch the skill a pretrained one has."""
  return {"prompt": fewshot_prompt(examples, layout),
          "response": target + FEWSHOT_TEMPLATES[layout][3]}


def draw_shots(rng: np.random.Generator, pool: Sequence[str], shots: int) -> list[str]:
  """`shots` distinct instructions of `pool` in random order (all of them when fewer)."""
  k = min(int(shots), len(pool))
  return [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]


@dataclasses.dataclass(frozen=True)
class PromptStyle:
  """How a dataset's prompts wrap an instruction: "plain_chat" (the plain HH dialogue
  "\\n\\nHuman: {instruction}\\n\\nAssistant:") or "raw" (instruction + `suffix`)."""
  kind: str = "raw"
  suffix: str = ""

  def prompt(self, instruction: str) -> str:
    """The prompt a model of this dataset sees for `instruction`."""
    if self.kind == "plain_chat":
      return f"\n\nHuman: {instruction}\n\nAssistant:"
    return instruction + self.suffix

  def instruction(self, prompt: str) -> str | None:
    """The instruction of a single-turn prompt; None for a prompt this style cannot read (a
    multi-turn dialogue)."""
    if self.kind == "plain_chat":
      from pit.data.tokenizer import parse_plain_chat
      if not prompt.startswith("\n\nHuman:"):
        return None
      turns = parse_plain_chat(prompt)
      if len(turns) != 1 or turns[0][0] != "user":
        return None
      return turns[0][1] or None
    if self.suffix and not prompt.endswith(self.suffix):
      return None
    text = prompt[:len(prompt) - len(self.suffix)] if self.suffix else prompt
    return text.strip() or None

  @classmethod
  def infer(cls, prompts: Sequence[str]) -> "PromptStyle":
    """"plain_chat" when the prompts are plain HH dialogues, else "raw" with the newline suffix
    when every prompt ends in one (the sort task), else no suffix."""
    if prompts and all(p.startswith("\n\nHuman:") for p in prompts[:50]):
      return cls("plain_chat")
    if prompts and all(p.endswith("\n") for p in prompts):
      return cls("raw", "\n")
    return cls("raw", "")

  def as_dict(self) -> dict:
    """{"kind", "suffix"}: the style as plain JSON (stage summaries)."""
    return dataclasses.asdict(self)


def filter_candidates(texts: Iterable[str | None], seeds: Iterable[str], *, min_chars: int = 1,
                      max_chars: int = 2000, valid: Callable[[str], str | None] | None = None,
                      limit: int = 0) -> tuple[list[str], dict]:
  """(kept instructions in generation order, counts). `texts` are parsed generations (None:
  unterminated); `valid(instruction)` returns None to keep or a reason to drop (counted as
  "invalid:<reason>"); `limit` > 0 stops keeping after that many (the rest counted as
  "over_limit"). counts has "generated", "kept" and one entry per drop reason."""
  seen_seed = {normalize(s) for s in seeds}
  seen: set[str] = set()
  counts = {"generated": 0, "kept": 0, **{r: 0 for r in DROP_REASONS}}
  kept = []
  for t in texts:
    counts["generated"] += 1
    if t is None:
      reason = "unterminated"
    elif not t.strip():
      reason = "empty"
    elif len(t) < min_chars:
      reason = "too_short"
    elif len(t) > max_chars:
      reason = "too_long"
    else:
      why = valid(t) if valid is not None else None
      key = normalize(t)
      if why is not None:
        reason = "invalid"
        counts[f"invalid:{why}"] = counts.get(f"invalid:{why}", 0) + 1
      elif key in seen_seed:
        reason = "seed_duplicate"
      elif key in seen:
        reason = "duplicate"
      elif limit and len(kept) >= limit:
        reason = "over_limit"
      else:
        seen.add(key)
        kept.append(t)
        counts["kept"] += 1
        continue
    counts[reason] = counts.get(reason, 0) + 1
  return kept, counts


def synthetic_validity(task: str = "sort") -> Callable[[str], str | None]:
  """`valid` for the synthetic sort task: the instruction must parse as a sort prompt
  ("unparseable" otherwise) of the task's list length ("wrong_length") whose item set is not
  held out ("held_out": no eval prompt ever becomes a training prompt, `pit.data.synthetic`)."""
  from pit.data import synthetic
  t = synthetic.get_task(task)

  def valid(instruction: str) -> str | None:
    try:
      items = synthetic.parse_prompt(instruction.strip() + "\n")
    except ValueError:
      return "unparseable"
    if not t.min_items <= len(items) <= t.max_items:
      return "wrong_length"
    if synthetic.is_eval_items(items):
      return "held_out"
    return None
  return valid


def usable_seeds(seeds: Sequence[str], layout: str) -> list[str]:
  """The seed instructions a few-shot prompt of `layout` can show (those without its end
  marker: a multi-line instruction cannot be one line of the 'lines' layout)."""
  end = FEWSHOT_TEMPLATES[layout][3]
  return [s for s in seeds if end not in s]
