"""Tokenizer metadata: a Hugging Face byte-level BPE tokenizer (Qwen2 family) -> GGUF.

Reads ``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` with ``added_tokens.json``,
``tokenizer_config.json`` (whose ``added_tokens_decoder`` says which added tokens are
special) and ``special_tokens_map.json``. Writes llama.cpp's layout, so the file also loads
in llama.cpp:

* ``tokenizer.ggml.model = "gpt2"``, ``tokenizer.ggml.pre = "qwen2"``;
* ``tokenizer.ggml.tokens``: one entry per embedding row; a row with no token is
  ``[PAD<id>]`` with type UNUSED;
* ``tokenizer.ggml.token_type``: NORMAL for the BPE vocabulary, CONTROL for special added
  tokens, USER_DEFINED for the other added tokens (``<think>``, ``<tool_call>``, ...);
* ``tokenizer.ggml.merges``, the bos/eos/padding/unknown ids, ``add_bos_token`` and the chat
  template.

Normal tokens are stored in the byte-level alphabet as in the HF vocabulary ("Ġthe"); added
tokens as their text.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, List, Optional, Tuple

from .names import KEYS

__all__ = ["add_tokenizer", "write_vocab_only_gguf", "read_hf_tokenizer", "QWEN2_PRE_REGEX"]

# llama.cpp's token types (tokenizer.ggml.token_type).
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5

# The split regex of HF's Qwen2 tokenizer; the C++ runtime implements exactly this one.
QWEN2_PRE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _load_json(path: pathlib.Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _token_content(value: Any) -> Optional[str]:
    """A special-token entry of tokenizer_config / special_tokens_map: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _find_split_regex(pre: Any) -> List[str]:
    """The Split regexes of a tokenizer.json pre_tokenizer (possibly nested in a Sequence)."""
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        out: List[str] = []
        for p in pre.get("pretokenizers", []):
            out += _find_split_regex(p)
        return out
    if pre.get("type") == "Split":
        pattern = pre.get("pattern", {})
        if isinstance(pattern, dict) and "Regex" in pattern:
            return [pattern["Regex"]]
    return []


def _read_merges_txt(path: pathlib.Path) -> List[str]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.rstrip("\r\n")
            # As HF's reader: an optional "#version" header, blank lines ignored.
            if (i == 0 and line.startswith("#version")) or not line.strip():
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}:{i + 1}: expected 'left right', got {line!r}")
            merges.append(line)
    return merges


def read_hf_tokenizer(hf_dir: pathlib.Path) -> Dict[str, Any]:
    """Read the vocabulary of a HF tokenizer directory.

    Returns {"vocab": {token: id}, "merges": ["a b", ...], "added": {id: (content, special)},
    "config": tokenizer_config dict, "special_map": special_tokens_map dict}.
    """
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise ValueError(f"tokenizer directory {hf_dir} does not exist")
    config_path = hf_dir / "tokenizer_config.json"
    config = _load_json(config_path) if config_path.is_file() else {}
    special_map_path = hf_dir / "special_tokens_map.json"
    special_map = _load_json(special_map_path) if special_map_path.is_file() else {}

    vocab: Dict[str, int]
    merges: List[str]
    added: Dict[int, Tuple[str, bool]] = {}

    tok_json = hf_dir / "tokenizer.json"
    if tok_json.is_file():
        data = _load_json(tok_json)
        model = data.get("model", {})
        if model.get("type", "BPE") != "BPE":
            raise ValueError(f"{tok_json}: expected a BPE model, got {model.get('type')!r}")
        regexes = _find_split_regex(data.get("pre_tokenizer"))
        if regexes and regexes != [QWEN2_PRE_REGEX]:
            raise ValueError(f"{tok_json}: the pre-tokenizer regex is not Qwen2's; got {regexes!r}")
        vocab = dict(model.get("vocab", {}))
        merges = []
        for m in model.get("merges", []):
            if isinstance(m, str):
                merges.append(m)
            elif isinstance(m, (list, tuple)) and len(m) == 2:
                merges.append(f"{m[0]} {m[1]}")
            else:
                raise ValueError(f"{tok_json}: malformed merge {m!r}")
        for t in data.get("added_tokens", []):
            added[int(t["id"])] = (t["content"], bool(t.get("special", False)))
    else:
        vocab_path, merges_path = hf_dir / "vocab.json", hf_dir / "merges.txt"
        missing = [p.name for p in (vocab_path, merges_path) if not p.is_file()]
        if missing:
            raise ValueError(
                f"{hf_dir}: no tokenizer.json and no {' / '.join(missing)}; expected tokenizer.json "
                "or vocab.json + merges.txt"
            )
        vocab = _load_json(vocab_path)
        merges = _read_merges_txt(merges_path)
        added_path = hf_dir / "added_tokens.json"
        if added_path.is_file():
            for content, tid in _load_json(added_path).items():
                added[int(tid)] = (content, False)

    # tokenizer_config's added_tokens_decoder is authoritative for the special flag.
    for tid, entry in (config.get("added_tokens_decoder") or {}).items():
        added[int(tid)] = (entry["content"], bool(entry.get("special", False)))
    # Tokens named in special_tokens_map / tokenizer_config (eos, pad, additional...) are special.
    named = set()
    for src in (special_map, config):
        for key, value in src.items():
            if key == "additional_special_tokens" and isinstance(value, list):
                named.update(c for c in map(_token_content, value) if c)
            elif key.endswith("_token") and _token_content(value):
                named.add(_token_content(value))
    for tid, (content, special) in list(added.items()):
        if content in named and not special:
            added[tid] = (content, True)

    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{hf_dir}: the vocabulary is empty")
    return {"vocab": vocab, "merges": merges, "added": added, "config": config, "special_map": special_map}


