"""`chinwag dlp eval`: tables checked by hand on hand-built predictions; probes and CLI on a tiny model."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from typer.testing import CliRunner

from chinwag.cli import app
from chinwag.dlp import synth
from chinwag.dlp.dsl import Document, serialize
from chinwag.dlp.evaluate import (
    NEUTRAL,
    EvalDataError,
    _shifted,
    evaluate_model,
    gates_forced_off,
    jsonable,
    neutral_prose,
    read_examples,
    score_predictions,
)
from chinwag.dlp.labels import NDA_TERMS, Span
from chinwag.dlp.model import DOC_HEADS, DLPModel, get_dlp_config
from chinwag.dlp.scan import DocPrediction, Scanner
from chinwag.dlp.synth import Example
from chinwag.dlp.tokenizer import DLPTokenizer
from chinwag.dlp.train import save_dlp

runner = CliRunner()


def span(doc: Document, value: str, label: str, field: str = "body") -> Span:
    start = doc.field_text(field).index(value)
    return Span(field, start, start + len(value), label)


@pytest.fixture()
def hand():
    """Three documents with gold spans and hand-built predictions (every number below is worked out by hand
    in the test's comments)."""
    a = Document(channel="email", role="finance", sender="a@corp.com", recipients=["b@corp.com"],
                 body="card 4539 1488 0343 6467, mail jo@gmail.com, ref 4111 1111 1111 1111",
                 org_domains=["corp.com"])  # fmt: skip
    b = Document(channel="chat", role="sales", body="call me at 4 1 5 5 5 5 0 1 0 0 thanks Dana Wu")
    c = Document(channel="chat", role="support", body="nothing to see, order ORD-1234567")
    pan, mail, test_card = span(a, "4539 1488 0343 6467", "PAN"), span(a, "jo@gmail.com", "EMAIL"), None
    test_card = span(a, "4111 1111 1111 1111", "PAN")
    phone, name = span(b, "4 1 5 5 5 5 0 1 0 0", "PHONE"), span(b, "Dana Wu", "NAME")
    order = span(c, "ORD-1234567", "PAN")
    examples = [
        Example(a, [pan, mail], set(), [("body", test_card.start, test_card.end, "test_card")]),
        Example(b, [phone, name], {phone}, [], forms={phone: "spaced_digits"}),
        Example(c, [], set(), [("body", order.start, order.end, "order_number")]),
    ]
    partial = Span("body", mail.start, mail.end - 4, "EMAIL")  # "jo@gmail" : overlaps, not exact
    scores = lambda s: {**dict.fromkeys(DOC_HEADS, 0.5), "sensitivity": s}  # noqa: E731
    preds = [
        DocPrediction(
            [pan, partial, test_card], scores(0.9), "BLOCK", raw_spans=[pan, partial, test_card, mail]
        ),
        DocPrediction([phone], scores(0.6), "BLOCK"),
        DocPrediction([], scores(0.7), "ALLOW"),
    ]
    return examples, preds


def test_span_tables_by_hand(hand):
    r = score_predictions(*hand)
    ex, ov = r["spans"]["exact"], r["spans"]["overlap"]
    assert list(ex["per_label"]) == ["EMAIL", "PHONE", "PAN", "NAME"]  # labels seen, in LABELS order
    assert ex["per_label"]["PAN"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "tp": 1, "fp": 1, "fn": 0, "support": 1}
    )
    assert ex["per_label"]["EMAIL"]["f1"] == 0 and ov["per_label"]["EMAIL"]["f1"] == 1.0
    assert ex["per_label"]["NAME"]["support"] == 1 and ex["per_label"]["NAME"]["recall"] == 0
    # micro exact: tp 2 (PAN, PHONE), fp 2 (test card, partial email), fn 2 (email, name)
    assert (ex["micro"]["precision"], ex["micro"]["recall"], ex["micro"]["f1"]) == (0.5, 0.5, 0.5)
    assert ov["micro"]["f1"] == 0.75  # the partial email now counts: tp 3, fp 1, fn 1
    assert ex["macro"]["f1"] == pytest.approx((0 + 1 + 2 / 3 + 0) / 4)
    # without validators the exact email (vetoed) is back: exact tp 3, fp 2, fn 1
    assert r["spans_without_validators"]["exact"]["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert r["vetoes"] == {"vetoed": 1, "vetoed_gold_exact": 1}


def test_obfuscation_negatives_heads_decisions_by_hand(hand):
    r = score_predictions(*hand)
    ob = r["obfuscation"]
    assert ob["n_per_form"] == {"spaced_digits": 1}
    assert ob["recall_overlap"] == {"spaced_digits": 1.0, "all": 1.0} == ob["recall_exact"]
    hn = r["hard_negatives"]  # the test card is hit by the false PAN; the order number is not
    assert hn["overall"] == 50.0 and hn["per_kind"] == {"order_number": 0.0, "test_card": 100.0}
    s = r["heads"]["sensitivity"]  # gold [1, 1, 0], scores [.9, .6, .7]
    assert s["positives"] == 2 and s["n"] == 3
    assert s["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # P=1 at R=.5, then P=2/3 at R=1
    assert s["fpr_at_95_recall"] == 1.0  # recall 1 needs the .6 threshold, which passes the negative too
    assert s["ece"] == pytest.approx((0.1 + 0.4 + 0.7) / 3)  # each score alone in its bin
    assert math.isnan(s["ece_uncalibrated"])  # no logits in hand-built predictions
    c = r["heads"]["context"]  # all three are consistent: no inconsistent positive
    assert c["positive"] == "inconsistent" and c["positives"] == 0 and math.isnan(c["auprc"])
    assert r["heads"]["obfuscation"]["positives"] == 1  # doc b
    d = r["decisions"]  # gold: a warns (level 2, internal, finance), b blocks (obfuscated PII), c allows
    assert d["labels"] == ["ALLOW", "ALLOW_WITH_WARNING", "BLOCK"]
    assert d["matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]] and d["accuracy"] == pytest.approx(2 / 3)
    out = jsonable(r)
    json.dumps(out, allow_nan=False)  # strict JSON: NaN became null
    assert out["heads"]["context"]["auprc"] is None


def test_score_predictions_needs_one_prediction_per_document(hand):
    examples, preds = hand
    with pytest.raises(ValueError, match="3 examples but 2 predictions"):
        score_predictions(examples, preds[:2])


# ----------------------------------------------------------------------------- data


def test_read_examples_round_trip_and_errors(tmp_path):
    exs = synth.generate(5, seed=0, split="test")
    p = tmp_path / "t.jsonl"
    synth.write_jsonl(exs, p)
    back = read_examples(p)
    for a, b in zip(exs, back, strict=True):
        assert a.doc.to_dict() == b.doc.to_dict() and a.spans == b.spans
        assert a.obfuscated == b.obfuscated and a.forms == b.forms and a.hard_negatives == b.hard_negatives
    assert len(read_examples(p, limit=2)) == 2
    lines = p.read_text().splitlines()
    rec = json.loads(lines[1])
    cases = [
        ({k: v for k, v in rec.items() if k != "spans"}, "t.jsonl:2: spans: missing"),
        ({**rec, "spans": [{"field": "body", "start": 0, "end": 10**6, "label": "PAN"}]},
         "t.jsonl:2: spans.0: end 1000000 is past the end of body"),
        ({**rec, "spans": [{"field": "body", "start": 0, "end": 1, "label": "IBAN"}]},
         "t.jsonl:2: spans.0: unknown label 'IBAN'"),
        ({**rec, "spans": [{"field": "links.99", "start": 0, "end": 1, "label": "PAN"}]},
         "t.jsonl:2: spans.0: links.99: no such field"),
        ({**rec, "role": "ceo"}, "t.jsonl:2: role"),
    ]  # fmt: skip
    for bad, msg in cases:
        p.write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(EvalDataError, match=msg):
            read_examples(p)
    with pytest.raises(EvalDataError, match="nope.jsonl: file not found"):
        read_examples(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------------------- probes on a tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    train = synth.generate(120, seed=0, split="train")
    tok = DLPTokenizer.train([serialize(e.doc).text for e in train], vocab_size=600, seed=0)
    torch.manual_seed(0)
    model = DLPModel(get_dlp_config("dlp-tiny", vocab_size=tok.vocab_size))
    d = tmp_path_factory.mktemp("run")
    save_dlp(model, d)
    tok.save(d / "tokenizer.json")
    test = tmp_path_factory.mktemp("data") / "test.jsonl"
    synth.write_jsonl(synth.generate(10, seed=1, split="test"), test)
    return d, test, tok


def test_neutral_prose_and_shift(tiny):
    _, _, tok = tiny
    prose = neutral_prose(tok, 200, seed=0)
    assert len(tok.encode(prose).ids) >= 200
    assert all(s in NEUTRAL for s in re.split(r"(?<=\.) ", prose))
    low = prose.lower()
    assert not any(t.lower() in low.split() or f" {t.lower()} " in f" {low} " for t in NDA_TERMS)
    assert not any(ch.isdigit() or ch == "@" for ch in prose)
    ex = synth.generate(3, seed=2, split="test")[2]
    for before in (True, False):
        doc, gold = _shifted(ex, prose, before)
        assert [doc.span_text(s) for s in gold] == [ex.doc.span_text(s) for s in ex.spans]
        assert (prose in doc.body) and ex.doc.body in doc.body and ex.doc.body != doc.body


def test_gates_forced_off(tiny):
    run, _, _ = tiny
    scanner = Scanner.load(run)
    ids = torch.randint(0, 600, (1, 40))
    on = scanner.model(ids).bio_logits
    with gates_forced_off(scanner.model) as m:
        assert m.config.gates is False
        off = scanner.model(ids).bio_logits
    assert scanner.model.config.gates is True and not torch.allclose(on, off)
    assert torch.allclose(on, scanner.model(ids).bio_logits)


def test_evaluate_model_structure(tiny):
    run, test, _ = tiny
    scanner = Scanner.load(run)
    examples = read_examples(test)
    seen = []
    r = evaluate_model(scanner, examples, probe_n=4, progress=lambda *a: seen.append(a))
    assert {"spans", "spans_without_validators", "vetoes", "obfuscation", "hard_negatives", "heads",
            "decisions", "stability", "gate_ablation", "scanner", "seconds"} <= set(r)  # fmt: skip
    assert r["n_docs"] == 10 and sum(map(sum, r["decisions"]["matrix"])) == 10
    assert set(r["heads"]) == set(DOC_HEADS)
    st = r["stability"]
    assert st["n_docs"] == 4 and st["filler_tokens"] >= 200
    for k in ("prefix", "suffix"):
        assert 0 <= st[k]["flip_rate"] <= 1 and 0 <= st[k]["decision_accuracy"] <= 1
    g = r["gate_ablation"]
    assert set(g["on"]) == set(g["off"]) and 0 < g["mean_gate"] < 1
    assert {s for s, _, _ in seen} == {"scan", "shifts", "gates off"}
    assert scanner.model.config.gates is True  # the ablation restored the model
    json.dumps(jsonable(r), allow_nan=False)


def test_cli_eval(tiny, tmp_path):
    run, test, _ = tiny
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["dlp", "eval", "--model", str(run), "--data", str(test), "--json", str(out),
                            "--probe-n", "2", "--limit", "6"])  # fmt: skip
    assert r.exit_code == 0, r.output
    for title in ("Span P / R / F1", "per form", "hard negatives", "Document heads", "Decisions",
                  "Stability", "Gate ablation"):  # fmt: skip
        assert title in r.output
    rep = json.loads(out.read_text())
    assert rep["n_docs"] == 6 and rep["stability"]["n_docs"] == 2 and rep["model"] == str(run)

    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"channel": "chat", "role": "hr", "body": "x"}\n')
    r = runner.invoke(app, ["dlp", "eval", "--model", str(run), "--data", str(bare)])
    assert r.exit_code == 1 and "bare.jsonl:1: spans: missing" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["dlp", "eval", "--model", str(tmp_path), "--data", str(test)])
    assert r.exit_code == 1 and "model.safetensors: file not found" in r.output


# ----------------------------------------------------------------------------- the baselines benchmark


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "dlp_vs_baselines.py"
    spec = importlib.util.spec_from_file_location("dlp_vs_baselines", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_skips_without_baselines(monkeypatch, capsys):
    import sys

    bench = _bench()
    for name in ("presidio_analyzer", "detect_secrets"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    assert bench.main(["--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "skipping Presidio" in out and "skipping detect-secrets" in out and "nothing to compare" in out


def test_benchmark_tidy_merges_and_unquotes():
    bench = _bench()
    doc = Document(channel="chat", role="hr", body='key = "abcdef123456" and more')
    a = doc.body.index('"')
    spans = [Span("body", a, a + 14, "SECRET_KEY"), Span("body", a + 1, a + 13, "SECRET_KEY"),
             Span("body", a + 3, a + 20, "SECRET_KEY"), Span("body", 0, 3, "PAN")]  # fmt: skip
    assert bench.tidy(doc, spans) == [Span("body", 0, 3, "PAN"), Span("body", a + 1, a + 20, "SECRET_KEY")]


def test_benchmark_maps_detect_secrets_findings():
    pytest.importorskip("detect_secrets")
    bench = _bench()
    env = ("DATABASE_URL=postgresql://bob:Xq9vLr2mPzK@db.internal:5432/app.\n"
           "GITHUB_TOKEN=ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5\n")  # fmt: skip
    doc = Document(channel="pr", role="engineering", attachments=[], body="")
    from chinwag.dlp.dsl import Attachment

    doc.attachments.append(Attachment(".env", "text/plain", env))
    ds = bench.DetectSecrets()
    try:
        got = {(doc.span_text(s), s.label) for s in ds.spans(doc)}
    finally:
        ds.close()
    assert ("postgresql://bob:Xq9vLr2mPzK@db.internal:5432/app", "DB_URI") in got  # no trailing "."
    assert ("ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5", "SECRET_KEY") in got
