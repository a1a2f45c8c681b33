"""`chinwag dlp eval`: the issue-8 evaluation tables for a trained scanner on a labelled test file.

Gold comes from a JSONL file written by `chinwag dlp synth` (the document plus `spans` with their
`obfuscated`/`form` flags and `hard_negatives`). Gold document labels are recomputed with the policy from
the gold spans, exactly as training computed its targets. Every metric is one of `chinwag.dlp.metrics`, so
the baselines benchmark scores ours and theirs with the same code.

Tables (`score_predictions` builds all but the last two from predictions alone, so tests can hand-build
them):
- span P/R/F1 per label, exact and overlap, micro and macro (and micro without the validators' vetoes);
- recall of obfuscated gold values per obfuscation form;
- false positives per 100 hard negatives, per kind;
- per document head: AUPRC, FPR at 95 % recall (the primary number), ECE after and before calibration.
  For `context` the head is P(consistent); its metrics treat *inconsistent* as the positive class (score
  1 - p), because the rare class is the one a reviewer has to catch;
- the decision confusion matrix (gold = policy on gold spans, predicted = policy on predicted spans);
- stability under +-200-token shifts (`stability`): about 200 tokens of neutral prose (no value, no NDA
  term) are inserted before the body ("prefix", +200: every body value moves ~200 tokens later, across
  pool, segment and window boundaries) or appended after it ("suffix", -200: the values end up ~200 tokens
  further from the end of the document, i.e. 200 tokens earlier relative to it). Gold labels do not
  change; we count how often the decision flips relative to the unshifted prediction, and the decision
  accuracy and exact span F1 under each shift;
- gate ablation (`gate_ablation`): the same documents with the fusion gate forced off (h' = h, by setting
  the loaded model's `config.gates = False`: `DLPModel._fuse` reads it at call time; the weights are
  untouched), against gates on; plus the mean gate value g (how much each token trusts its raw input).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from chinwag.dlp import metrics
from chinwag.dlp.dsl import Document
from chinwag.dlp.labels import LABELS, Span
from chinwag.dlp.model import DOC_HEADS
from chinwag.dlp.policy import document_labels
from chinwag.dlp.synth import Example
from chinwag.dlp.synth import example_from_record as synth_record
from chinwag.utils import iter_jsonl


class EvalDataError(ValueError):
    """A test file record that cannot be evaluated; the message starts with file:line."""


# ----------------------------------------------------------------------------- data


def example_from_record(rec: dict, where: str = "<record>") -> Example:
    """A `chinwag dlp synth` record -> synth.Example; eval needs gold spans, so they are required."""
    return synth_record(rec, where, need_spans=True, error=EvalDataError)


def read_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    out = []
    for where, rec in iter_jsonl(path, error=EvalDataError):
        out.append(example_from_record(rec, where))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise EvalDataError(f"{path}: no documents")
    return out


def gold_labels(ex: Example):
    return document_labels(ex.doc, ex.spans, ex.obfuscated)


# ----------------------------------------------------------------------------- tables from predictions


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def head_metrics(gold_heads: list[dict], preds) -> dict:
    """Per head: AUPRC, FPR@95%R, ECE (calibrated scores) and ECE of sigmoid(raw logits) when known."""
    out = {}
    for h in DOC_HEADS:
        y = np.array([g[h] for g in gold_heads], dtype=float)
        p = np.array([pr.scores[h] for pr in preds], dtype=float)
        z = np.array([pr.logits.get(h, np.nan) for pr in preds], dtype=float)
        if h == "context":  # positive class = inconsistent
            y, p, z = 1 - y, 1 - p, -z
        row = {
            "positive": "inconsistent" if h == "context" else h,
            "n": int(y.size),
            "positives": int(y.sum()),
            "auprc": metrics.auprc(y, p),
            "fpr_at_95_recall": metrics.fpr_at_recall(y, p, 0.95),
            "ece": metrics.ece(y, p),
            "ece_uncalibrated": metrics.ece(y, metrics.sigmoid(z)) if np.isfinite(z).all() else float("nan"),
        }
        out[h] = row
    return out


def score_predictions(examples: list[Example], preds) -> dict:
    """Every table that needs only gold and predictions. `preds[d]` has `.spans`, `.raw_spans` (before
    vetoes; may equal spans), `.scores` {head: prob}, `.logits` {head: logit} (may be empty) and
    `.decision` (scan.DocPrediction)."""
    if len(examples) != len(preds):
        raise ValueError(f"{len(examples)} examples but {len(preds)} predictions")
    gold = [ex.spans for ex in examples]
    pred = [p.spans for p in preds]
    raw = [p.raw_spans or p.spans for p in preds]
    labels = [gold_labels(ex) for ex in examples]
    gold_dec = [lab.decision for lab in labels]
    pred_dec = [p.decision for p in preds]
    cm = metrics.confusion(gold_dec, pred_dec)
    gold_sets = [set(g) for g in gold]
    vetoed = [(set(r) - set(p), gs) for r, p, gs in zip(raw, pred, gold_sets, strict=True)]
    forms = [ex.forms for ex in examples]
    negs = [ex.hard_negatives for ex in examples]
    # per-label rows for the labels present in gold or predictions (macro averages over those)
    present = {s.label for d in gold + raw for s in d}
    labs = [lab for lab in LABELS if lab in present]
    return {
        "n_docs": len(examples),
        "spans": {m: metrics.span_prf(gold, pred, m, labels=labs) for m in ("exact", "overlap")},
        "spans_without_validators": {
            m: metrics.span_prf(gold, raw, m, labels=labs)["micro"] for m in ("exact", "overlap")
        },
        "vetoes": {
            "vetoed": sum(len(v) for v, _ in vetoed),
            "vetoed_gold_exact": sum(len(v & gs) for v, gs in vetoed),  # vetoes that removed a true span
        },
        "obfuscation": {
            "recall_overlap": metrics.recall_by_form(forms, pred, "overlap"),
            "recall_exact": metrics.recall_by_form(forms, pred, "exact"),
            "n_per_form": dict(sorted(Counter(f for fs in forms for f in fs.values()).items())),
        },
        "hard_negatives": metrics.false_positives_per_100_hard_negatives(negs, pred),
        "heads": head_metrics([lab.heads() for lab in labels], preds),
        "decisions": {
            "labels": list(metrics.DECISIONS),
            "matrix": cm.tolist(),
            "accuracy": float(np.trace(cm) / max(1, cm.sum())),
        },
    }


# ----------------------------------------------------------------------------- model probes

NEUTRAL = (
    "The weekly sync covered the roadmap and the open questions about the release.",
    "Please review the draft when you have a moment and leave comments inline.",
    "We agreed to revisit the scope after the next planning session.",
    "The build is green again and the flaky test has been quarantined.",
    "Thanks for the quick turnaround on the design feedback.",
    "Let us keep the discussion in this thread so everyone can follow along.",
    "The slides from the workshop are in the shared folder.",
    "Lunch options for the offsite are still being collected.",
    "I will follow up once the dashboard numbers are refreshed.",
    "The documentation page now explains the setup steps in more detail.",
    "Nothing here is urgent, so feel free to pick it up tomorrow.",
    "The migration plan looks reasonable and the rollback steps are clear.",
)


def neutral_prose(tok, n_tokens: int = 200, seed: int = 0) -> str:
    """Sentences of harmless prose (no value of any label, no NDA term) until `tok` gives >= n_tokens."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(tok.encode(" ".join(out)).ids) < n_tokens:
        out.append(rng.choice(NEUTRAL))
    return " ".join(out)


