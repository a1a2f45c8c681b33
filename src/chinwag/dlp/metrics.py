"""Evaluation metrics for the DLP scanner, as pure functions over plain Python / numpy data.

`chinwag dlp eval` and `benchmarks/dlp_vs_baselines.py` both call these, so ours and the baselines are scored
by exactly the same code. Nothing here touches torch, files or randomness.

Span metrics take one list of spans per document. A span is anything with `.field`, `.start`, `.end` and
`.label` (normally `chinwag.dlp.labels.Span`); offsets are code points of one raw field, [start, end).
Matching is one-to-one inside a document: a gold span is credited at most once and a prediction can credit
at most one gold span, so one long prediction covering two values is one TP plus one FN, never two TPs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from chinwag.dlp.labels import LABELS

DECISIONS = ("ALLOW", "ALLOW_WITH_WARNING", "BLOCK")

# ----------------------------------------------------------------------------- span matching


def _overlaps(a, b) -> bool:
    return a.start < b.end and b.start < a.end


def _exact(a, b) -> bool:
    return a.start == b.start and a.end == b.end


def _match(gold: Sequence, pred: Sequence, mode: str) -> list[tuple[int, int]]:
    """Maximum one-to-one matching of gold to pred spans (same field and label, `mode` criterion).

    Returns (gold index, pred index) pairs. Kuhn's augmenting paths: a greedy first-fit can miss matches when
    one prediction overlaps two gold spans, and documents hold only a handful of spans, so exactness is cheap.
    """
    if mode not in ("exact", "overlap"):
        raise ValueError(f"mode must be 'exact' or 'overlap', got {mode!r}")
    hit: Callable = _exact if mode == "exact" else _overlaps
    adj = [
        [j for j, p in enumerate(pred) if p.field == g.field and p.label == g.label and hit(g, p)]
        for g in gold
    ]
    owner: dict[int, int] = {}  # pred index -> gold index

    def augment(i: int, seen: set[int]) -> bool:
        for j in adj[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(gold)):
        augment(i, set())
    return sorted((i, j) for j, i in owner.items())


def _prf(tp: int, fp: int, fn: int) -> dict:
    # Undefined ratios (no predictions / no gold) count as 0, like sklearn's zero_division=0.
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn, "support": tp + fn}


def _check_docs(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} documents but pred has {len(pred)}")


def span_prf(gold: Sequence[Sequence], pred: Sequence[Sequence], mode: str = "exact", labels=None) -> dict:
    """Span precision / recall / F1 per label plus micro and macro averages.

    `gold[d]` and `pred[d]` are the spans of document d. mode="exact": same field, label and offsets;
    mode="overlap": same field and label and the character ranges intersect. Returns
    {"per_label": {label: {precision, recall, f1, tp, fp, fn, support}}, "micro": {...}, "macro": {...}}.
    per_label lists `labels` (default: those of LABELS seen in gold or pred, in LABELS order, then any
    others sorted); macro is the unweighted mean of per-label P, R and F1 over that list.
    """
    _check_docs(gold, pred)
    counts: dict[str, list[int]] = {}  # label -> [tp, fp, fn]
    for g, p in zip(gold, pred, strict=True):
        g, p = list(g), list(p)
        matched = _match(g, p, mode)
        mg, mp = {i for i, _ in matched}, {j for _, j in matched}
        for i, s in enumerate(g):
            counts.setdefault(s.label, [0, 0, 0])[0 if i in mg else 2] += 1
        for j, s in enumerate(p):
            if j not in mp:
                counts.setdefault(s.label, [0, 0, 0])[1] += 1
    if labels is None:
        labels = [lab for lab in LABELS if lab in counts] + sorted(set(counts) - set(LABELS))
    per = {lab: _prf(*counts.get(lab, [0, 0, 0])) for lab in labels}
    tot = [sum(counts.get(lab, [0, 0, 0])[k] for lab in labels) for k in range(3)]
    mean = (lambda key: float(np.mean([v[key] for v in per.values()]))) if per else (lambda key: 0.0)
    macro = {"precision": mean("precision"), "recall": mean("recall"), "f1": mean("f1")}
    return {"per_label": per, "micro": _prf(*tot), "macro": macro}


def recall_by_form(gold_obfuscated: Sequence[dict], pred: Sequence[Sequence], mode: str = "overlap") -> dict:
    """Recall of obfuscated gold values, per obfuscation form, plus "all" over every form.

    `gold_obfuscated[d]` maps each obfuscated gold span of document d to its form name (synth's
    `Example.forms`). A span is recalled when one-to-one matching (see span_prf) pairs it with a prediction.
    Forms with no gold spans are absent; "all" is NaN when there are none at all.
    """
    _check_docs(gold_obfuscated, pred)
    hits: dict[str, list[int]] = {}  # form -> [recalled, total]
    for forms, p in zip(gold_obfuscated, pred, strict=True):
        g = sorted(forms)  # deterministic order; matching is maximum anyway
        mg = {i for i, _ in _match(g, list(p), mode)}
        for i, s in enumerate(g):
            h = hits.setdefault(forms[s], [0, 0])
            h[0] += i in mg
            h[1] += 1
    out = {form: r / n for form, (r, n) in sorted(hits.items())}
    n_all = sum(n for _, n in hits.values())
    out["all"] = sum(r for r, _ in hits.values()) / n_all if n_all else float("nan")
    return out


def false_positives_per_100_hard_negatives(
    hard_negatives: Sequence[Iterable], pred: Sequence[Sequence]
) -> dict:
    """False positives per 100 hard negatives, overall and per kind.

    `hard_negatives[d]` holds (field, start, end, kind) tuples of document d. A hard negative counts as one
    false positive (for its kind) when any prediction, of any label, in the same field overlaps it; counting
    hit negatives rather than predictions keeps the rate in [0, 100]. Returns {"overall": rate,
    "per_kind": {kind: rate}, "n": number of hard negatives, "n_per_kind": {kind: n}}; rates are NaN when
    there are no hard negatives.
    """
    _check_docs(hard_negatives, pred)
    hits: dict[str, list[int]] = {}  # kind -> [hit, total]
    for negs, p in zip(hard_negatives, pred, strict=True):
        p = list(p)
        for field, start, end, kind in negs:
            hit = any(s.field == field and s.start < end and start < s.end for s in p)
            h = hits.setdefault(kind, [0, 0])
            h[0] += hit
            h[1] += 1
    n = sum(t for _, t in hits.values())
    return {
        "overall": 100.0 * sum(h for h, _ in hits.values()) / n if n else float("nan"),
        "per_kind": {k: 100.0 * h / t for k, (h, t) in sorted(hits.items())},
        "n": n,
        "n_per_kind": {k: t for k, (_, t) in sorted(hits.items())},
    }


# ----------------------------------------------------------------------------- score / head metrics


def _binary(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(float).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} items but scores has {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must be 0/1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def _roc_steps(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) counts when thresholding at each distinct score, highest first.

    Tied scores form one step: a threshold cannot separate them, so treating them one by one would make the
    metric depend on the order of the input.
    """
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), y.size - 1]  # last index of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp, fp


