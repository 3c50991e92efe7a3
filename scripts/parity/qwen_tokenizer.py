"""A tiny tokenizer shaped like Qwen2.5-VL's, for faithful encoder parity checks.

The official v1.0/v1.1 conditioner and the v1.1 diffusers pipeline hard-code facts of the real
Qwen2.5-VL tokenizer: <|vision_end|> is id 151653, the curly quotes “ and ” are ids 2073 and 854,
and the system turn plus the "Enhanced prompt" instruction prefix is cut as 217 tokens. stepedit
derives all three from the tokenizer it is given. So the harness builds a byte-level BPE that
keeps those facts:
- the 256 byte symbols at ids 0..255 in GPT-2's byte-to-unicode order (id 0 is "!", as in Qwen;
  the reference's attention mask is `input_ids > 0`);
- “ at 2073 and ” at 854 (each a chain of two byte merges);
- Qwen2.5-VL's 22 added tokens at ids 151643..151664 (14 special, 8 not, as in the release);
- unused placeholder entries filling every other id below 151643 (never produced);
- merges chosen (`fit_merges`) so that the chat template rendered up to the end of the instruction
  prefix tokenizes to exactly 218 tokens, as with the real tokenizer (the reference cuts 217: the
  prefix's last token, ":", is kept).
Qwen's own pre-tokenizer (its split regex, then byte-level) and NFC normalizer are used unchanged.
The merges other than the quotes are not Qwen's: ids of ordinary words differ from the release.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# Qwen2.5-VL-7B-Instruct's added tokens from id 151643 on: (content, is_special).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
FIRST_ADDED_ID = 151643
OPEN_QUOTE_ID = 2073  # “
CLOSE_QUOTE_ID = 854  # ”
VISION_END_ID = 151653
TARGET_HEAD_TOKENS = 218  # template up to the end of the prefix; the reference cuts 217
EMBEDDING_ROWS = 152064  # Qwen2.5-VL-7B's vocab_size (embedding rows, padded past the tokens)

# Qwen2's pre-tokenizer split (tokenizer.json of the release).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table, indexed by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def byte_vocab_order() -> list[str]:
    """The 256 byte symbols in Qwen's id order: printable bytes by value, then the rest."""
    table = byte_symbols()
    printable = [s for b, s in enumerate(table) if s == chr(b) and b >= 33]
    rest = [s for b, s in enumerate(table) if not (s == chr(b) and b >= 33)]
    return printable + rest


def to_symbols(text: str) -> str:
    table = byte_symbols()
    return "".join(table[b] for b in text.encode("utf-8"))


def quote_merges() -> list[tuple[str, str]]:
    """“ and ” are three bytes each (E2 80 9C / 9D): merge the shared pair, then the last byte."""
    open_q, close_q = to_symbols("“"), to_symbols("”")
    return [(open_q[:1], open_q[1:2]), (open_q[:2], open_q[2:]), (close_q[:2], close_q[2:])]


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def build_vocab(merges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Bytes at 0..255, merge results from 256 on (the quotes at their Qwen ids), placeholders."""
    vocab = {symbol: i for i, symbol in enumerate(byte_vocab_order())}
    fixed = {to_symbols("“"): OPEN_QUOTE_ID, to_symbols("”"): CLOSE_QUOTE_ID}
    vocab.update(fixed)
    taken = set(vocab.values())
    next_id = 256
    for left, right in merges:
        token = left + right
        if token in vocab:
            continue
        while next_id in taken:
            next_id += 1
        vocab[token] = next_id
        taken.add(next_id)
    for i in range(FIRST_ADDED_ID):
        if i not in taken:
            vocab[f"<|parity_unused_{i}|>"] = i
    return vocab


def build_tokenizer(merges: list[tuple[str, str]]) -> Tokenizer:
    tokenizer = Tokenizer(
        models.BPE(vocab=build_vocab(merges), merges=merges, fuse_unk=False, byte_fallback=False)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(
        [
            AddedToken(content, special=special, normalized=False)
            for content, special in ADDED_TOKENS
        ]
    )
    return tokenizer


def _words(text: str) -> list[str]:
    """Pre-tokens (byte symbols) of `text`, special tokens removed."""
    pieces: list[str] = []
    for segment in _split_added(text):
        if segment and segment not in dict(ADDED_TOKENS):
            pieces.extend(word for word, _ in pre_tokenizer().pre_tokenize_str(segment))
    return pieces


def _split_added(text: str) -> list[str]:
    segments = [text]
    for content, _ in ADDED_TOKENS:
        segments = [part for seg in segments for part in _keep_split(seg, content)]
    return segments


def _keep_split(text: str, separator: str) -> list[str]:
    parts = text.split(separator)
    out: list[str] = []
    for i, part in enumerate(parts):
        if i:
            out.append(separator)
        out.append(part)
    return out


def _chain(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that make `word` one token."""
    return [(word[:i], word[i]) for i in range(1, len(word))]


def fit_merges(head: str, target: int = TARGET_HEAD_TOKENS) -> list[tuple[str, str]]:
    """Merges such that `head` tokenizes to exactly `target` tokens.

    Every word of `head` first gets the merges that make it a single token; BPE applies merges by
    rank across a word, so another word's merge can still split it. Then, while too many tokens
    are left, adjacent pieces of a split word are merged (new merges go last, so they never break
    an earlier word); while too few, the last merge of a single-use word is dropped. The count is
    checked by tokenizing after each change.
    """
    merges = quote_merges()
    for word in _words(head):
        merges.extend(m for m in _chain(word) if m not in merges)

    def count(current: list[tuple[str, str]]) -> int:
        return len(build_tokenizer(current).encode(head).ids)

    total = count(merges)
    while total > target:
        merges.append(_first_split_pair(build_tokenizer(merges), head))
        total = count(merges)
    removable = _single_use_final_merges(head, merges)
    while total < target:
        if not removable:
            raise RuntimeError(f"cannot reach {target} tokens (have {total})")
        candidate = [m for m in merges if m != removable.pop()]
        if count(candidate) == total + 1:
            merges, total = candidate, total + 1
    return merges


def _first_split_pair(tokenizer: Tokenizer, head: str) -> tuple[str, str]:
    """Two adjacent pieces of the first word that did not become one token."""
    for word in _words(head):
        pieces = tokenizer.model.tokenize(word)
        if len(pieces) > 1:
            return pieces[0].value, pieces[1].value
    raise RuntimeError("no split word left")


def _single_use_final_merges(head: str, merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Final chain merges of words that occur once in `head` and share no prefix with another."""
    words = _words(head)
    counts = {w: words.count(w) for w in words}
    finals = []
    for word, n in counts.items():
        final = _chain(word)[-1:] if len(word) > 1 else []
        if n == 1 and final and final[0] in merges:
            others = [w for w in counts if w != word and w.startswith(word)]
            if not others:
                finals.append(final[0])
    return finals


def save_tokenizer_files(
    tokenizer: Tokenizer, merges: list[tuple[str, str]], chat_template: str, directory: Path
) -> None:
    """tokenizer.json, vocab.json, merges.txt and a tokenizer_config.json in the release's form
    (read by transformers 4.x and 5.x alike)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    added = {
        str(FIRST_ADDED_ID + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(ADDED_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [c for c, special in ADDED_TOKENS[1:14] if special],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "chat_template.json").write_text(
        json.dumps({"chat_template": chat_template}, indent=2) + "\n"
    )
