"""Small corpus writers shared by the data tests."""

from __future__ import annotations

import json
import random


def write_jsonl(path, records) -> str:
    """Write records (dicts, or raw strings written as-is for malformed lines) one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def chat(i: int, turns: int = 2, words: int = 8) -> dict:
    """A distinct, clean conversation number i (distinct enough to survive near-dedup)."""
    rng = random.Random(i)
    vocab = (
        "apple river stone cloud music garden window paper yellow train forest candle ocean pencil".split()
    )
    msgs = []
    for t in range(turns):
        text = " ".join(rng.choice(vocab) for _ in range(words)) + f" number {i} turn {t}"
        msgs.append({"role": "user" if t % 2 == 0 else "assistant", "content": text})
    return {"id": f"c{i}", "messages": msgs}
