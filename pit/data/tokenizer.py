"""Tokenizers behind one small interface.

Kinds (`config.tokenizer.kind`, `make_tokenizer`):
  'byte'           `ByteTokenizer`: UTF-8 bytes + pad/bos/eos; no files. The
                   tokenizer of the from-scratch tiny presets and of the tests.
  'sentencepiece'  `SentencePieceTokenizer(tokenizer.path)`: a `.model` file,
                   e.g. one trained here with `train_sentencepiece`.
  'hf'             `HFTokenizer(tokenizer.path)`: a local Hugging Face tokenizer
                   directory (tokenizer.json / tokenizer_config.json), loaded
                   offline; its `chat_template` renders chats.
  'gguf'           `HFTokenizer.from_gguf(tokenizer.path)`: the tokenizer and chat
                   template in a .gguf file's metadata.

Conventions shared by every kind (the pipelines rely on them):
  * `encode(text)` adds no special tokens.
  * `encode_prompt_parts(text)` -> (prefix, body): the ids a sequence starts with
    (`sequence_prefix`: [bos] for byte / SentencePiece; for HF what the tokenizer
    itself puts in front, e.g. <s> for Llama, nothing for Qwen or GPT-2) and the
    prompt's ids. Text that begins with a special token was rendered by a chat
    template and is encoded exactly as written (no second bos), so a prompt gets
    the ids `apply_chat_template(..., tokenize=True)` gives. Every trainer,
    sampler and scorer encodes through `pit.data.encoding`, which uses this.
  * a response is `encode(response) + [eos_id]`.
  * `decode(ids)` stops at the first `eos_id` and drops pad/bos/other specials.
  * `render_chat(turns)` turns [(role, text), ...] into one prompt string. HF
    directories with a chat template use it verbatim; everything else uses the
    plain HH-RLHF template `PLAIN_CHAT` ("\\n\\nHuman: ...\\n\\nAssistant: ...").

Train a SentencePiece model from the command line:
  python -m pit.data.tokenizer --input corpus.txt --vocab_size 4000 --model_prefix out/spm
"""
from __future__ import annotations

import argparse
import os
from typing import Iterable, Protocol, Sequence

Turn = tuple[str, str]

# The plain chat template (HH-RLHF style), used where no Jinja template exists.
PLAIN_CHAT = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: ",
              "generation_prompt": "\n\nAssistant:"}
_ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "system": "system"}


class Tokenizer(Protocol):
  """What every tokenizer kind provides (see the module docstring for the conventions):
  vocabulary size, pad / bos / eos ids and the ids a sequence starts with."""
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  sequence_prefix: list[int]

  def encode(self, text: str) -> list[int]:
    """The ids of `text`, no special tokens added."""

  def encode_prompt_parts(self, text: str) -> tuple[list[int], list[int]]:
    """(prefix, body): the ids a prompt's sequence starts with and the prompt's ids."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids before the first eos, pad / bos / other specials dropped."""

  def render_chat(self, turns: Sequence[Turn], add_generation_prompt: bool = True) -> str:
    """[(role, text), ...] as one prompt string (the chat template, else `PLAIN_CHAT`)."""


def _role(role: str) -> str:
  r = _ROLE_ALIASES.get(str(role).lower())
  if r is None:
    raise ValueError(f"chat turn: unknown role {role!r} (known: user/human, assistant, system)")
  return r


def render_plain_chat(turns: Sequence[Turn], add_generation_prompt: bool = True) -> str:
  """HH-RLHF style: a system turn is plain text at the start; then
  "\\n\\nHuman: {user}" and "\\n\\nAssistant: {assistant}" per turn; with
  `add_generation_prompt` a trailing "\\n\\nAssistant:" for the model to continue."""
  out = []
  for i, (role, text) in enumerate(turns):
    r = _role(role)
    if r == "system":
      if i != 0:
        raise ValueError("chat turn: a system turn must come first")
      out.append(text)
    else:
      out.append(PLAIN_CHAT[r] + text)
  if add_generation_prompt:
    out.append(PLAIN_CHAT["generation_prompt"])
  return "".join(out)