def _chat_template(hf_dir: pathlib.Path, config: Dict[str, Any]) -> Optional[str]:
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tmpl = config.get("chat_template")
    if isinstance(tmpl, str):
        return tmpl
    if isinstance(tmpl, list):
        for entry in tmpl:
            if isinstance(entry, dict) and entry.get("name") == "default":
                return entry.get("template")
    return None


def add_tokenizer(writer: "gguf.GGUFWriter", hf_dir: pathlib.Path, n_vocab: int) -> dict:  # noqa: F821
    """Write the tokenizer of ``hf_dir`` into ``writer`` with ``n_vocab`` token rows.

    Returns {"n_tokens", "n_merges", "eos_token_id", "pad_token_id", "bos_token_id",
    "unk_token_id", "special_ids", "user_defined_ids"} for logging. Raises ValueError for
    missing files or a vocabulary larger than ``n_vocab``.
    """
    hf_dir = pathlib.Path(hf_dir)
    tok = read_hf_tokenizer(hf_dir)
    vocab, merges, added, config = tok["vocab"], tok["merges"], tok["added"], tok["config"]

    max_id = max(list(vocab.values()) + list(added.keys()))
    if n_vocab <= max_id:
        raise ValueError(
            f"{hf_dir}: the tokenizer has ids up to {max_id} ({max_id + 1} tokens) but the model "
            f"has only {n_vocab} embedding rows"
        )

    for rank, m in enumerate(merges):
        left, _, right = m.partition(" ")
        for part in (left, right, left + right):
            if part not in vocab:
                raise ValueError(f"{hf_dir}: merge {rank} {m!r} uses {part!r}, which is not in the vocabulary")

    tokens: List[Optional[str]] = [None] * n_vocab
    types = [TOKEN_UNUSED] * n_vocab
    for text, tid in vocab.items():
        if tokens[tid] is not None and tokens[tid] != text:
            raise ValueError(f"{hf_dir}: id {tid} is given to both {tokens[tid]!r} and {text!r}")
        tokens[tid] = text
        types[tid] = TOKEN_NORMAL
    for tid, (content, special) in sorted(added.items()):
        tokens[tid] = content
        types[tid] = TOKEN_CONTROL if special else TOKEN_USER_DEFINED
    for tid in range(n_vocab):
        if tokens[tid] is None:
            tokens[tid] = f"[PAD{tid}]"

    # Text -> id, added tokens first (as the runtime's lookup).
    ids_by_text: Dict[str, int] = {}
    for tid, (content, _) in sorted(added.items()):
        ids_by_text.setdefault(content, tid)
    for tid, text in enumerate(tokens):
        if types[tid] == TOKEN_NORMAL:
            ids_by_text.setdefault(text, tid)

    def special_id(name: str) -> Optional[int]:
        content = _token_content(config.get(name))
        if content is None:
            content = _token_content(tok["special_map"].get(name))
        return ids_by_text.get(content) if content is not None else None

    eos_id = special_id("eos_token")
    if eos_id is None:
        # Some checkpoints name eos only in generation_config.json (an id or a list of ids).
        gen_path = hf_dir / "generation_config.json"
        gen_eos = _load_json(gen_path).get("eos_token_id") if gen_path.is_file() else None
        if isinstance(gen_eos, list) and gen_eos:
            gen_eos = gen_eos[0]
        if isinstance(gen_eos, int) and 0 <= gen_eos < n_vocab:
            eos_id = gen_eos
        else:
            raise ValueError(
                f"{hf_dir}: no eos_token in tokenizer_config.json or special_tokens_map.json that is in "
                "the vocabulary, and no eos_token_id in generation_config.json"
            )
    pad_id = special_id("pad_token")
    bos_id = special_id("bos_token")
    unk_id = special_id("unk_token")
    all_special = _all_special_ids(config, tok["special_map"], ids_by_text, special_id)

    writer.add_string(KEYS["TOKENIZER_MODEL"], "gpt2")
    writer.add_string(KEYS["TOKENIZER_PRE"], "qwen2")
    writer.add_array(KEYS["TOKENIZER_TOKENS"], tokens)
    writer.add_array(KEYS["TOKENIZER_TOKEN_TYPE"], types)
    writer.add_array(KEYS["TOKENIZER_MERGES"], merges)
    if bos_id is not None:
        writer.add_uint32(KEYS["TOKENIZER_BOS_ID"], bos_id)
    if eos_id is not None:
        writer.add_uint32(KEYS["TOKENIZER_EOS_ID"], eos_id)
    if pad_id is not None:
        writer.add_uint32(KEYS["TOKENIZER_PAD_ID"], pad_id)
    if unk_id is not None:
        writer.add_uint32(KEYS["TOKENIZER_UNK_ID"], unk_id)
    writer.add_bool(KEYS["TOKENIZER_ADD_BOS"], bool(config.get("add_bos_token", False)))
    if all_special:
        writer.add_array(KEYS["MINICPM_ALL_SPECIAL_IDS"], all_special)
    template = _chat_template(hf_dir, config)
    if template:
        writer.add_string(KEYS["TOKENIZER_CHAT_TEMPLATE"], template)

    return {
        "n_tokens": n_vocab,
        "n_merges": len(merges),
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "bos_token_id": bos_id,
        "unk_token_id": unk_id,
        "special_ids": sorted(i for i, t in enumerate(types) if t == TOKEN_CONTROL),
        "all_special_ids": all_special,
        "user_defined_ids": sorted(i for i, t in enumerate(types) if t == TOKEN_USER_DEFINED),
    }


