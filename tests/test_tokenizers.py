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
    # ids a model's padded vocabulary can sample beyond the tokenizer are dropped
    assert tok.decode(ids + [len(tok.tok), len(tok.tok) + 7]) == text
  chat = tok.render_chat([("user", "hi"), ("assistant", "hello"), ("user", "bye")])
  assert chat == ("<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
                  "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n")  # verbatim
  assert tok.render_chat([("user", "hi")], add_generation_prompt=False) == \
      "<s><|im_start|>user\nhi<|im_end|>\n"
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


# ------------------------------------------------ chat templates: the ids transformers gives

TEMPLATES = {
    # name: (specials, bos, eos, tokenizer adds bos itself, chat template)
    "llama2": (["<unk>", "<s>", "</s>"], "<s>", "</s>", True,
               "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
               "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}"
               "{% endfor %}"),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>", True,
               "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
               "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
               "{% endif %}"),
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", False,
               "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", True,
              "{{ bos_token }}{% for m in messages %}<start_of_turn>"
              "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
              "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
              "{% endif %}"),
}


def _styled_dir(tmp_path, style):
  """A local HF directory shaped like `style`'s real tokenizer: its specials, whether its
  post-processor puts bos in front, and its chat template."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast
  specials, bos, eos, adds_bos, template = TEMPLATES[style]
  t = Tokenizer(models.BPE(unk_token=specials[0]))
  t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = decoders.ByteLevel()
  t.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if adds_bos:
    t.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, t.token_to_id(bos))])
  kw = dict(eos_token=eos, unk_token=specials[0])
  if bos:
    kw["bos_token"] = bos
  fast = PreTrainedTokenizerFast(tokenizer_object=t, additional_special_tokens=specials, **kw)
  fast.chat_template = template
  d = tmp_path / style
  fast.save_pretrained(str(d))
  return str(d)


def _hf_chat_ids(path, msgs):
  from transformers import AutoTokenizer
  ref = AutoTokenizer.from_pretrained(path, local_files_only=True)
  out = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
  return list(out["input_ids"] if hasattr(out, "keys") else out), ref


@pytest.mark.parametrize("style", sorted(TEMPLATES))
def test_chat_prompts_get_exactly_the_template_ids(tmp_path, style):
  """A prompt rendered with a model's chat template is encoded to the ids
  `apply_chat_template(..., tokenize=True)` gives: no extra bos (Llama) and no eos standing in
  for a missing bos (Qwen's ChatML); plain prompts get what the tokenizer itself adds."""
  from pit.data import encoding
  path = _styled_dir(tmp_path, style)
  tok = tk.HFTokenizer(path)
  for turns in ([("user", "the quick brown fox")],
                [("user", "hi"), ("assistant", "hello there"), ("user", "sort 3 1 2")]):
    msgs = [{"role": r, "content": c} for r, c in turns]
    want, ref = _hf_chat_ids(path, msgs)
    assert encoding.prompt_ids(tok, tok.render_chat(turns)) == want, style
    # every path that builds a sequence from this prompt starts with the same ids
    ex = encoding.example(tok, tok.render_chat(turns), " fine", max_len=256, max_response_len=64)
    assert ex.tokens.tolist()[:len(want)] == want
    # the template's assistant header separates the response: its leading space is dropped
    assert ex.tokens.tolist()[len(want):] == tok.encode("fine") + [tok.eos_id]
  # plain text and plain-HH prompts are rendered through the template as turns
  want, _ = _hf_chat_ids(path, [{"role": "user", "content": "the lazy dog"}])
  assert encoding.prompt_ids(tok, "the lazy dog") == want
  hh = "\n\nHuman: hi\n\nAssistant: hello there\n\nHuman: sort 3 1 2\n\nAssistant:"
  want, _ = _hf_chat_ids(path, [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello there"},
                                {"role": "user", "content": "sort 3 1 2"}])
  assert encoding.prompt_ids(tok, hh) == want
  # with chat_template=False: the tokenizer's own prefix (its post-processor), like ref(text)
  raw = tk.HFTokenizer(path, chat_template=False)
  assert encoding.prompt_ids(raw, "the lazy dog") == ref("the lazy dog")["input_ids"]
  if style == "chatml":
    assert tok.sequence_prefix == [] and want[0] == ref.convert_tokens_to_ids("<|im_start|>")
  else:
    assert tok.sequence_prefix == [ref.bos_token_id]
    assert want.count(ref.bos_token_id) == (2 if style == "llama2" else 1)  # one per [INST]