def parse_plain_chat(text: str) -> list[Turn]:
  """The turns of a prompt in the plain HH format (`render_plain_chat`'s output, which is
  how the builders store conversations): text before the first "\n\nHuman: " is a system
  turn, then alternating user / assistant turns; a trailing "\n\nAssistant:" (the
  generation prompt) is dropped. Text without the markers is one user turn. Whitespace at
  the ends of each turn is stripped."""
  import re
  parts = re.split(r"\n\n(Human|Assistant):", text)
  if len(parts) == 1:
    return [("user", text.strip())]
  turns: list[Turn] = []
  if parts[0].strip():
    turns.append(("system", parts[0].strip()))
  pairs = list(zip(parts[1::2], parts[2::2]))
  for i, (marker, body) in enumerate(pairs):
    role = "user" if marker == "Human" else "assistant"
    if role == "assistant" and not body.strip() and i == len(pairs) - 1:
      continue   # the generation prompt
    turns.append((role, body.strip()))
  return turns


def content_ids(ids: Sequence[int], eos_id: int, drop, vocab_size: int | None = None) -> list[int]:
  """The ids before the first eos, without those in `drop` (pad/bos/specials) or out of range."""
  out = []
  for i in ids:
    i = int(i)
    if i == eos_id:
      break
    if i not in drop and (vocab_size is None or 0 <= i < vocab_size):
      out.append(i)
  return out


