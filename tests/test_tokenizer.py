"""The tokenizer: id-for-id parity with Hugging Face and llama.cpp, streaming, bad input.

* Every case of tests/data/tokenizer_corpus.json is encoded by the runtime from a vocab-only
  GGUF written by the converter from the real MiniCPM-o 4.5 tokenizer files, and compared
  with ``transformers.Qwen2TokenizerFast`` (the checkpoint's MiniCPMOTokenizerFast is a
  subclass of it whose remote code is not needed for tokenizing): ids, ids with special
  tokens left as text, decode with and without skipping special tokens, and the round trip.
* llama.cpp's test vectors for its vocab-only Qwen2 GGUF pass, read as its
  test-tokenizer-0 reads them.
* Streaming decode adds up to the full decode when tokens cut UTF-8 characters.
* Malformed tokenizer metadata gives a minicpm_cpp.Error, and the converter's ValueErrors.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import List

import pytest

import gguf
import minicpm_cpp
import tiny_models
from minicpm_cpp.convert.tokenizer import add_tokenizer, write_vocab_only_gguf

DATA_DIR = Path(__file__).resolve().parent / "data"
N_VOCAB = 151748  # embedding rows of MiniCPM-o 4.5's LLM: 151643 BPE tokens + 105 added ones
VOCAB_SEP = "\n__ggml_vocab_test__\n"

CORPUS = json.loads((DATA_DIR / "tokenizer_corpus.json").read_text(encoding="utf-8"))

# llama.cpp's token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def _vocab_cases():
    """llama.cpp's ggml-vocab-qwen2.gguf.inp/.out: the text written before each separator,
    one line of ids per case in .out."""
    base = tiny_models.assets_dir() / "vocab" / "ggml-vocab-qwen2.gguf"
    with open(base.with_suffix(".gguf.inp"), encoding="utf-8", newline="") as f:
        inp = f.read()
    with open(base.with_suffix(".gguf.out"), encoding="utf-8", newline="") as f:
        out = f.read()
    texts = inp.split(VOCAB_SEP)
    assert texts[-1] == "", "the .inp file ends with a separator"
    lines = out.split("\n")
    assert lines[-1] == ""
    texts, lines = texts[:-1], lines[:-1]
    assert len(texts) == len(lines), f"{len(texts)} inputs but {len(lines)} outputs"
    return base, [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


VOCAB_GGUF, VOCAB_CASES = _vocab_cases()


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp("tokenizer") / "minicpm-o-4_5-vocab.gguf"
    info = write_vocab_only_gguf(tokenizer_dir, path, n_vocab=N_VOCAB)
    return path, info


@pytest.fixture(scope="module")
def ours(vocab_file):
    return minicpm_cpp.Tokenizer(str(vocab_file[0]))


@pytest.fixture(scope="module")
def hf(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2TokenizerFast.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def qwen2_vocab():
    return minicpm_cpp.Tokenizer(str(VOCAB_GGUF))


# ---------------------------------------------------------------------------------------------
# parity with Hugging Face


def _case_id(i: int) -> str:
    return f"{i:03d}-{CORPUS[i]['category']}"


@pytest.mark.parametrize("i", range(len(CORPUS)), ids=_case_id)
def test_corpus_matches_hf(ours, hf, i):
    text = CORPUS[i]["text"]
    want = hf(text, add_special_tokens=False).input_ids
    got = ours.encode(text)
    assert got == want, f"encode {text[:80]!r}"

    # special tokens written in the text stay text (HF split_special_tokens=True)
    want_split = hf(text, add_special_tokens=False, split_special_tokens=True).input_ids
    assert ours.encode(text, parse_special=False) == want_split, f"encode without specials {text[:80]!r}"

    assert ours.decode(got) == hf.decode(want)
    assert ours.decode(got, skip_special=True) == hf.decode(want, skip_special_tokens=True)

    # round trip: the text comes back as the normalizer (NFC) leaves it
    normalized = hf.backend_tokenizer.normalizer.normalize_str(text)
    assert ours.decode(got) == normalized


def test_corpus_size_and_coverage():
    categories = {c["category"] for c in CORPUS}
    assert len(CORPUS) >= 200
    for needed in ("english", "chinese", "japanese", "korean", "arabic", "hindi", "russian", "code_python",
                   "code_cpp", "code_json", "emoji", "combining_nfc", "whitespace", "numbers", "contractions",
                   "special_tokens", "odd", "long"):
        assert needed in categories


def test_random_text_matches_hf(ours, hf):
    """Random mixtures of scripts, marks, whitespace, apostrophes and (partial) special tokens."""
    rnd = random.Random(1234)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789٠١٢४५", "!\"#$%&()*+,-./:;<=>?@[]^_`{|}~",
        "'''", " ", "  \t\r\n", "\u00a0\u3000\u2028\x0b\x0c\x85\u2009", "sStTmMdDrReEvVlL\u017f",
        "\u0300\u0301\u0308\u0316\u0323\u0334\u0345\u05b0\u093c\u094d\u3099", "\u1100\u1161\u11a8\uac00\uac01",
        "你好世界中文，。", "こんにちはカタカナ", "안녕하세요", "مرحبا", "नमस्ते", "Привет", "😀👍🏽👩‍💻❤️🦙",
        "\ufffd\u200b\u200d\ufe0f\ufeff",
    ]
    specials = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<image>", "<unk>", "<|im_start", "|>", "<|"]
    texts = []
    for _ in range(500):
        parts = []
        for _ in range(rnd.randrange(1, 25)):
            if rnd.random() < 0.08:
                parts.append(rnd.choice(specials))
            else:
                pool = rnd.choice(pools)
                parts.append("".join(rnd.choice(pool) for _ in range(rnd.randrange(1, 6))))
        texts.append("".join(parts))
    for text in texts:
        want = hf(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == want, repr(text)
        assert ours.decode(want) == hf.decode(want), repr(text)


def test_decode_random_ids_matches_hf(ours, hf):
    """Arbitrary id sequences: byte tokens that leave UTF-8 incomplete or invalid, added tokens."""
    rnd = random.Random(99)
    for _ in range(300):
        ids = [rnd.choice([rnd.randrange(256), rnd.randrange(N_VOCAB), rnd.randrange(151640, N_VOCAB)])
               for _ in range(rnd.randrange(0, 12))]
        assert ours.decode(ids) == hf.decode(ids), ids
        assert ours.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True), ids


def test_vocabulary_queries(ours, hf, vocab_file):
    assert ours.n_tokens == N_VOCAB
    assert ours.find_token("<|im_end|>") == 151645
    assert ours.find_token("<think>") == 151667
    assert ours.find_token("<unk>") == 128244
    assert ours.find_token(" the") == hf.convert_tokens_to_ids("Ġthe")
    assert ours.find_token("no such token, surely") == -1
    assert ours.token_bytes(151644) == b"<|im_start|>"
    assert ours.token_bytes(hf.convert_tokens_to_ids("Ġthe")) == b" the"
    assert ours.token_bytes(hf.convert_tokens_to_ids("Ċ")) == b"\n"
    assert ours.token_type(151645) == CONTROL
    assert ours.token_type(151667) == USER_DEFINED
    assert ours.token_type(1000) == NORMAL
    # a token that is a lone UTF-8 lead byte
    lead = hf.convert_tokens_to_ids("ä")  # byte 0xE4
    assert ours.token_bytes(lead) == b"\xe4"
    assert ours.decode([lead]) == "\ufffd"


def test_special_tokens_inside_text(ours):
    im_start, im_end = ours.find_token("<|im_start|>"), ours.find_token("<|im_end|>")
    ids = ours.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == im_start and ids[-1] == im_end
    assert im_start not in ours.encode("<|im_start|>user", parse_special=False)
    # non-special added tokens are matched with or without parse_special, as HF does
    think = ours.find_token("<think>")
    assert ours.encode("<think>", parse_special=False) == [think]
    assert ours.encode("<|im_start") == ours.encode("<|im_start", parse_special=False)
    assert ours.decode(ids, skip_special=True) == "user\nhi"


def test_digits_split_one_by_one(ours):
    ids = ours.encode("12345678901234567890")
    assert len(ids) == 20
    assert ours.decode(ids) == "12345678901234567890"


def test_encode_speed(ours):
    text = " ".join(c["text"] for c in CORPUS if c["category"] in ("english", "code_python", "code_cpp", "chinese"))
    text = (text + "\n") * 15
    t0 = time.perf_counter()
    ids = ours.encode(text)
    dt = time.perf_counter() - t0
    assert len(ids) > 10000
    assert dt < 1.0, f"{len(ids)} tokens took {dt * 1000:.0f} ms"


# ---------------------------------------------------------------------------------------------
# llama.cpp's test vectors


@pytest.mark.parametrize("i", range(len(VOCAB_CASES)))
def test_llama_cpp_qwen2_vectors(qwen2_vocab, i):
    text, want = VOCAB_CASES[i]
    assert qwen2_vocab.encode(text) == want, repr(text)
    assert qwen2_vocab.decode(want) == text


def test_llama_cpp_vector_count():
    assert len(VOCAB_CASES) >= 40


# ---------------------------------------------------------------------------------------------
# streaming


def test_stream_pieces_add_up(ours):
    cut_inside = 0
    for case in CORPUS:
        ids = ours.encode(case["text"])
        for skip in (False, True):
            pieces = ours.decode_stream(ids, skip)
            assert "".join(pieces) == ours.decode(ids, skip), repr(case["text"][:60])
            assert len(pieces) == len(ids) + 1  # one per push, then flush
        for id_ in ids:
            try:
                ours.token_bytes(id_).decode("utf-8")
            except UnicodeDecodeError:
                cut_inside += 1
    assert cut_inside > 50, "the corpus should have tokens that end inside a UTF-8 character"


def test_stream_holds_back_partial_characters(ours, hf):
    # U+13000 EGYPTIAN HIEROGLYPH A001 is 4 bytes and has no token: BPE cuts it into 3
    ids = ours.encode("\U00013000")
    assert ids == hf("\U00013000", add_special_tokens=False).input_ids and len(ids) == 3
    pieces = ours.decode_stream(ids)
    assert pieces == ["", "", "\U00013000", ""]

    # byte tokens one at a time, for every character length, each character cut everywhere
    for text in ("é", "中", "😀", "aé中😀b"):
        raw = text.encode("utf-8")
        ids = [_byte_token(hf, b) for b in raw]
        pieces = ours.decode_stream(ids)
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)


def test_stream_invalid_sequences(ours, hf):
    cases = [
        [0xE4, 0xB8],                   # truncated at the end -> one U+FFFD at flush
        [0xE4, 0xB8, 0x41],             # truncated before ASCII
        [0x80, 0x41],                   # lone continuation byte
        [0xF0, 0x9F, 0x98],             # 3 of 4 bytes
        [0xE0, 0x80, 0x80],             # overlong: three replacements
        [0xED, 0xA0, 0x80],             # surrogate: three replacements
        [0xF4, 0x90, 0x80, 0x80],       # above U+10FFFF
        [0xC3, 0xFF, 0xC3, 0xA9],       # invalid byte then a good character
    ]
    for raw in cases:
        ids = [_byte_token(hf, b) for b in raw]
        want = hf.decode(ids)
        assert ours.decode(ids) == want, raw
        assert "".join(ours.decode_stream(ids)) == want, raw
    # with special tokens in between, skipped or kept
    ids = [_byte_token(hf, 0xC3), ours.find_token("<|im_end|>"), _byte_token(hf, 0xA9)]
    assert "".join(ours.decode_stream(ids)) == hf.decode(ids) == "\ufffd<|im_end|>\ufffd"
    assert "".join(ours.decode_stream(ids, True)) == hf.decode(ids, skip_special_tokens=True) == "é"


def _byte_token(hf, b: int) -> int:
    """Id of the one-byte token of byte b (GPT-2 byte-level alphabet)."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    n = 0
    for x in range(256):
        if x == b:
            ch = chr(x) if x in printable else chr(256 + n)
            return hf.convert_tokens_to_ids(ch)
        if x not in printable:
            n += 1
    raise AssertionError(b)


