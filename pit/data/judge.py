"""LLM-as-a-Judge prompts and score parsing (Self-Rewarding LMs, Yuan et al. 2024).

`JUDGE_PROMPT` is the paper's additive 5-point prompt (its Figure 2), word for
word with ASCII quotes, `{instruction}` / `{response}` in place of
<INSTRUCTION_HERE> / <RESPONSE_HERE>, and the "Score: <total points>" format.
`JUDGE_PROMPT_COMPACT` keeps its frame (User turn, <response> tags, additive
5-point score) in a few dozen bytes for byte-level models with short contexts.
"""
from __future__ import annotations

import math
import re

JUDGE_PROMPT = """Review the user's question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:
- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.

User: {instruction}

<response>{response}</response>

After examining the user's instruction and the response:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we'll systematically attribute points based on the outlined criteria.
"""

JUDGE_PROMPT_COMPACT = "Judge, additive 0-5.\nUser: {instruction}\n<response>{response}</response>\n"

MAX_SCORE = 5.0
_FIELD_RE = re.compile(r"\{(instruction|response)\}")
# The grammar of `parse_judge_score` (see its docstring).
_DECOR = r"[\s*_`~\[\](){}<>\"']*"
_LABEL_RE = re.compile(r"\bscore\b" + _DECOR + r"[:=]", re.IGNORECASE)          # "Score:", "score ="
_PROSE_LABEL_RE = re.compile(r"\bscore" + _DECOR + r"\bis\b" + _DECOR + r"[:=]?",   # "the score is",
                             re.IGNORECASE)                                    # "score is: 4"
_VALUE_RE = re.compile(
    r"(?P<lead>[\s*_`~\[(<\"']*)"                      # markdown / brackets before the number
    r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"  # any number-like token
    r"(?P<scale>\s*(?:/|out\s+of)\s*(?P<den>\d+(?:\.\d+)?))?"  # "4/5", "4 out of 5"
    r"(?P<trail>[*_`~\])>\"']*)")
# After the value: nothing, or a boundary that cannot continue a number, a range, a fraction
# ("4 1/2"), an arrow ("3 -> 4") or a list of scores ("4; 5").
_AMBIGUOUS_TAIL_RE = re.compile(
    r"^(?:\.\d|[\w-]|\s*(?:-|–|—|to|or|and|/|\+|->|=>|→)\s*\d|\s*[,;]\s*\d|\s+\d+\s*/\s*\d)",
    re.IGNORECASE)


def parse_judge_score(text: str | None) -> float | None:
  """The judge's final score in `text`, or None when there is none or it is ambiguous.

  Grammar (case-insensitive):
    label  := the word "score", then optional markdown/brackets, then ":" or "="
              ("Score:", "**Score:**", "Total score =")
    value  := optional markdown/brackets ("**", "[", "(", "`"), a plain decimal number
              (digits with an optional fraction: "4", "4.5", "4."), an optional scale
              "/5" or "out of 5" (a denominator other than 5 -> None), then optional
              closing markdown/brackets
    end    := the end of the text, whitespace, or punctuation such as "." "," "!"
  The LAST label decides (a judge that revises itself ends with its final score); when
  the text has no such label, the last "score is <value>" does ("The score is 3.", "The
  score is: 3"), so
  prose after a labelled score ("a perfect score is 5") never overrides it. The value
  must be in [0, 5]. None (never a number) for: no label; a label with no number
  ("Score: <total points>", "Score: five"); exponent or signed forms ("1e-1", "-1",
  "+3"); ranges, alternatives and lists ("3-4", "3 or 4", "3 -> 4", "3, 4", "4; 5"); mixed
  fractions ("4 1/2"); another scale ("8/10"); values outside [0, 5]; a final label whose
  value is ambiguous (an earlier valid score is not used instead). Callers count None
  judgements (NaN scores) and report them; they never become a number.

  Source: the "Score: <total points>" format of Yuan et al. 2024 (Figure 2)."""
  if not text:
    return None
  labels = list(_LABEL_RE.finditer(text)) or list(_PROSE_LABEL_RE.finditer(text))
  if not labels:
    return None
  rest = text[labels[-1].end():]
  m = _VALUE_RE.match(rest)
  if not m:
    return None
  num = m.group("num")
  if not re.fullmatch(r"\d+(?:\.\d*)?", num):   # signs, exponents, ".5"-style fragments
    return None
  if m.group("den") is not None and float(m.group("den")) != MAX_SCORE:
    return None
  tail = rest[m.end():]
  if num.endswith(".") and tail[:1].isdigit():
    return None
  if _AMBIGUOUS_TAIL_RE.match(tail):
    return None
  k = float(num)
  return k if math.isfinite(k) and 0.0 <= k <= MAX_SCORE else None


def render_judge_prompt(instruction: str, response: str, compact: bool = False) -> str:
  """The judge prompt for one (instruction, response). Surrounding whitespace of
  the instruction is stripped (prompts often end in a newline)."""
  template = JUDGE_PROMPT_COMPACT if compact else JUDGE_PROMPT
  values = {"instruction": instruction.strip(), "response": response}
  return _FIELD_RE.sub(lambda m: values[m.group(1)], template)   # one pass: braces in text are safe