class ByteTokenizer:
  """ids 0..255 are bytes; then pad, bos, eos."""

  def __init__(self):
    self.pad_id, self.bos_id, self.eos_id = 256, 257, 258
    self.vocab_size = 259
    self.sequence_prefix = [self.bos_id]

  def encode(self, text: str) -> list[int]:
    """UTF-8 bytes of `text` as ids 0..255 (no special tokens)."""
    return list(text.encode("utf-8"))

  def encode_prompt_parts(self, text: str) -> tuple[list[int], list[int]]:
    """([bos], the prompt's byte ids)."""
    return list(self.sequence_prefix), self.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the bytes before the first eos; pad / bos / ids >= 256 dropped,
    invalid UTF-8 replaced (U+FFFD)."""
    return bytes(content_ids(ids, self.eos_id, (), 256)).decode("utf-8", errors="replace")

  def render_chat(self, turns: Sequence[Turn], add_generation_prompt: bool = True) -> str:
    """`render_plain_chat(turns, add_generation_prompt)`."""
    return render_plain_chat(turns, add_generation_prompt)


# ------------------------------------------------------------------ SentencePiece
SPM_SPECIALS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=3)


def train_sentencepiece(texts: Iterable[str] | str, vocab_size: int, model_prefix: str, *,
                        model_type: str = "bpe", byte_fallback: bool = True,
                        character_coverage: float = 1.0, num_threads: int = 1) -> str:
  """Trains a SentencePiece model on `texts` (strings, or the path of a text
  file with one sentence per line); writes `{model_prefix}.model`/`.vocab` and
  returns the `.model` path.

  Deterministic: the whole corpus is used in order (no sampling, no shuffling)
  and one thread by default, so the same corpus gives a byte-identical model.
  Specials: unk=0, bos=1, eos=2, pad=3. With `byte_fallback` (default) every
  UTF-8 string round-trips exactly (256 byte pieces; vocab_size must exceed 260).
  """
  import sentencepiece as spm
  if byte_fallback and vocab_size <= 260:
    raise ValueError(f"vocab_size={vocab_size} too small with byte_fallback (needs > 260)")
  kw = dict(vocab_size=int(vocab_size), model_prefix=str(model_prefix), model_type=model_type,
            byte_fallback=byte_fallback, character_coverage=character_coverage,
            num_threads=int(num_threads), input_sentence_size=0, shuffle_input_sentence=False,
            hard_vocab_limit=False, split_digits=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", minloglevel=2, **SPM_SPECIALS)
  d = os.path.dirname(str(model_prefix))
  if d:
    os.makedirs(d, exist_ok=True)
  if isinstance(texts, (str, os.PathLike)):
    if not os.path.exists(texts):
      raise FileNotFoundError(f"sentencepiece training corpus not found: {texts}")
    spm.SentencePieceTrainer.train(input=str(texts), **kw)
  else:
    lines = [t.replace("\n", " ") for t in texts if t and t.strip()]
    if not lines:
      raise ValueError("train_sentencepiece: empty corpus")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), **kw)
  return f"{model_prefix}.model"


class SentencePieceTokenizer:
  """A SentencePiece `.model`. Models without a pad piece (e.g. Llama's) pad
  with unk (pad positions are always masked out)."""

  def __init__(self, path: str):
    import sentencepiece as spm
    if not path:
      raise ValueError("tokenizer.path: no SentencePiece .model file given")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer.path: SentencePiece model not found: {path}")
    self.path = path
    self.sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = int(self.sp.get_piece_size())
    self.bos_id, self.eos_id = int(self.sp.bos_id()), int(self.sp.eos_id())
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError(f"{path}: SentencePiece model has no bos/eos piece "
                       f"(bos_id={self.bos_id}, eos_id={self.eos_id})")
    pad = int(self.sp.pad_id())
    self.pad_id = pad if pad >= 0 else max(int(self.sp.unk_id()), 0)
    self._drop = {self.pad_id, self.bos_id}
    self.sequence_prefix = [self.bos_id]

  def encode(self, text: str) -> list[int]:
    """The SentencePiece ids of `text` (no bos / eos)."""
    return list(self.sp.encode(text, out_type=int))

  def encode_prompt_parts(self, text: str) -> tuple[list[int], list[int]]:
    """([bos], the prompt's ids)."""
    return list(self.sequence_prefix), self.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids before the first eos, pad / bos and ids outside the vocabulary
    dropped."""
    return self.sp.decode(content_ids(ids, self.eos_id, self._drop, self.vocab_size))

  def render_chat(self, turns: Sequence[Turn], add_generation_prompt: bool = True) -> str:
    """`render_plain_chat(turns, add_generation_prompt)`."""
    return render_plain_chat(turns, add_generation_prompt)


# ------------------------------------------------------------------ Hugging Face
class HFTokenizer:
  """A local Hugging Face tokenizer directory, loaded with `local_files_only`.

  Sequences start with what the tokenizer itself adds (`sequence_prefix`, found by
  encoding a probe with and without special tokens): <s> for Llama, <bos> for Gemma,
  nothing for Qwen and GPT-2. Prompts rendered by the chat template (text beginning
  with a special token) are encoded exactly as written, so their ids equal
  `apply_chat_template(..., tokenize=True)`. No pad -> eos pads (masked anyway);
  `bos_id` is the bos token, else the first prefix id, else eos (nothing prepends it).
  `render_chat` returns the directory's `chat_template` output verbatim or, without a
  template, the plain HH template.
  """

  def __init__(self, path: str, tok=None, chat_template: bool = True):
    if tok is None:
      if not path:
        raise ValueError("tokenizer.path: no Hugging Face tokenizer directory given")
      if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer.path: tokenizer directory not found: {path}")
      known = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
      if not any(os.path.exists(os.path.join(path, f)) for f in known):
        raise FileNotFoundError(f"tokenizer.path: {os.path.join(path, 'tokenizer.json')} not found "
                                f"(nor any of {', '.join(known[1:])})")
      from transformers import AutoTokenizer
      tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.path = path
    self.tok = tok
    t = self.tok
    if t.eos_token_id is None:
      raise ValueError(f"{path}: tokenizer defines no eos_token (set it in tokenizer_config.json)")
    self.eos_id = int(t.eos_token_id)
    self.sequence_prefix = _special_prefix(t)
    self.bos_id = (int(t.bos_token_id) if t.bos_token_id is not None else
                   self.sequence_prefix[0] if self.sequence_prefix else self.eos_id)
    self.pad_id = int(t.pad_token_id) if t.pad_token_id is not None else self.eos_id
    self.vocab_size = len(t)
    # Prompts in the plain HH format go through the model's own chat template.
    self.chat_active = bool(chat_template and t.chat_template)
    self._special = set(int(i) for i in t.all_special_ids)
    added = getattr(t, "added_tokens_decoder", {}) or {}
    self._special_texts = sorted(
        {str(s) for s in t.all_special_tokens} |
        {str(a.content) for a in added.values() if getattr(a, "special", False)}, key=len,
        reverse=True)

  @classmethod
  def from_gguf(cls, path: str, chat_template: bool = True) -> "HFTokenizer":
    """The tokenizer and chat template stored in a GGUF file's metadata
    (`pit.gguf_import.tokenizer_from_gguf`; no torch)."""
    from pit import gguf_import
    return cls(path, gguf_import.tokenizer_from_gguf(path), chat_template)

  def encode(self, text: str) -> list[int]:
    """The tokenizer's ids of `text` without special tokens."""
    return list(self.tok.encode(text, add_special_tokens=False))

  def encode_prompt_parts(self, text: str) -> tuple[list[int], list[int]]:
    """(prefix, body). With a chat template (`chat_active`), a prompt in the plain HH format
    (or plain text: one user turn) is first rendered through it (`parse_plain_chat`, then
    `render_chat`). Text beginning with a special token (a chat template's output) is
    encoded as written and its leading bos, if any, is the prefix; other text gets
    `sequence_prefix` and its ids without special tokens."""
    starts_special = any(text.startswith(s) for s in self._special_texts if s)
    if self.chat_active and not starts_special:
      text = self.render_chat(parse_plain_chat(text))
      starts_special = any(text.startswith(s) for s in self._special_texts if s)
      if not starts_special:   # a template that begins with plain text
        return [], self.encode(text)
    if starts_special:   # a chat template's output
      ids = self.encode(text)
      bos = self.tok.bos_token_id
      k = 1 if ids and bos is not None and ids[0] == int(bos) else 0
      return ids[:k], ids[k:]
    return list(self.sequence_prefix), self.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids before the first eos, special tokens and ids outside the
    tokenizer (a model's padded vocabulary rows) dropped."""
    return self.tok.decode(content_ids(ids, self.eos_id, self._special, len(self.tok)),
                           skip_special_tokens=True)

  def render_chat(self, turns: Sequence[Turn], add_generation_prompt: bool = True) -> str:
    """The directory's chat template applied to `turns` (roles normalised; ValueError on
    an unknown role), else `render_plain_chat`."""
    if not self.tok.chat_template:
      return render_plain_chat(turns, add_generation_prompt)
    msgs = [{"role": _role(r), "content": text} for r, text in turns]
    return self.tok.apply_chat_template(msgs, tokenize=False,
                                        add_generation_prompt=add_generation_prompt)


def _special_prefix(tok) -> list[int]:
  """The ids a HF tokenizer puts in front of a text by itself (its post-processor's
  prefix): encode a probe with and without special tokens and take what precedes it."""
  probe = "probe text"
  plain = list(tok.encode(probe, add_special_tokens=False))
  full = list(tok.encode(probe, add_special_tokens=True))
  for i in range(len(full) - len(plain) + 1):
    if full[i:i + len(plain)] == plain:
      return full[:i]
  return []


def make_tokenizer(cfg) -> Tokenizer:
  """The tokenizer of a config's `tokenizer` section (kind 'byte', 'sentencepiece', 'hf' or
  'gguf'; `path` for the last three). Raises ValueError on an unknown kind (and the
  tokenizer's own ValueError / FileNotFoundError on a missing path)."""
  kind = cfg.get("kind", "byte")
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    return SentencePieceTokenizer(cfg.get("path", ""))
  chat = bool(cfg.get("chat_template", True))
  if kind == "hf":
    return HFTokenizer(cfg.get("path", ""), chat_template=chat)
  if kind == "gguf":
    path = cfg.get("path", "")
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer.path: GGUF file not found: {path!r}")
    return HFTokenizer.from_gguf(path, chat_template=chat)
  raise ValueError(f"tokenizer.kind: unknown tokenizer {kind!r} "
                   "(known: 'byte', 'sentencepiece', 'hf', 'gguf')")


def main():
  """Command line: trains a SentencePiece model (`train_sentencepiece`) and prints the
  .model path."""
  ap = argparse.ArgumentParser(description="Train a SentencePiece model (deterministic).")
  ap.add_argument("--input", required=True, help="text file, one sentence per line")
  ap.add_argument("--vocab_size", type=int, required=True)
  ap.add_argument("--model_prefix", required=True)
  ap.add_argument("--model_type", default="bpe", choices=["bpe", "unigram", "char", "word"])
  args = ap.parse_args()
  print(train_sentencepiece(args.input, args.vocab_size, args.model_prefix,
                            model_type=args.model_type))


if __name__ == "__main__":
  main()
