"""`prepare`: read -> clean -> dedup -> split -> write JSONL (+ memmapped token files with a tokenizer).

One streaming pass: each record is cleaned, checked against the dedup index, assigned a split, written
as a JSONL line and (with a tokenizer) tokenized and appended to the split's flat token/mask files. No
stage holds the corpus in memory, so a corpus larger than RAM works. Everything is written into a
hidden temp folder inside `out_dir` and renamed into place at the end: a crash leaves the old output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from array import array
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from chinwag.data.clean import CleanConfig, clean_conversation
from chinwag.data.dedup import Deduper
from chinwag.data.readers import NAMED_SOURCES, list_files, read_records
from chinwag.data.schema import Conversation, DataError, Report

SPLITS = ("train", "val")
TOKEN_FILES = ("tokens.bin", "mask.bin", "offsets.npy")
FLUSH_TOKENS = 1 << 20  # append to disk every ~1M tokens


def split_of(conv_id: str, seed: int, val_fraction: float) -> str:
    """Deterministic split from the id alone: the same conversation lands in the same split whatever the
    file order, and growing the corpus never moves an old conversation across the split."""
    h = hashlib.sha256(f"{seed}\x00{conv_id}".encode()).digest()
    return "val" if int.from_bytes(h[:8], "big") < val_fraction * 2**64 else "train"


def resolve_tokenizer(tokenizer):
    """A Tokenizer object passes through; a string is a path or a pretrained name (`cl100k_base`)."""
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from chinwag.tokenizer.core import Tokenizer

    return Tokenizer.from_spec(str(tokenizer))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def encode_example(conv: Conversation, tok, mode: str) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one record. SFT: the chat template. Pretrain: plain text + <|eos|>, all loss."""
    if mode == "sft":
        from chinwag.tokenizer.chat import render

        r = render(conv.messages, tok)
        return list(r.ids), list(r.loss_mask)
    ids = tok.encode(conv.text()) + [tok.eos_id]
    return ids, [1] * len(ids)


