"""Input formats of PIT (Wang et al., 2023): the reference-conditioned policy
M_PIT(y | x, y_ref) and the gap reward model r_gap(x, y, y_ref).

The gap reward model reads exactly the policy's input followed by the candidate
response, i.e. the transcript "here is x and a reference answer, now a better
one: y", scored at its last token. So r_gap(x, y, y_ref) needs no second format
and the policy and reward model always agree on what the reference is.

Templates are config strings with the fields {prompt} and {reference}:
  chat   for conversational data whose prompts end in "\\n\\nAssistant:" and whose
         responses start with a space (HH-RLHF style); asks, as a new user turn,
         for a better response than the previous one.
  plain  for compact tasks (the synthetic sort task): "<prompt>ref: <reference>\\n".
"""
from __future__ import annotations

TEMPLATES = {
    "chat": "{prompt} {reference}\n\nHuman: Can you give a better response than that one?\n\nAssistant:",
    "plain": "{prompt}ref: {reference}\n",
}


def template(name_or_text: str) -> str:
  """A template by name ('chat', 'plain') or a literal template string."""
  text = TEMPLATES.get(name_or_text, name_or_text)
  for field in ("{prompt}", "{reference}"):
    if field not in text:
      raise ValueError(f"pit template {name_or_text!r} lacks the field {field}")
  return text


def policy_prompt(prompt: str, reference: str, tmpl: str = "plain") -> str:
  """Input of M_PIT: the instruction x and a reference response y_ref."""
  text = template(tmpl)
  ref = reference.strip() if " {reference}" in text else reference
  return text.format(prompt=prompt, reference=ref)


def gap_input(prompt: str, response: str, reference: str, tmpl: str = "plain") -> str:
  """Input of r_gap(x, y, y_ref): the policy's input followed by the response y."""
  return policy_prompt(prompt, reference, tmpl) + response
