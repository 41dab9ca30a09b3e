"""PIT input formats: the gap reward model reads the policy input + response."""
import pytest

from pit import pit_format


def test_plain_and_chat_formats():
  x, ref, y = "sort: 42 7 19\n", "7 42 19", "7 19 42"
  assert pit_format.policy_prompt(x, ref) == "sort: 42 7 19\nref: 7 42 19\n"
  assert pit_format.gap_input(x, y, ref) == "sort: 42 7 19\nref: 7 42 19\n7 19 42"
  hx = "\n\nHuman: hi\n\nAssistant:"
  p = pit_format.policy_prompt(hx, " Hello there. ", "chat")
  assert p.startswith(hx + " Hello there.\n\nHuman: ") and p.endswith("\n\nAssistant:")
  assert pit_format.gap_input(hx, " Better.", " Hello there.", "chat") == p + " Better."


def test_literal_template_and_missing_field():
  assert pit_format.policy_prompt("x", "r", "<{prompt}|{reference}>") == "<x|r>"
  with pytest.raises(ValueError, match="lacks the field {reference}"):
    pit_format.policy_prompt("x", "r", "{prompt} only")