# ---------------------------------------------------------------------------------------------
# the converter


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_ARRAY_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
                 12: "<f8"}


def _read_kv(path: Path):
    """{key: (value, type, element type)} of a GGUF file's metadata. A small reader of the format,
    much faster than gguf.GGUFReader on 150k-entry vocabularies."""
    import struct

    import numpy as np

    data = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        v = data[pos:pos + n].decode("utf-8")
        pos += n
        return v

    def value(t):
        nonlocal pos
        if t == 8:
            return string()
        if t == 9:
            et, n = take("<I"), take("<Q")
            if et == 8:
                return [string() for _ in range(n)], et
            arr = np.frombuffer(data, dtype=_ARRAY_DTYPES[et], count=n, offset=pos)
            pos += arr.nbytes
            return arr.tolist(), et
        return take(_SCALARS[t])

    assert data[:4] == b"GGUF"
    pos = 4
    take("<I")
    take("<Q")
    n_kv = take("<Q")
    out = {}
    for _ in range(n_kv):
        key = string()
        t = take("<I")
        v = value(t)
        out[key] = (v[0], t, v[1]) if t == 9 else (v, t, None)
    return out


class _Field:
    def __init__(self, entry):
        self.value, self.type, self.elem = entry

    def contents(self):
        return self.value