class _SplitWriter:
    """Appends one split's records to `{split}.jsonl` and, with a dtype, to its flat token files."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype | None):
        self.split, self.dtype = split, dtype
        self.examples = self.messages = self.tokens = self.supervised = 0
        self.jsonl = open(folder / f"{split}.jsonl", "w", encoding="utf-8")
        if dtype is not None:
            self.tok_f = open(folder / f"{split}.tokens.bin", "wb")
            self.mask_f = open(folder / f"{split}.mask.bin", "wb")
            self.offsets = array("q", [0])  # 8 bytes per example, not a Python int object each
            self.buf_ids: list[np.ndarray] = []
            self.buf_mask: list[np.ndarray] = []
            self.n_buf = 0
        self.folder = folder

    def add(self, conv: Conversation, ids: list[int] | None = None, mask: list[int] | None = None) -> None:
        self.jsonl.write(json.dumps(conv.to_json(), ensure_ascii=False) + "\n")
        self.examples += 1
        self.messages += len(conv.messages)
        if ids is None:
            return
        self.buf_ids.append(np.asarray(ids, dtype=self.dtype))
        m = np.asarray(mask, dtype=np.uint8)
        self.buf_mask.append(m)
        self.tokens += len(ids)
        self.supervised += int(m.sum())
        self.offsets.append(self.tokens)
        self.n_buf += len(ids)
        if self.n_buf >= FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        if self.dtype is None or not self.buf_ids:
            return
        self.tok_f.write(np.concatenate(self.buf_ids).tobytes())
        self.mask_f.write(np.concatenate(self.buf_mask).tobytes())
        self.buf_ids, self.buf_mask, self.n_buf = [], [], 0

    def close(self) -> None:
        self.jsonl.close()
        if self.dtype is not None:
            self.flush()
            self.tok_f.close()
            self.mask_f.close()
            np.save(self.folder / f"{self.split}.offsets.npy", np.frombuffer(self.offsets, dtype=np.int64))

    def summary(self) -> dict[str, int]:
        out = {"conversations": self.examples, "messages": self.messages}
        if self.dtype is not None:
            out |= {"tokens": self.tokens, "supervised_tokens": self.supervised}
        return out


def prepare(
    source,
    out_dir,
    tokenizer=None,
    mode: str = "sft",
    val_fraction: float = 0.01,
    seed: int = 0,
    fmt: str = "auto",
    on_error: str = "fail",
    val_source=None,
    clean: CleanConfig | None = None,
    dedup: bool = True,
    near_dup: bool = True,
    near_dup_threshold: float = 0.85,
    progress: bool = True,
) -> dict[str, Any]:
    """Read, clean, dedup and split `source` into `out_dir`; tokenize too when given a tokenizer.

    Returns the report (also written to `report.json`). See docs/data.md for the on-disk layout.
    """
    if mode not in ("sft", "pretrain"):
        raise DataError(f"mode must be 'sft' or 'pretrain', got {mode!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    t0 = time.time()
    for src in (source, val_source):  # fail fast on a missing path, before any work
        if src is not None and str(src) not in NAMED_SOURCES:
            list_files(src, fmt)
    tok = resolve_tokenizer(tokenizer)
    cfg = clean or CleanConfig()
    if mode == "sft":
        cfg = replace(cfg, require_assistant=True)
    dtype = token_dtype(tok.vocab_size) if tok is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir))
    try:
        read_report = Report()
        filtered: dict[str, int] = {}
        deduper = Deduper(near=near_dup, threshold=near_dup_threshold, seed=seed) if dedup else None
        writers = {s: _SplitWriter(tmp, s, dtype) for s in SPLITS}
        streams = [(source, None)] + ([(val_source, "val")] if val_source is not None else [])
        for src, forced_split in streams:
            _run_stream(
                src,
                forced_split,
                fmt,
                on_error,
                read_report,
                cfg,
                filtered,
                deduper,
                writers,
                tok,
                mode,
                seed,
                0.0 if val_source is not None else val_fraction,
                progress,
            )
        for w in writers.values():
            w.close()

        produced = [f"{s}.jsonl" for s in SPLITS]
        splits = {s: w.summary() for s, w in writers.items()}
        if tok is not None:
            tok.save(tmp / "tokenizer.json")
            os.chmod(tmp / "tokenizer.json", 0o644)  # mkstemp makes 0600; the folder is meant to be shared
            meta = {
                "mode": mode,
                "dtype": dtype.name,
                "vocab_size": int(tok.vocab_size),
                "tokenizer": "tokenizer.json",
                "splits": {
                    s: {"examples": v["conversations"], "tokens": v["tokens"]} for s, v in splits.items()
                },
                "source": str(source),
                "val_source": None if val_source is None else str(val_source),
                "seed": seed,
                "val_fraction": val_fraction,
                # not in the contract's minimum, but the loader needs them without loading the tokenizer:
                "pad_id": int(tok.pad_id),
                "eos_id": int(tok.eos_id),
                "bos_id": int(tok.bos_id),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            produced += [f"{s}.{f}" for s in SPLITS for f in TOKEN_FILES] + ["tokenizer.json", "meta.json"]

        dedup_counts = deduper.counts if deduper else {"exact_duplicates": 0, "near_duplicates": 0}
        report = {
            "source": str(source),
            "val_source": None if val_source is None else str(val_source),
            "format": fmt,
            "mode": mode,
            "seed": seed,
            "val_fraction": val_fraction,
            "on_error": on_error,
            **read_report.to_dict(),
            "filtered": dict(sorted(filtered.items())),
            "filtered_total": sum(filtered.values()),
            "deduplicated": dict(dedup_counts),
            "deduplicated_total": sum(dedup_counts.values()),
            "kept": sum(w.examples for w in writers.values()),
            "splits": splits,
            "tokenizer": None if tok is None else {"vocab_size": int(tok.vocab_size), "dtype": dtype.name},
            "clean_config": cfg.to_dict(),
            "dedup_config": {"exact": dedup, "near": dedup and near_dup, "threshold": near_dup_threshold},
            "seconds": round(time.time() - t0, 2),
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")

        # Move into place; report.json last, since it is what marks the folder as prepared. Remove
        # token files of an earlier run that this run did not write (e.g. re-run without a tokenizer).
        stale = [f"{s}.{f}" for s in SPLITS for f in TOKEN_FILES] + ["tokenizer.json", "meta.json"]
        for name in stale:
            if name not in produced:
                (out_dir / name).unlink(missing_ok=True)
        for name in produced + ["report.json"]:
            os.replace(tmp / name, out_dir / name)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_stream(
    src,
    forced_split,
    fmt,
    on_error,
    read_report,
    cfg,
    filtered,
    deduper,
    writers,
    tok,
    mode,
    seed,
    val_fraction,
    progress,
) -> None:
    from tqdm.auto import tqdm

    records = read_records(src, fmt=fmt, on_error=on_error, report=read_report)
    for conv in tqdm(records, desc=f"prepare {src}", unit=" conv", disable=not progress, mininterval=0.5):
        cleaned, reason = clean_conversation(conv, cfg)
        if cleaned is None:
            filtered[reason] = filtered.get(reason, 0) + 1
            continue
        if deduper is not None and deduper.check(cleaned):
            continue
        split = forced_split or split_of(cleaned.id, seed, val_fraction)
        if tok is None:
            writers[split].add(cleaned)
        else:
            writers[split].add(cleaned, *encode_example(cleaned, tok, mode))