# The special-token attributes of transformers' tokenizers (SPECIAL_TOKENS_ATTRIBUTES).
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _all_special_ids(config: Dict[str, Any], special_map: Dict[str, Any], ids_by_text: Dict[str, int],
                     special_id) -> List[int]:
    """transformers' ``tokenizer.all_special_ids``: the named special tokens (tokenizer_config.json's
    value, else special_tokens_map.json's) and ``additional_special_tokens`` (tokenizer_config's
    list when it has one, else special_tokens_map's; tokenizer_config's init arguments win when
    the tokenizer loads), plus the values of a non-empty ``extra_special_tokens``. Contents not in
    the vocabulary are left out."""
    ids = {special_id(name) for name in _NAMED_SPECIAL}
    extra = config["additional_special_tokens"] if "additional_special_tokens" in config else special_map.get(
        "additional_special_tokens")
    contents = [_token_content(v) for v in extra] if isinstance(extra, list) else []
    more = config.get("extra_special_tokens")
    if isinstance(more, dict):
        more = list(more.values())
    if isinstance(more, list):
        contents += [_token_content(v) for v in more]
    ids.update(ids_by_text.get(c) for c in contents if c)
    return sorted(i for i in ids if i is not None)


def write_vocab_only_gguf(hf_dir, out_path, n_vocab: Optional[int] = None, arch: str = "qwen3") -> dict:
    """Write a GGUF with general.architecture and the tokenizer of ``hf_dir``, no tensors.

    ``n_vocab`` defaults to the highest token id + 1. Returns add_tokenizer's summary.
    """
    import gguf

    hf_dir = pathlib.Path(hf_dir)
    if n_vocab is None:
        tok = read_hf_tokenizer(hf_dir)
        n_vocab = max(list(tok["vocab"].values()) + list(tok["added"].keys())) + 1
    # GGUFWriter writes general.architecture itself.
    writer = gguf.GGUFWriter(str(out_path), arch)
    try:
        info = add_tokenizer(writer, hf_dir, n_vocab)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
    finally:
        writer.close()
    return info