def _fields(path: Path):
    return {k: _Field(v) for k, v in _read_kv(path).items()}


def test_converter_metadata(vocab_file, tokenizer_dir):
    path, info = vocab_file
    f = _fields(path)
    assert f["general.architecture"].contents() == "qwen3"
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "qwen2"
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    assert f["tokenizer.ggml.token_type"].type == gguf.GGUFValueType.ARRAY
    assert f["tokenizer.ggml.token_type"].elem == gguf.GGUFValueType.INT32
    assert f["tokenizer.ggml.eos_token_id"].type == gguf.GGUFValueType.UINT32
    assert len(tokens) == len(types) == N_VOCAB
    assert tokens[151645] == "<|im_end|>" and types[151645] == CONTROL
    assert tokens[128244] == "<unk>" and types[128244] == CONTROL  # in vocab.json and special
    assert tokens[151667] == "<think>" and types[151667] == USER_DEFINED
    assert tokens[151659] == "<|fim_prefix|>" and types[151659] == USER_DEFINED  # not special in HF
    assert tokens[220] == "Ġ" and types[220] == NORMAL
    assert f["tokenizer.ggml.eos_token_id"].contents() == 151645
    assert f["tokenizer.ggml.padding_token_id"].contents() == 151643
    assert f["tokenizer.ggml.add_bos_token"].contents() is False
    merges = f["tokenizer.ggml.merges"].contents()
    assert merges[:2] == ["Ġ Ġ", "ĠĠ ĠĠ"] and len(merges) == 134935
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert f["tokenizer.chat_template"].contents() == config["chat_template"]
    assert info["n_tokens"] == N_VOCAB and info["eos_token_id"] == 151645
    assert 151645 in info["special_ids"] and 151667 not in info["special_ids"]