def auprc(y_true, scores) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n, as sklearn's average_precision_score.

    This step-wise sum (no trapezoid interpolation) does not overstate the area. NaN without positives.
    """
    y, s = _binary(y_true, scores)
    if y.size == 0 or y.sum() == 0:
        return float("nan")
    tp, fp = _roc_steps(y, s)
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_recall(y_true, scores, recall: float = 0.95) -> float:
    """The lowest false-positive rate of any threshold (flag score >= t) whose recall is >= `recall`.

    NaN without positives or without negatives.
    """
    y, s = _binary(y_true, scores)
    pos, neg = y.sum(), y.size - y.sum()
    if pos == 0 or neg == 0:
        return float("nan")
    tp, fp = _roc_steps(y, s)
    ok = tp / pos >= recall - 1e-12  # tolerance: recall 0.95 computed as 19/20 must count as reaching 0.95
    return float(fp[ok].min() / neg)  # the lowest threshold always reaches recall 1, so ok is never empty


def ece(y_true, probs, n_bins: int = 15) -> float:
    """Expected calibration error of binary probabilities: sum over equal-width bins of
    (bin size / N) * |fraction positive - mean probability|. Bin i is [i/n, (i+1)/n); 1.0 goes in the last.
    """
    y, p = _binary(y_true, probs)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probs must lie in [0, 1]")
    if y.size == 0:
        return float("nan")
    b = np.minimum((p * n_bins).astype(int), n_bins - 1)
    acc = np.bincount(b, weights=y, minlength=n_bins)
    conf = np.bincount(b, weights=p, minlength=n_bins)
    return float(np.abs(acc - conf).sum() / y.size)  # sum_b (n_b/N)|acc_b/n_b - conf_b/n_b|; empty bins add 0


def sigmoid(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return np.exp(-np.logaddexp(0.0, -x))  # overflow-free 1 / (1 + e^-x)


def bce(logits, y_true) -> float:
    """Mean binary cross-entropy of sigmoid(logits), computed from logits for stability."""
    z = np.asarray(logits, dtype=float).ravel()
    y = np.asarray(y_true, dtype=float).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits, y_true, max_iter: int = 100, tol: float = 1e-10) -> float:
    """Temperature T > 0 minimising the mean BCE of sigmoid(logits / T) on held-out data.

    Solved for a = 1/T, where the loss is convex (logistic regression on one feature, no bias), by Newton
    steps with backtracking. Returns 1.0 when there is nothing to fit; raises if the logits carry no signal
    or rank the labels backwards (the optimum would need T = inf or T < 0).
    """
    y, z = _binary(y_true, logits)
    if z.size == 0 or not np.any(z):
        return 1.0
    if np.mean((0.5 - y) * z) >= 0:  # loss does not fall as a leaves 0: no T > 0 helps
        raise ValueError("logits carry no signal about the labels or rank them backwards; no T > 0 fits")
    a, loss = 1.0, bce(z, y)
    for _ in range(max_iter):
        p = sigmoid(a * z)
        grad = np.mean((p - y) * z)
        hess = np.mean(p * (1 - p) * z * z)
        step = grad / hess if hess > 1e-300 else -np.sign(grad)  # saturated sigmoids: hessian underflows
        t = 1.0
        while True:  # backtrack so the loss never goes up and a stays positive
            a_new = a - t * step
            if a_new > 0 and (new := bce(a_new * z, y)) <= loss:
                break
            t /= 2
            if t < 1e-12:
                return 1.0 / a
        converged = abs(a_new - a) <= tol * max(1.0, a)
        a, loss = a_new, new
        if converged:
            break
    return 1.0 / a


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logits / T)."""
    return sigmoid(np.asarray(logits, dtype=float) / temperature)


# ----------------------------------------------------------------------------- decisions


def confusion(gold_decisions: Sequence[str], pred_decisions: Sequence[str], labels=DECISIONS) -> np.ndarray:
    """Decision confusion matrix: rows are gold decisions, columns predicted, both in `labels` order."""
    _check_docs(gold_decisions, pred_decisions)
    index = {lab: i for i, lab in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for k, (g, p) in enumerate(zip(gold_decisions, pred_decisions, strict=True)):
        for name, d in (("gold", g), ("pred", p)):
            if d not in index:
                raise ValueError(f"{name} decision {k} is {d!r}; expected one of {', '.join(labels)}")
        m[index[g], index[p]] += 1
    return m
