"""Tokenizers behind one small interface.

`ByteTokenizer` (UTF-8 bytes + specials) needs no training and no files, which
makes it the tokenizer of the from-scratch tiny presets and of the tests.
"""
from __future__ import annotations

from typing import Protocol, Sequence


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
  """ids 0..255 are bytes; then pad, bos, eos."""

  def __init__(self):
    self.pad_id, self.bos_id, self.eos_id = 256, 257, 258
    self.vocab_size = 259

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if 0 <= i < 256:
        out.append(i)
    return out.decode("utf-8", errors="replace")


def make_tokenizer(cfg) -> Tokenizer:
  kind = cfg.get("kind", "byte")
  if kind == "byte":
    return ByteTokenizer()
  raise ValueError(f"tokenizer.kind: unknown tokenizer {kind!r} (known: 'byte')")