def test_converter_all_special_ids(vocab_file, tokenizer_dir, hf, tmp_path):
    """minicpm.all_special_ids is transformers' all_special_ids (not the CONTROL set, which has
    the Qwen vision tokens and <|turn_bos|> besides), also with an extra_special_tokens entry."""
    path, info = vocab_file
    got = list(_fields(path)["minicpm.all_special_ids"].contents())
    assert got == sorted(hf.all_special_ids) == info["all_special_ids"]
    assert set(got) < set(info["special_ids"])
    d = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["extra_special_tokens"] = {"box_token": "<|box_start|>"}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    transformers = pytest.importorskip("transformers")
    want = sorted(transformers.Qwen2TokenizerFast.from_pretrained(str(d)).all_special_ids)
    out = write_vocab_only_gguf(d, tmp_path / "v.gguf", n_vocab=N_VOCAB)
    assert out["all_special_ids"] == want and 151648 in want


def test_converter_pads_to_embedding_rows(tmp_path, tokenizer_dir, ours):
    path = tmp_path / "padded.gguf"
    info = write_vocab_only_gguf(tokenizer_dir, path, n_vocab=151936)
    assert info["n_tokens"] == 151936
    f = _fields(path)
    tokens, types = f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.token_type"].contents()
    assert tokens[151800] == "[PAD151800]" and types[151800] == UNUSED
    tok = minicpm_cpp.Tokenizer(str(path))
    assert tok.n_tokens == 151936
    text = "<|im_start|>user [PAD151800]<|im_end|>"
    assert tok.encode(text) == ours.encode(text)  # padding rows are never matched in text
    assert tok.decode([151800, 9707]) == "Hello"   # and give no text