def predict_all(scanner, docs: list[Document], chunk: int = 16, progress: Callable | None = None):
    """scanner.predict over `docs` in chunks (so a progress bar can advance: progress(n_done))."""
    preds = []
    for a in range(0, len(docs), chunk):
        preds += scanner.predict(docs[a : a + chunk])
        if progress:
            progress(len(preds))
    return preds


def _shifted(ex: Example, filler: str, before: bool) -> tuple[Document, list[Span]]:
    """The document with `filler` before/after its body, and its gold spans moved accordingly."""
    d = Document.from_dict(ex.doc.to_dict())
    pad = filler + "\n\n" if before else ""
    d.body = pad + d.body + ("" if before else "\n\n" + filler)
    gold = [Span(s.field, s.start + len(pad), s.end + len(pad), s.label) if s.field == "body" else s
            for s in ex.spans]  # fmt: skip
    return d, gold


def stability(scanner, examples: list[Example], base_preds, n_tokens: int = 200, seed: int = 0,
              progress: Callable | None = None) -> dict:  # fmt: skip
    """Decision flips under a +200 (prose before the body) and -200 (prose after it) token shift."""
    filler = neutral_prose(scanner.tok, n_tokens, seed)
    gold_dec = [gold_labels(ex).decision for ex in examples]
    out = {"n_docs": len(examples), "filler_tokens": len(scanner.tok.encode(filler).ids)}
    for name, before in (("prefix", True), ("suffix", False)):
        docs, golds = zip(*(_shifted(ex, filler, before) for ex in examples), strict=True)
        preds = predict_all(scanner, list(docs), progress=progress)
        dec = [p.decision for p in preds]
        out[name] = {
            "where": "prose before the body" if before else "prose after the body",
            "flip_rate": float(np.mean([a != b.decision for a, b in zip(dec, base_preds, strict=True)])),
            "decision_accuracy": float(np.mean([a == g for a, g in zip(dec, gold_dec, strict=True)])),
            "span_f1_exact": metrics.span_prf(list(golds), [p.spans for p in preds], "exact")["micro"]["f1"],
        }
    base_dec = [p.decision for p in base_preds]
    base_spans = [p.spans for p in base_preds]
    out["unshifted"] = {
        "decision_accuracy": float(np.mean([a == g for a, g in zip(base_dec, gold_dec, strict=True)])),
        "span_f1_exact": metrics.span_prf([ex.spans for ex in examples], base_spans, "exact")["micro"]["f1"],
    }
    return out


