"""`chinwag guard eval`: recall, category accuracy, false positives and latency on a labelled set."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from chinwag.safety.guard import Guard, Verdict


def judge_record(guard: Guard, rec: dict) -> tuple[Verdict, float]:
    """Verdict for one record and the seconds spent on its final message (history replay not timed)."""
    sess = guard.session()
    if "turns" in rec:
        turns = rec["turns"]
        last = max((i for i, t in enumerate(turns) if t.get("role", "user") == "user"), default=None)
        if last is None:
            raise ValueError("no user turn")
        for t in turns[:last]:
            if t.get("role", "user") == "user":
                sess.check_input(t["content"])
            else:
                sess.note_output(t["content"])
        text = turns[last]["content"]
    else:
        text = rec["text"]
    t0 = time.perf_counter()
    v = sess.check_input(text)
    return v, time.perf_counter() - t0


def _rate(xs: list[bool]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def evaluate(
    guard: Guard, records: list[dict], chitchat: list[str] | None = None, progress: bool = False
) -> dict:
    hits = defaultdict(list)  # key -> list[bool] (flagged)
    correct_cat: list[bool] = []
    blocked: list[bool] = []
    lat: list[float] = []
    misses: list[dict] = []
    false_pos: list[dict] = []
    items = records
    if progress:
        from tqdm import tqdm

        items = tqdm(records, desc="eval", unit="rec")
    for rec in items:
        v, dt = judge_record(guard, rec)
        lat.append(dt)
        gold = rec["label"]
        if gold != "allow":
            hits["harmful"].append(v.flagged)
            hits[f"cat:{gold}"].append(v.flagged)
            hits[f"var:{rec.get('variant', 'plain')}"].append(v.flagged)
            if "turns" in rec:
                hits["multi_turn"].append(v.flagged)
            correct_cat.append(v.label == gold)
            blocked.append(v.blocked)
            if not v.flagged:
                misses.append({"id": rec.get("id"), "label": gold, "score": round(v.score, 3)})
        else:
            hits["benign"].append(v.flagged)
            hits[f"benign_var:{rec.get('variant', 'plain')}"].append(v.flagged)
            if v.flagged:
                false_pos.append({"id": rec.get("id"), "label": v.label, "score": round(v.score, 3)})
    chit_fp: list[dict] = []
    for text in chitchat or []:
        t0 = time.perf_counter()
        v = guard.check(text)
        lat.append(time.perf_counter() - t0)
        hits["chitchat"].append(v.flagged)
        if v.flagged:
            chit_fp.append({"text": text[:120], "label": v.label, "score": round(v.score, 3)})
    lat_ms = np.array(lat) * 1000
    return {
        "n_records": len(records),
        "n_harmful": len(hits["harmful"]),
        "n_benign": len(hits["benign"]),
        "n_chitchat": len(hits["chitchat"]),
        "harmful_recall": _rate(hits["harmful"]),
        "harmful_blocked": _rate(blocked),
        "category_accuracy": _rate(correct_cat),
        "per_category": {k[4:]: (_rate(v), len(v)) for k, v in sorted(hits.items()) if k.startswith("cat:")},
        "per_variant": {k[4:]: (_rate(v), len(v)) for k, v in sorted(hits.items()) if k.startswith("var:")},
        "multi_turn_recall": _rate(hits["multi_turn"]),
        "n_multi_turn": len(hits["multi_turn"]),
        "benign_fpr": _rate(hits["benign"]),
        "benign_fpr_per_variant": {
            k[11:]: (_rate(v), len(v)) for k, v in sorted(hits.items()) if k.startswith("benign_var:")
        },  # fmt: skip
        "chitchat_fpr": _rate(hits["chitchat"]),
        "latency_ms": {
            "p50": float(np.percentile(lat_ms, 50)),
            "p95": float(np.percentile(lat_ms, 95)),
            "max": float(lat_ms.max()),
        }
        if len(lat_ms)
        else {},  # fmt: skip
        "misses": misses,
        "false_positives": false_pos,
        "chitchat_false_positives": chit_fp,
    }


def format_report(r: dict) -> str:
    """A markdown table (pasted as-is into docs/safety.md)."""
    pct = lambda x: "n/a" if x != x else f"{100 * x:.1f} %"  # noqa: E731
    rows = [
        ("Harmful recall (overall)", pct(r["harmful_recall"]), r["n_harmful"]),
        ("Harmful refused or terminated", pct(r["harmful_blocked"]), r["n_harmful"]),
        ("Category accuracy (harmful)", pct(r["category_accuracy"]), r["n_harmful"]),
        ("Multi-turn recall", pct(r["multi_turn_recall"]), r["n_multi_turn"]),
        ("FPR, benign look-alikes", pct(r["benign_fpr"]), r["n_benign"]),
        ("FPR, plain chit-chat", pct(r["chitchat_fpr"]), r["n_chitchat"]),
    ]
    for cat, (rate, n) in r["per_category"].items():
        rows.append((f"Recall: {cat}", pct(rate), n))
    for var, (rate, n) in r["per_variant"].items():
        rows.append((f"Recall, variant: {var}", pct(rate), n))
    for var, (rate, n) in r["benign_fpr_per_variant"].items():
        rows.append((f"FPR, benign variant: {var}", pct(rate), n))
    lat = r["latency_ms"]
    if lat:
        rows.append(("Latency per message p50 / p95", f"{lat['p50']:.2f} / {lat['p95']:.2f} ms", ""))
    lines = ["| metric | value | n |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
