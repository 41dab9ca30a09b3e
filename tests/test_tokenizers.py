"""SentencePiece train/load, offline HF tokenizer directories, chat templates, make_tokenizer."""
import json
import os

import ml_collections
import pytest

from pit.data import tokenizer as tk

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "reverse: hello world and sort 3 1 2 then add 12+7",
    "Human: how are you today? Assistant: I am fine, thank you.",
    "pack my box with five dozen liquor jugs",
    "self improvement through implicit preference learning",
] * 20
TEXTS = ["the lazy fox, reversed: xof yzal", "héllo wörld ✓ 12+7=19\nnew line  two spaces",
         "\n\nHuman: hi\n\nAssistant:"]


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def test_plain_chat_template():
  turns = [("system", "Be brief."), ("user", "hi"), ("assistant", "hello"), ("human", "bye")]
  assert tk.render_plain_chat(turns) == ("Be brief.\n\nHuman: hi\n\nAssistant: hello"
                                         "\n\nHuman: bye\n\nAssistant:")
  assert tk.ByteTokenizer().render_chat([("user", "q")], add_generation_prompt=False) == \
      "\n\nHuman: q"
  with pytest.raises(ValueError, match="unknown role 'robot'"):
    tk.render_plain_chat([("robot", "x")])
  with pytest.raises(ValueError, match="system turn must come first"):
    tk.render_plain_chat([("user", "x"), ("system", "y")])


def test_sentencepiece_train_is_deterministic_and_round_trips(tmp_path):
  a = tk.train_sentencepiece(CORPUS, 400, str(tmp_path / "a" / "spm"))
  corpus_file = tmp_path / "corpus.txt"
  corpus_file.write_text("\n".join(CORPUS) + "\n")
  b = tk.train_sentencepiece(str(corpus_file), 400, str(tmp_path / "b" / "spm"))
  tok = tk.make_tokenizer(_cfg(kind="sentencepiece", path=a))
  tok_b = tk.SentencePieceTokenizer(b)
  # same corpus (list or file) -> identical vocabulary and scores
  pieces = lambda sp: [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
  assert pieces(tok.sp) == pieces(tok_b.sp)
  assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
  assert 300 < tok.vocab_size <= 400
  for text in TEXTS:
    ids = tok.encode(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode("junk")) == text
  # learned merges: frequent words take fewer pieces than bytes
  assert len(tok.encode("the quick brown fox")) < len("the quick brown fox") // 2
  with pytest.raises(ValueError, match="too small"):
    tk.train_sentencepiece(CORPUS, 200, str(tmp_path / "c" / "spm"))


def _hf_dir(tmp_path, chat_template=True):
  from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
  from transformers import PreTrainedTokenizerFast
  specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
  t = Tokenizer(models.BPE(unk_token="<unk>"))
  t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = decoders.ByteLevel()
  t.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=400, special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
              "{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  fast = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>",
                                 eos_token="</s>", unk_token="<unk>",
                                 additional_special_tokens=["<|im_start|>", "<|im_end|>"])
  if chat_template:
    fast.chat_template = template
  d = tmp_path / ("hf" if chat_template else "hf_plain")
  fast.save_pretrained(str(d))
  return str(d)


def test_hf_directory_loads_offline_renders_chat_and_round_trips(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  d = _hf_dir(tmp_path)
  cfg_json = json.load(open(os.path.join(d, "tokenizer_config.json")))
  assert "chat_template" in cfg_json or os.path.exists(os.path.join(d, "chat_template.jinja"))
  tok = tk.make_tokenizer(_cfg(kind="hf", path=d))
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for text in TEXTS:
    ids = tok.encode(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id] + tok.encode("junk")) == text
  chat = tok.render_chat([("user", "hi"), ("assistant", "hello"), ("user", "bye")])
  assert chat == ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
                  "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n")  # bos dropped
  assert tok.render_chat([("user", "hi")], add_generation_prompt=False) == \
      "<|im_start|>user\nhi<|im_end|>\n"
  ids = tok.encode(chat)
  im_start = tok.tok.convert_tokens_to_ids("<|im_start|>")
  assert ids.count(im_start) == 4  # template markers are single special tokens
  # a directory without a chat template falls back to the plain HH template
  plain = tk.make_tokenizer(_cfg(kind="hf", path=_hf_dir(tmp_path, chat_template=False)))
  assert plain.render_chat([("user", "hi")]) == "\n\nHuman: hi\n\nAssistant:"


def test_make_tokenizer_errors_name_the_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    tk.make_tokenizer(_cfg(kind="sentencepiece", path=str(tmp_path / "nope.model")))
  with pytest.raises(ValueError, match="no SentencePiece .model file given"):
    tk.make_tokenizer(_cfg(kind="sentencepiece", path=""))
  with pytest.raises(FileNotFoundError, match="tokenizer directory not found: .*nodir"):
    tk.make_tokenizer(_cfg(kind="hf", path=str(tmp_path / "nodir")))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty/tokenizer.json not found"):
    tk.make_tokenizer(_cfg(kind="hf", path=str(tmp_path / "empty")))
  with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):
    tk.make_tokenizer(_cfg(kind="wordpiece"))
  assert isinstance(tk.make_tokenizer(_cfg(kind="byte")), tk.ByteTokenizer)
  with pytest.raises(FileNotFoundError, match="corpus not found"):
    tk.train_sentencepiece(str(tmp_path / "none.txt"), 300, str(tmp_path / "x"))