@contextmanager
def gates_forced_off(model):
    """Run the model with h' = h (the gate ablation) without touching its weights."""
    old = model.config.gates
    model.config.gates = False
    try:
        yield model
    finally:
        model.config.gates = old


def _summary(examples, preds) -> dict:
    labels = [gold_labels(ex) for ex in examples]
    y = np.array([lab.heads()["sensitivity"] for lab in labels])
    p = np.array([pr.scores["sensitivity"] for pr in preds])
    return {
        "span_f1_exact": metrics.span_prf([e.spans for e in examples], [p.spans for p in preds],
                                          "exact")["micro"]["f1"],
        "span_f1_overlap": metrics.span_prf([e.spans for e in examples], [p.spans for p in preds],
                                            "overlap")["micro"]["f1"],
        "decision_accuracy": float(np.mean([pr.decision == lab.decision for pr, lab in zip(preds, labels,
                                                                                            strict=True)])),
        "sensitivity_auprc": metrics.auprc(y, p),
    }  # fmt: skip


def mean_gate(scanner, docs: list[Document]) -> float:
    """Mean of g = sigmoid(W[x||h||s]) over every token of `docs` (run one window at a time: no padding)."""
    model = scanner.model
    vals: list[float] = []
    hook = model.gate.register_forward_hook(lambda m, i, o: vals.append(float(o.float().sigmoid().mean())))
    old_bs, scanner.batch_size = scanner.batch_size, 1
    try:
        scanner.predict(docs)
    finally:
        scanner.batch_size = old_bs
        hook.remove()
    return float(np.mean(vals)) if vals else float("nan")


def gate_ablation(scanner, examples: list[Example], base_preds, progress: Callable | None = None) -> dict:
    if not scanner.model.config.gates:
        return {"skipped": "the model was built without gates (config.gates = false)"}
    with gates_forced_off(scanner.model):
        off = predict_all(scanner, [ex.doc for ex in examples], progress=progress)
    return {
        "n_docs": len(examples),
        "on": _summary(examples, base_preds),
        "off": _summary(examples, off),
        "mean_gate": mean_gate(scanner, [ex.doc for ex in examples[:16]]),
    }


# ----------------------------------------------------------------------------- the whole evaluation


def evaluate_model(scanner, examples: list[Example], probe_n: int = 200, seed: int = 0,
                   shift_tokens: int = 200, progress: Callable | None = None) -> dict:  # fmt: skip
    """All the tables. `probe_n` documents (the first ones) are re-scanned for stability and the gate
    ablation. `progress(stage, done, total)` is called as work advances."""
    t0 = time.perf_counter()
    docs = [ex.doc for ex in examples]
    step = (lambda stage, total: lambda n: progress(stage, n, total)) if progress else (lambda s, t: None)
    preds = predict_all(scanner, docs, progress=step("scan", len(docs)))
    scan_s = time.perf_counter() - t0
    report = score_predictions(examples, preds)
    probe = examples[: max(0, probe_n)]
    if probe:
        base = preds[: len(probe)]
        report["stability"] = stability(scanner, probe, base, shift_tokens, seed,
                                        step("shifts", 2 * len(probe)))  # fmt: skip
        report["gate_ablation"] = gate_ablation(scanner, probe, base, step("gates off", len(probe)))
    report["scanner"] = {
        "window": scanner.window,
        "overlap": scanner.overlap,
        "segment_len": scanner.segment_len,
        "validators": scanner.validate,
        "temperature": dict(scanner.temperature),
        "multi_window_docs": sum(p.n_windows > 1 for p in preds),
        "mean_tokens": float(np.mean([p.n_tokens for p in preds])),
    }
    report["seconds"] = {"scan": scan_s, "total": time.perf_counter() - t0,
                         "docs_per_s": len(docs) / max(scan_s, 1e-9)}  # fmt: skip
    return report