def test_converter_tokenizer_json(tmp_path, tokenizer_dir, hf, vocab_file):
    """The same tokenizer read from tokenizer.json (merges as pairs) gives the same file."""
    d = tmp_path / "tokjson"
    d.mkdir()
    hf.backend_tokenizer.save(str(d / "tokenizer.json"))
    shutil.copy(tokenizer_dir / "tokenizer_config.json", d / "tokenizer_config.json")
    out = tmp_path / "from-json.gguf"
    write_vocab_only_gguf(d, out, n_vocab=N_VOCAB)
    a, b = _fields(vocab_file[0]), _fields(out)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template"):
        assert a[key].contents() == b[key].contents(), key


def test_converter_chat_template_sources(tmp_path, tokenizer_dir):
    d = tmp_path / "tmpl"
    d.mkdir()
    tiny_models.copy_tokenizer(d)
    config = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    (d / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    write_vocab_only_gguf(d, tmp_path / "a.gguf")
    assert _fields(tmp_path / "a.gguf")["tokenizer.chat_template"].contents() == "DEFAULT"
    (d / "chat_template.jinja").write_text("FROM FILE", encoding="utf-8")
    write_vocab_only_gguf(d, tmp_path / "b.gguf")
    assert _fields(tmp_path / "b.gguf")["tokenizer.chat_template"].contents() == "FROM FILE"


def test_converter_errors(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="embedding rows"):
        write_vocab_only_gguf(tokenizer_dir, tmp_path / "small.gguf", n_vocab=151000)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="vocab.json|merges.txt|tokenizer.json"):
        write_vocab_only_gguf(empty, tmp_path / "none.gguf")
    with pytest.raises(ValueError, match="does not exist"):
        write_vocab_only_gguf(tmp_path / "nowhere", tmp_path / "none.gguf")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(tokenizer_dir / "vocab.json", half / "vocab.json")
    with pytest.raises(ValueError, match="merges.txt"):
        write_vocab_only_gguf(half, tmp_path / "none.gguf")


# ---------------------------------------------------------------------------------------------
# malformed metadata in the GGUF


def _byte_alphabet() -> List[str]:
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def _tiny_tokenizer_kv():
    tokens = _byte_alphabet() + ["Ġt", "he", "Ġthe", "<|im_end|>"]
    types = [NORMAL] * (len(tokens) - 1) + [CONTROL]
    merges = ["Ġ t", "h e", "Ġt he"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }


