"""DLP evaluation metrics: hand-computed cases, matching rules, and calibration on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from chinwag.dlp.labels import Span
from chinwag.dlp.metrics import (
    apply_temperature,
    auprc,
    confusion,
    ece,
    false_positives_per_100_hard_negatives,
    fit_temperature,
    fpr_at_recall,
    recall_by_form,
    span_prf,
)


def S(start, end, label="EMAIL", field="body"):
    return Span(field, start, end, label)


# ----------------------------------------------------------------------------- span P/R/F1


def test_span_prf_hand_computed_micro_macro():
    gold = [[S(0, 10), S(20, 30), S(40, 50, "PHONE")]]
    pred = [[S(0, 10), S(40, 49, "PHONE"), S(60, 70, "SSN")]]
    r = span_prf(gold, pred, mode="exact")
    assert list(r["per_label"]) == ["EMAIL", "PHONE", "SSN"]  # LABELS order, only labels seen
    em = r["per_label"]["EMAIL"]
    assert (em["tp"], em["fp"], em["fn"], em["support"]) == (1, 0, 1, 2)
    assert em["precision"] == 1.0 and em["recall"] == 0.5 and em["f1"] == pytest.approx(2 / 3)
    assert r["per_label"]["PHONE"]["f1"] == 0.0 and r["per_label"]["SSN"]["precision"] == 0.0
    assert r["micro"]["precision"] == pytest.approx(1 / 3) and r["micro"]["recall"] == pytest.approx(1 / 3)
    assert r["micro"]["f1"] == pytest.approx(1 / 3)
    assert r["macro"]["f1"] == pytest.approx(2 / 9)
    assert r["macro"]["precision"] == pytest.approx(1 / 3) and r["macro"]["recall"] == pytest.approx(1 / 6)
    # overlap mode credits the off-by-one PHONE span
    o = span_prf(gold, pred, mode="overlap")
    assert o["per_label"]["PHONE"]["tp"] == 1 and o["micro"]["tp"] == 2
    assert o["micro"]["f1"] == pytest.approx(2 / 3)


def test_overlap_needs_same_field_and_label_and_real_intersection():
    gold = [[S(0, 10)]]
    for p in (S(0, 10, field="subject"), S(0, 10, "PHONE"), S(10, 20)):  # other field, other label, touching
        r = span_prf(gold, [[p]], mode="overlap")
        assert r["micro"]["tp"] == 0 and r["micro"]["fp"] == 1 and r["micro"]["fn"] == 1


def test_one_to_one_matching():
    # one long prediction over two gold values: one TP, one FN, not two TPs
    r = span_prf([[S(0, 5), S(6, 10)]], [[S(0, 10)]], mode="overlap")
    assert (r["micro"]["tp"], r["micro"]["fp"], r["micro"]["fn"]) == (1, 0, 1)
    # duplicate predictions of one gold span: one TP, one FP (exact and overlap)
    for mode in ("exact", "overlap"):
        r = span_prf([[S(0, 5)]], [[S(0, 5), S(0, 5)]], mode=mode)
        assert (r["micro"]["tp"], r["micro"]["fp"], r["micro"]["fn"]) == (1, 1, 0)
    # greedy first-fit would give gold[0] the long prediction and leave gold[1] unmatched; maximum matching
    # pairs gold[0] with the short one instead
    r = span_prf([[S(0, 5), S(6, 10)]], [[S(0, 10), S(0, 3)]], mode="overlap")
    assert (r["micro"]["tp"], r["micro"]["fp"], r["micro"]["fn"]) == (2, 0, 0)


def test_span_prf_perfect_empty_and_per_document():
    gold = [[S(0, 5), S(9, 12, "NAME")], [], [S(3, 4, "SSN", "attachments.0.text")]]
    for mode in ("exact", "overlap"):
        r = span_prf(gold, gold, mode=mode)
        assert r["micro"]["f1"] == 1.0 and r["macro"]["f1"] == 1.0
        empty = span_prf(gold, [[], [], []], mode=mode)
        assert empty["micro"]["recall"] == 0.0 and empty["micro"]["precision"] == 0.0
        assert empty["micro"]["fn"] == 3 and empty["macro"]["f1"] == 0.0
    # spans are matched within a document only
    r = span_prf([[S(0, 5)], []], [[], [S(0, 5)]])
    assert r["micro"]["tp"] == 0
    nothing = span_prf([[]], [[]])
    assert nothing["per_label"] == {} and nothing["micro"]["f1"] == 0.0
    # an explicit label list keeps zero-support labels in the macro average
    r = span_prf([[S(0, 5)]], [[S(0, 5)]], labels=["EMAIL", "PHONE"])
    assert r["macro"]["f1"] == 0.5 and r["per_label"]["PHONE"]["support"] == 0
    with pytest.raises(ValueError, match="documents"):
        span_prf([[]], [])
    with pytest.raises(ValueError, match="mode"):
        span_prf([[S(0, 1)]], [[S(0, 1)]], mode="fuzzy")


# ----------------------------------------------------------------------------- obfuscation and hard negatives


def test_recall_by_form():
    a, b, c = S(0, 10), S(20, 30, "PAN"), S(40, 50, "SECRET_KEY")
    forms = [{a: "base64", b: "spaced_digits"}, {c: "base64"}]
    pred = [[S(2, 8), S(20, 30, "PAN")], [S(40, 50, "DB_URI")]]  # c predicted with the wrong label
    r = recall_by_form(forms, pred)
    assert r == {"base64": 0.5, "spaced_digits": 1.0, "all": pytest.approx(2 / 3)}
    assert recall_by_form(forms, pred, mode="exact")["base64"] == 0.0
    assert np.isnan(recall_by_form([{}], [[S(0, 1)]])["all"])


def test_false_positives_per_100_hard_negatives():
    negs = [
        [("body", 0, 16, "test_card"), ("body", 30, 40, "placeholder_secret")],
        [("body", 20, 36, "test_card"), ("subject", 5, 9, "placeholder_secret")],
    ]
    pred = [
        [
            S(3, 10, "PAN"),
            S(40, 45, "SECRET_KEY"),
        ],  # hits the card (any label counts); touches the secret only
        [S(5, 9, "SECRET_KEY", field="body")],  # same offsets but another field: no hit
    ]
    r = false_positives_per_100_hard_negatives(negs, pred)
    assert r["overall"] == 25.0 and r["n"] == 4
    assert r["per_kind"] == {"placeholder_secret": 0.0, "test_card": 50.0}
    assert r["n_per_kind"] == {"placeholder_secret": 2, "test_card": 2}
    # two predictions on one hard negative still make one false positive
    assert false_positives_per_100_hard_negatives([[negs[0][0]]], [[S(0, 4), S(5, 9)]])["overall"] == 100.0
    assert false_positives_per_100_hard_negatives(negs, [[], []])["overall"] == 0.0
    assert np.isnan(false_positives_per_100_hard_negatives([[]], [[]])["overall"])


# ----------------------------------------------------------------------------- AUPRC, FPR@recall


def _ap_reference(y, s):
    """Brute force over distinct thresholds: sum (R_t - R_prev) * P_t."""
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        flagged = [yi for yi, si in zip(y, s, strict=True) if si >= t]
        r = sum(flagged) / sum(y)
        ap += (r - prev_r) * sum(flagged) / len(flagged)
        prev_r = r
    return ap


def test_auprc_hand_computed_and_ties():
    assert auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333333333)  # sklearn's doc example
    assert auprc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    # tie between a positive and a negative at 0.5: one threshold step, P = 2/3 there, whatever the order
    assert auprc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert auprc([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert auprc([1, 0, 1], [0.3, 0.3, 0.3]) == pytest.approx(2 / 3)  # all tied: AP = prevalence
    assert np.isnan(auprc([0, 0], [0.1, 0.2]))


def test_auprc_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        y[0] = 1
        s = np.round(rng.random(n), 1)  # coarse rounding forces many ties
        assert auprc(y, s) == pytest.approx(_ap_reference(list(y), list(s)))
        perm = rng.permutation(n)
        assert auprc(y[perm], s[perm]) == pytest.approx(auprc(y, s))


def test_auprc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 2)
    assert auprc(y, s) == pytest.approx(metrics.average_precision_score(y, s))


def test_fpr_at_recall():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.3, 0.6, 0.5, 0.2, 0.1]
    assert fpr_at_recall(y, s, recall=0.75) == 0.0  # threshold 0.7: 3/4 positives, no negatives
    assert fpr_at_recall(y, s) == 0.5  # 95 % needs all four: threshold 0.3 also flags 0.6 and 0.5
    assert fpr_at_recall(y, s, recall=0.0) == 0.0
    assert fpr_at_recall([1, 0], [0.5, 0.5]) == 1.0  # a tie cannot be split by any threshold
    assert fpr_at_recall([1] * 19 + [0] * 2, [1.0] * 19 + [0.5, 0.4]) == 0.0  # 0.95 reached exactly
    assert fpr_at_recall([1, 1, 0], [0.2, 0.9, 0.1]) == 0.0
    assert np.isnan(fpr_at_recall([1, 1], [0.2, 0.3])) and np.isnan(fpr_at_recall([0, 0], [0.2, 0.3]))
    with pytest.raises(ValueError, match="0/1"):
        fpr_at_recall([2, 0], [0.1, 0.2])


# ----------------------------------------------------------------------------- calibration


def test_ece_hand_computed():
    assert ece([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9], n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert ece([1, 0], [1.0, 0.0]) == 0.0  # 1.0 lands in the last bin
    assert ece([1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ece([1], [1.5])


def test_ece_of_calibrated_data_is_near_zero():
    rng = np.random.default_rng(2)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert ece(y, p) < 0.01
    assert ece(y, np.clip(p * 1.3 - 0.15, 0, 1)) > 0.05  # the same labels with distorted probabilities


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    rng = np.random.default_rng(3)
    u = rng.normal(0.0, 3.0, 50_000)  # calibrated logits
    y = (rng.random(u.size) < 1 / (1 + np.exp(-u))).astype(int)
    logits = u * t_true  # what an over- (t > 1) or under-confident (t < 1) model would emit
    t = fit_temperature(logits, y)
    assert t == pytest.approx(t_true, rel=0.05)
    assert ece(y, apply_temperature(logits, t)) < 0.02 < ece(y, apply_temperature(logits, 1.0))


def test_fit_temperature_edge_cases():
    assert fit_temperature([0.0, 0.0], [0, 1]) == 1.0  # nothing to fit
    with pytest.raises(ValueError, match="backwards"):
        fit_temperature([3.0, -3.0, 2.0, -1.0], [0, 1, 0, 1])
    # separable data: the optimum runs off to T -> 0; the fit must stay finite and positive
    t = fit_temperature([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    assert 0 < t < 0.1


# ----------------------------------------------------------------------------- decisions


def test_confusion():
    gold = ["ALLOW", "ALLOW", "BLOCK", "ALLOW_WITH_WARNING", "BLOCK"]
    pred = ["ALLOW", "BLOCK", "BLOCK", "ALLOW", "BLOCK"]
    m = confusion(gold, pred)
    assert m.tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 2]]
    assert m.sum() == len(gold)
    assert confusion(["BLOCK"], ["ALLOW"], labels=("BLOCK", "ALLOW")).tolist() == [[0, 1], [0, 0]]
    assert confusion([], []).sum() == 0
    with pytest.raises(ValueError, match="pred decision 0 is 'DENY'"):
        confusion(["ALLOW"], ["DENY"])