def jsonable(x):
    """NaN -> None (strict JSON has no NaN), numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return _finite(x)
    return x


# ----------------------------------------------------------------------------- printing


def _f(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def render(report: dict, console) -> None:
    """Print the tables with rich."""
    from rich.table import Table

    ex, ov = report["spans"]["exact"], report["spans"]["overlap"]
    t = Table(title=f"Span P / R / F1 ({report['n_docs']} documents)")
    for c in ("label", "support", "P exact", "R exact", "F1 exact", "P overlap", "R overlap", "F1 overlap"):
        t.add_column(c, justify="left" if c == "label" else "right")
    for lab, e in ex["per_label"].items():
        o = ov["per_label"][lab]
        t.add_row(lab, str(e["support"]), *(_f(e[k]) for k in ("precision", "recall", "f1")),
                  *(_f(o[k]) for k in ("precision", "recall", "f1")))  # fmt: skip
    for avg in ("micro", "macro"):
        e, o = ex[avg], ov[avg]
        t.add_row(avg, str(e.get("support", "")), *(_f(e[k]) for k in ("precision", "recall", "f1")),
                  *(_f(o[k]) for k in ("precision", "recall", "f1")), style="bold")  # fmt: skip
    nv = report["spans_without_validators"]
    vt = report["vetoes"]
    t.caption = (
        f"without validators: micro F1 exact {_f(nv['exact']['f1'])}, overlap {_f(nv['overlap']['f1'])}; "
        f"{vt['vetoed']} spans vetoed, {vt['vetoed_gold_exact']} of them true"
    )
    console.print(t)

    ob = report["obfuscation"]
    t = Table(title="Recall on obfuscated values, per form")
    for c in ("form", "n", "recall (overlap)", "recall (exact)"):
        t.add_column(c, justify="left" if c == "form" else "right")
    for form, n in ob["n_per_form"].items():
        t.add_row(form, str(n), _f(ob["recall_overlap"].get(form)), _f(ob["recall_exact"].get(form)))
    t.add_row("all", str(sum(ob["n_per_form"].values())), _f(ob["recall_overlap"].get("all")),
              _f(ob["recall_exact"].get("all")), style="bold")  # fmt: skip
    console.print(t)

    hn = report["hard_negatives"]
    t = Table(title="False positives per 100 hard negatives")
    t.add_column("kind")
    t.add_column("n", justify="right")
    t.add_column("FP / 100", justify="right")
    for kind, rate in hn["per_kind"].items():
        t.add_row(kind, str(hn["n_per_kind"][kind]), f"{rate:.1f}")
    t.add_row("overall", str(hn["n"]), "-" if _finite(hn["overall"]) is None else f"{hn['overall']:.1f}",
              style="bold")  # fmt: skip
    console.print(t)

    temps = report.get("scanner", {}).get("temperature", {})
    t = Table(title="Document heads (context: positive = inconsistent)")
    for c in ("head", "positives / n", "AUPRC", "FPR@95%R", "ECE", "ECE (T=1)", "T"):
        t.add_column(c, justify="left" if c == "head" else "right")
    for h, r in report["heads"].items():
        t.add_row(h, f"{r['positives']} / {r['n']}", _f(r["auprc"]), _f(r["fpr_at_95_recall"]), _f(r["ece"]),
                  _f(r["ece_uncalibrated"]), _f(temps.get(h)))  # fmt: skip
    console.print(t)

    d = report["decisions"]
    t = Table(title=f"Decisions (rows gold, columns predicted; accuracy {_f(d['accuracy'])})")
    t.add_column("gold \\ pred")
    for lab in d["labels"]:
        t.add_column(lab, justify="right")
    for lab, row in zip(d["labels"], d["matrix"], strict=True):
        t.add_row(lab, *map(str, row))
    console.print(t)

    if "stability" in report:
        s = report["stability"]
        n = s["filler_tokens"]
        t = Table(title=f"Stability under ±{n}-token shifts ({s['n_docs']} documents)")
        for c in ("shift", "decision flips %", "decision acc", "span F1 exact"):
            t.add_column(c, justify="left" if c == "shift" else "right")
        t.add_row("none", "", _f(s["unshifted"]["decision_accuracy"]), _f(s["unshifted"]["span_f1_exact"]))
        for name, sign in (("prefix", "+"), ("suffix", "-")):
            r = s[name]
            t.add_row(f"{sign}{n} ({r['where']})", _f(r["flip_rate"], pct=True), _f(r["decision_accuracy"]),
                      _f(r["span_f1_exact"]))  # fmt: skip
        console.print(t)
    if "gate_ablation" in report:
        g = report["gate_ablation"]
        if "skipped" in g:
            console.print(f"gate ablation skipped: {g['skipped']}")
        else:
            t = Table(title=f"Gate ablation ({g['n_docs']} documents; mean gate g = {_f(g['mean_gate'])})")
            for c in ("metric", "gates on", "gates off"):
                t.add_column(c, justify="left" if c == "metric" else "right")
            for k in g["on"]:
                t.add_row(k, _f(g["on"][k]), _f(g["off"][k]))
            console.print(t)