def _write(path: Path, kv) -> Path:
    w = gguf.GGUFWriter(str(path), "qwen3")
    for key, value in kv.items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_array(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def test_tiny_tokenizer_loads(tmp_path):
    tok = minicpm_cpp.Tokenizer(str(_write(tmp_path / "tiny.gguf", _tiny_tokenizer_kv())))
    assert tok.n_tokens == 260
    assert tok.encode(" the<|im_end|>") == [258, 259]
    assert tok.decode([258, 259]) == " the<|im_end|>"


_MALFORMED = [
    ("no tokenizer keys", lambda kv: {}, minicpm_cpp.FormatError, "tokenizer.ggml.model"),
    ("model not a string", lambda kv: {**kv, "tokenizer.ggml.model": 2}, minicpm_cpp.FormatError,
     "tokenizer.ggml.model: expected a string"),
    ("other model", lambda kv: {**kv, "tokenizer.ggml.model": "llama"}, minicpm_cpp.UnsupportedError, "gpt2"),
    ("other pre-tokenizer", lambda kv: {**kv, "tokenizer.ggml.pre": "llama-bpe"}, minicpm_cpp.UnsupportedError,
     "llama-bpe"),
    ("no pre-tokenizer", lambda kv: {k: v for k, v in kv.items() if k != "tokenizer.ggml.pre"},
     minicpm_cpp.UnsupportedError, "tokenizer.ggml.pre"),
    ("no tokens", lambda kv: {k: v for k, v in kv.items() if k != "tokenizer.ggml.tokens"},
     minicpm_cpp.FormatError, "tokenizer.ggml.tokens"),
    ("tokens not strings", lambda kv: {**kv, "tokenizer.ggml.tokens": list(range(260))}, minicpm_cpp.FormatError,
     "tokenizer.ggml.tokens: expected an array of strings"),
    ("tokens not an array", lambda kv: {**kv, "tokenizer.ggml.tokens": "abc"}, minicpm_cpp.FormatError,
     "tokenizer.ggml.tokens: expected an array of strings"),
    ("types not ints", lambda kv: {**kv, "tokenizer.ggml.token_type": ["1"] * 260}, minicpm_cpp.FormatError,
     "tokenizer.ggml.token_type: expected an array of int32"),
    ("types too short", lambda kv: {**kv, "tokenizer.ggml.token_type": [1] * 259}, minicpm_cpp.FormatError,
     "expected 260 entries"),
    ("types too long", lambda kv: {**kv, "tokenizer.ggml.token_type": [1] * 261}, minicpm_cpp.FormatError,
     "expected 260 entries"),
    ("no merges", lambda kv: {k: v for k, v in kv.items() if k != "tokenizer.ggml.merges"},
     minicpm_cpp.FormatError, "tokenizer.ggml.merges"),
    ("merges not strings", lambda kv: {**kv, "tokenizer.ggml.merges": [1, 2]}, minicpm_cpp.FormatError,
     "tokenizer.ggml.merges: expected an array of strings"),
    ("merge of unknown token", lambda kv: {**kv, "tokenizer.ggml.merges": ["Ġ t", "x yz"]},
     minicpm_cpp.FormatError, "'yz' is not in the vocabulary"),
    ("merge result unknown", lambda kv: {**kv, "tokenizer.ggml.merges": ["Ġ t", "a b"]},
     minicpm_cpp.FormatError, "'ab' is not in the vocabulary"),
    ("merge without a space", lambda kv: {**kv, "tokenizer.ggml.merges": ["Ġt"]}, minicpm_cpp.FormatError,
     "expected \"left right\""),
]


@pytest.mark.parametrize("name, change, error, match", [pytest.param(*c, id=c[0]) for c in _MALFORMED])
def test_malformed_metadata(tmp_path, name, change, error, match):
    path = _write(tmp_path / "bad.gguf", change(_tiny_tokenizer_kv()))
    with pytest.raises(error, match=match) as e:
        minicpm_cpp.Tokenizer(str(path))
    assert isinstance(e.value, minicpm_cpp.Error)
    assert "bad.gguf" in str(e.value)  # the message names the file


def test_bad_ids(ours):
    for bad in (-1, N_VOCAB, 1 << 30):
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match="token id"):
            ours.token_bytes(bad)
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match="token id"):
            ours.decode([1, bad])
        with pytest.raises(minicpm_cpp.InvalidArgumentError, match="token id"):
            ours.decode_stream([bad])


def test_missing_file(tmp_path):
    with pytest.raises(minicpm_cpp.Error):
        minicpm_cpp.Tokenizer(str(tmp_path / "nope.gguf"))


def test_add_tokenizer_signature():
    import inspect

    params = list(inspect.signature(add_tokenizer).parameters)
    assert params == ["writer", "hf_dir", "n_vocab"]
