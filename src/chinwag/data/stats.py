"""Corpus statistics for `chinwag data stats`: counts, turns, token lengths, vocab coverage, drops."""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from chinwag.data.readers import is_prepared, read_records
from chinwag.data.schema import Report


def _summary(values) -> dict[str, float]:
    a = np.frombuffer(values, dtype=np.int64) if isinstance(values, array) else np.asarray(values)
    if a.size == 0:
        return {"n": 0, "mean": 0.0, "median": 0.0, "min": 0, "max": 0, "total": 0}
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "min": int(a.min()),
        "max": int(a.max()),
        "total": int(a.sum()),
    }


def histogram(lengths, min_edge: int = 16) -> list[tuple[int, int, int]]:
    """Power-of-two bins [lo, hi) -> count; power-of-two edges line up with likely `seq_len` choices."""
    a = np.asarray(lengths)
    if a.size == 0:
        return []
    edges = [0, min_edge]
    while edges[-1] <= a.max():
        edges.append(edges[-1] * 2)
    counts, _ = np.histogram(a, bins=edges)
    return [(edges[i], edges[i + 1], int(c)) for i, c in enumerate(counts)]


def _coverage_from_files(folder: Path, meta: dict) -> tuple[int, np.ndarray]:
    used = np.zeros(int(meta["vocab_size"]), dtype=bool)
    for split, info in meta["splits"].items():
        n = int(info["tokens"])
        if n == 0:
            continue
        toks = np.memmap(folder / f"{split}.tokens.bin", dtype=meta["dtype"], mode="r", shape=(n,))
        for i in range(0, n, 1 << 22):  # chunked so a huge split never loads whole
            used[np.unique(toks[i : i + (1 << 22)])] = True
    return int(used.sum()), used


def compute_stats(
    source, tokenizer=None, fmt: str = "auto", max_records: int | None = None
) -> dict[str, Any]:
    """Stats of a prepared folder (its cleaned JSONL, token files and report) or of any raw source."""
    from chinwag.data.prepare import encode_example, resolve_tokenizer

    prepared = is_prepared(source) and fmt in ("auto", "prepared")
    tok = resolve_tokenizer(tokenizer)
    meta = None
    if prepared and (Path(source) / "meta.json").is_file():
        meta = json.loads((Path(source) / "meta.json").read_text(encoding="utf-8"))
    mode = meta["mode"] if meta else "pretrain"

    read_report = Report()
    turns, chars, tok_lens = array("q"), array("q"), array("q")
    roles: dict[str, int] = {}
    used = np.zeros(tok.vocab_size, dtype=bool) if tok is not None and meta is None else None
    for n, conv in enumerate(read_records(source, fmt=fmt, on_error="skip", report=read_report)):
        if max_records is not None and n >= max_records:
            break
        turns.append(len(conv.messages))
        chars.append(sum(len(m["content"]) for m in conv.messages))
        for m in conv.messages:
            roles[m["role"]] = roles.get(m["role"], 0) + 1
        if used is not None:
            ids, _ = encode_example(conv, tok, "sft" if mode == "sft" and not conv.is_text else "pretrain")
            tok_lens.append(len(ids))
            used[ids] = True

    out: dict[str, Any] = {
        "source": str(source),
        "prepared": prepared,
        "conversations": len(turns),
        "messages": int(sum(turns)),
        "roles": dict(sorted(roles.items())),
        "turns": _summary(turns),
        "chars": _summary(chars),
        "malformed_skipped": read_report.n_skipped,
    }
    if meta is not None:
        folder = Path(source)
        lens = np.concatenate(
            [
                np.diff(np.load(folder / f"{s}.offsets.npy"))
                for s in meta["splits"]
                if meta["splits"][s]["examples"]
            ]
            or [np.zeros(0, dtype=np.int64)]
        )
        n_used, _ = _coverage_from_files(folder, meta)
        out["tokens"] = _summary(lens) | {
            "histogram": histogram(lens),
            "mode": meta["mode"],
            "dtype": meta["dtype"],
        }
        out["vocab"] = {
            "size": int(meta["vocab_size"]),
            "used": n_used,
            "coverage": n_used / meta["vocab_size"],
        }
        out["splits"] = meta["splits"]
    elif used is not None:
        out["tokens"] = _summary(tok_lens) | {"histogram": histogram(np.frombuffer(tok_lens, dtype=np.int64))}
        out["vocab"] = {"size": int(tok.vocab_size), "used": int(used.sum()), "coverage": float(used.mean())}
    if prepared:
        out["report"] = json.loads((Path(source) / "report.json").read_text(encoding="utf-8"))
    return out
