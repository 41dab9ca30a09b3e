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
_SCORE_RE = re.compile(r"score:\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def render_judge_prompt(instruction: str, response: str, compact: bool = False) -> str:
  """The judge prompt for one (instruction, response). Surrounding whitespace of
  the instruction is stripped (prompts often end in a newline)."""
  template = JUDGE_PROMPT_COMPACT if compact else JUDGE_PROMPT
  values = {"instruction": instruction.strip(), "response": response}
  return _FIELD_RE.sub(lambda m: values[m.group(1)], template)   # one pass: braces in text are safe


def parse_judge_score(text: str) -> float | None:
  """The last "Score: k" in `text` (k may be fractional); None when there is
  none or it lies outside 0..5."""
  hits = _SCORE_RE.findall(text or "")
  if not hits:
    return None
  k = float(hits[-1])
  return k if math.isfinite(k) and 0.0 <= k <= MAX_SCORE else None
