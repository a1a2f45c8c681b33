"""The synthetic DLP corpus: determinism, gold spans by construction, coverage, hard negatives, splits,
realistic lengths and prose, and the difficulty knob."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from chinwag.dlp import synth
from chinwag.dlp.dsl import Document, is_content_field, serialize
from chinwag.dlp.labels import (
    LABELS,
    MATTER_ID_RE,
    is_doc_email,
    is_placeholder_secret,
    is_public_test_card,
    luhn_ok,
    ssn_ok,
)
from chinwag.dlp.policy import DECISIONS, document_labels


@pytest.fixture(scope="module")
def corpus():
    return synth.generate(500, seed=1, split="train")


def _plain(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def test_same_seed_same_output_and_prefix_stable():
    a = [synth.example_record(e) for e in synth.generate(200, seed=7, split="val")]
    b = [synth.example_record(e) for e in synth.generate(200, seed=7, split="val")]
    assert a == b
    assert [synth.example_record(e) for e in synth.generate(50, seed=7, split="val")] == a[:50]
    c = [synth.example_record(e) for e in synth.generate(200, seed=8, split="val")]
    assert a != c


def test_every_span_matches_its_field(corpus):
    for ex in corpus:
        for sp in ex.spans:
            text = ex.doc.span_text(sp)
            assert text and sp.end <= len(ex.doc.field_text(sp.field))
        assert ex.obfuscated <= set(ex.spans)
        assert set(ex.forms) == ex.obfuscated


def test_coverage_of_labels_forms_and_negative_kinds(corpus):
    labels = Counter(sp.label for ex in corpus for sp in ex.spans)
    forms = Counter(f for ex in corpus for f in ex.forms.values())
    kinds = Counter(k for ex in corpus for *_, k in ex.hard_negatives)
    assert set(labels) == set(LABELS)
    assert set(forms) == set(synth.FORMS)
    assert set(kinds) == set(synth.NEG_KINDS)
    channels = Counter(ex.doc.channel for ex in corpus)
    assert set(channels) == {"email", "chat", "pr", "upload"}


def test_plain_values_are_valid(corpus):
    n_pan = n_ssn = 0
    for ex in corpus:
        for sp in ex.spans:
            if sp in ex.obfuscated:
                continue
            text = ex.doc.span_text(sp)
            if sp.label == "PAN":
                n_pan += 1
                assert luhn_ok(text) and not is_public_test_card(text), text
            elif sp.label == "SSN":
                n_ssn += 1
                assert ssn_ok(text), text
            elif sp.label == "MATTER_ID":
                assert MATTER_ID_RE.fullmatch(text)
            elif sp.label == "EMAIL":
                assert "@" in text and not is_doc_email(text), text
            elif sp.label == "DB_URI":
                m = re.match(r"\w+://[^:/@]*:([^@]+)@", text)
                assert m and not is_placeholder_secret(m.group(1)), text
            elif sp.label == "SECRET_KEY":
                assert not is_placeholder_secret(text), text
    assert n_pan > 10 and n_ssn > 10


def test_obfuscated_spaced_digits_still_luhn_and_ssn(corpus):
    for ex in corpus:
        for sp, form in ex.forms.items():
            if form == "spaced_digits" and sp.label == "PAN":
                assert luhn_ok(_plain(ex.doc.span_text(sp)))
            if form == "spaced_digits" and sp.label == "SSN":
                d = _plain(ex.doc.span_text(sp))
                assert ssn_ok(f"{d[:3]}-{d[3:5]}-{d[5:]}")


def test_hard_negatives_are_outside_spans_and_not_sensitive(corpus):
    checked = Counter()
    for ex in corpus:
        for field, start, end, kind in ex.hard_negatives:
            text = ex.doc.field_text(field)[start:end]
            assert text
            for sp in ex.spans:  # no overlap with any gold span
                assert sp.field != field or end <= sp.start or sp.end <= start
            assert not ssn_ok(text), (kind, text)
            # A digit string that passes Luhn reads as a card unless it is a test card or an ISBN-13
            # (978/979 is the book prefix, never a card issuer's).
            if kind not in ("test_card", "isbn") and re.fullmatch(r"[\d \-]+", text):
                assert not luhn_ok(text), (kind, text)
            if kind == "test_card":
                assert is_public_test_card(text)
            elif kind == "doc_email":
                assert is_doc_email(text)
            elif kind in ("aws_doc_key", "placeholder"):
                assert is_placeholder_secret(text)
            elif kind == "uri_placeholder_password":
                pw = re.match(r"\w+://[^:/@]*:([^@]+)@", text).group(1)
                assert is_placeholder_secret(pw), text
            elif kind == "uri_no_password":
                assert not re.match(r"\w+://[^/@]*:[^/@]*@", text), text
            elif kind == "isbn":
                assert _plain(text)[:3] in ("978", "979") or len(_plain(text)) < 12
            elif kind == "masked_card":
                assert len(_plain(text)) == 4
            checked[kind] += 1
    assert len(checked) == len(synth.NEG_KINDS)


def test_split_templates_are_disjoint_and_used():
    sets = {s: set(synth.SPLIT_TEMPLATES[s]) for s in synth.SPLITS}
    assert (
        not sets["train"] & sets["val"]
        and not sets["train"] & sets["test"]
        and not sets["val"] & sets["test"]
    )
    for split in synth.SPLITS:
        exs = synth.generate(150, seed=0, split=split)
        assert {e.template for e in exs} == sets[split]
        assert {e.doc.channel for e in exs} == {"email", "chat", "pr", "upload"}
    train_docs = {serialize(e.doc).text for e in synth.generate(50, seed=0, split="train")}
    assert not train_docs & {serialize(e.doc).text for e in synth.generate(50, seed=0, split="test")}


def test_policy_covers_every_decision_and_head(corpus):
    labs = [document_labels(ex.doc, ex.spans, ex.obfuscated) for ex in corpus]
    assert Counter(lab.decision for lab in labs).keys() == set(DECISIONS)
    assert {lab.level for lab in labs} == {0, 1, 2}
    for attr in ("exposure", "context_consistent", "obfuscation"):
        assert {getattr(lab, attr) for lab in labs} == {True, False}, attr


def test_write_jsonl_roundtrip(tmp_path):
    exs = synth.generate(20, seed=3, split="test")
    path = tmp_path / "d.jsonl"
    synth.write_jsonl(exs, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20 and not list(tmp_path.glob(".*.tmp"))
    for ex, line in zip(exs, lines, strict=True):
        rec = json.loads(line)
        doc = Document.from_dict({k: rec[k] for k in Document.__dataclass_fields__ if k in rec})
        assert doc == ex.doc and rec["id"] == ex.doc.id
        for s in rec["spans"]:
            assert s["obfuscated"] == (s["form"] is not None)
            assert doc.field_text(s["field"])[s["start"] : s["end"]]
        assert rec["labels"]["decision"] in DECISIONS


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        synth.generate(1, split="dev")


def test_corpus_does_not_depend_on_the_clock():
    """Faker's dates default to an upper bound of "now"; the generator pins it, so reruns match exactly."""
    a = [e.doc.to_dict() for e in synth.generate(300, 0, "train")]
    b = [e.doc.to_dict() for e in synth.generate(300, 0, "train")]
    assert a == b


# ----------------------------------------------------------------------------- realism


def _content_chars(ex) -> int:
    return sum(len(ex.doc.field_text(path)) for path, _ in ex.doc.fields() if is_content_field(path))


def test_lengths_are_realistic(corpus):
    """Mixed documents: 200 B to ~4 KB serialized, most of them 1-2.5 KB."""
    sizes = sorted(len(serialize(ex.doc).text.encode("utf-8")) for ex in corpus)
    assert 200 <= sizes[0] and sizes[-1] <= 4500
    middle = sum(1000 <= b <= 2500 for b in sizes) / len(sizes)
    assert middle >= 0.7, middle
    assert sum(b < 1000 for b in sizes) >= 10 and sum(b > 2500 for b in sizes) >= 10  # both tails exist


def test_sensitive_values_are_a_minority_of_the_text(corpus):
    value_chars = sum(sp.end - sp.start for ex in corpus for sp in ex.spans if is_content_field(sp.field))
    share = value_chars / sum(_content_chars(ex) for ex in corpus)
    assert 0.01 < share < 0.15, share  # measured 0.04: most of a document is ordinary prose, code or rows


_EMAIL_RE = re.compile(r"\w[\w.+-]*@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")


def _covered(ex, field: str) -> list[tuple[int, int]]:
    return [(s.start, s.end) for s in ex.spans if s.field == field] + [
        (a, b) for f, a, b, _ in ex.hard_negatives if f == field
    ]


def test_filler_is_harmless(corpus):
    """The filler convention: outside gold spans and hard negatives there is no email address and no long
    digit run (card, SSN or phone shaped), so an unlabelled token really is "O"."""
    for ex in corpus:
        for path, text in ex.doc.fields():
            if not is_content_field(path):
                continue
            cov = _covered(ex, path)
            for m in [*_EMAIL_RE.finditer(text), *re.finditer(r"\d{9,}", text)]:
                assert any(a <= m.start() and m.end() <= b for a, b in cov), (ex.template, m.group())


def test_templates_have_their_structure():
    """A few layouts, checked on the text itself: quoted reply history, diff hunks, CSV rows, chat stamps."""
    seen = {}
    for split in synth.SPLITS:
        for ex in synth.generate(120, seed=2, split=split):
            seen.setdefault(ex.template, ex)
    assert set(seen) == set(synth.TEMPLATES)
    assert "wrote:\n\n> " in seen["email_reply_chain"].doc.body
    diff = seen["pr_py_diff"].doc.attachments[0].text
    assert diff.startswith("diff --git a/") and "\n@@ -" in diff
    csv = seen["upload_csv"].doc.attachments[0].text.splitlines()
    assert len(csv) > 5 and len({line.count(",") >= csv[0].count(",") for line in csv}) == 1
    assert re.match(r"\[\d\d:\d\d\] \w+: ", seen["chat_transcript"].doc.body)
    for ex in seen.values():  # every template writes more than a line or two
        assert _content_chars(ex) > 80, ex.template


def test_reply_chain_correspondent_is_first_party():
    """The quoted "Name <address> wrote:" names a recipient, so it is labelled without making the document
    sensitive on its own (policy.is_third_party)."""
    from chinwag.dlp.policy import is_third_party

    n = 0
    for ex in synth.generate(200, seed=0, split="train"):
        if ex.template != "email_reply_chain":
            continue
        n += 1
        quoted = [sp for sp in ex.spans if sp.field == "body" and ex.doc.body[sp.end : sp.end + 1] in " >"]
        header = [sp for sp in quoted if ex.doc.body[sp.end :].startswith(("> wrote:", " <"))]
        assert {sp.label for sp in header} == {"NAME", "EMAIL"}
        assert not any(is_third_party(ex.doc, sp) for sp in header)
    assert n > 5


# ----------------------------------------------------------------------------- difficulty


def _stats(exs) -> dict:
    return {
        "obfuscated": sum(len(e.obfuscated) for e in exs),
        "negatives": sum(len(e.hard_negatives) for e in exs),
        "bytes": sum(len(serialize(e.doc).text.encode("utf-8")) for e in exs) / len(exs),
        "max_bytes": max(len(serialize(e.doc).text.encode("utf-8")) for e in exs),
    }


def test_difficulty_knob_changes_what_it_says():
    easy = _stats(synth.generate(200, seed=0, split="train", difficulty="easy"))
    mixed = _stats(synth.generate(200, seed=0, split="train", difficulty="mixed"))
    hard = _stats(synth.generate(200, seed=0, split="train", difficulty="hard"))
    # measured, 200 docs each: obfuscated 8 / 65 / 288, negatives 130 / 351 / 964, bytes 980 / 1,790 / 2,650
    assert easy["obfuscated"] * 4 < mixed["obfuscated"] < hard["obfuscated"] / 2
    assert easy["negatives"] * 2 < mixed["negatives"] < hard["negatives"] / 2
    assert easy["bytes"] < mixed["bytes"] < hard["bytes"]
    assert easy["max_bytes"] < 2500 and 3500 < hard["max_bytes"] <= 4500


def test_difficulty_is_deterministic_and_mixed_is_the_default():
    for diff in synth.DIFFICULTIES:
        a = [synth.example_record(e) for e in synth.generate(30, seed=5, split="val", difficulty=diff)]
        b = [synth.example_record(e) for e in synth.generate(30, seed=5, split="val", difficulty=diff)]
        assert a == b
    default = [synth.example_record(e) for e in synth.generate(30, seed=5, split="val")]
    assert default == [
        synth.example_record(e) for e in synth.generate(30, seed=5, split="val", difficulty="mixed")
    ]
    hard = synth.generate(30, seed=5, split="val", difficulty="hard")
    assert default[0]["id"] == "val-5-000000" and hard[0].doc.id == "val-hard-5-000000"
    assert {e.template for e in hard} <= set(synth.SPLIT_TEMPLATES["val"])  # the split's templates, still
    ex = synth._example(5, "val", 7, "hard")
    assert synth.example_record(ex)["body"] == synth.example_record(hard[7])["body"]


def test_every_difficulty_keeps_gold_spans_exact():
    for diff in ("easy", "hard"):
        for ex in synth.generate(80, seed=9, split="test", difficulty=diff):
            for sp in ex.spans:
                assert ex.doc.span_text(sp) and sp.end <= len(ex.doc.field_text(sp.field))
            assert ex.obfuscated <= set(ex.spans)


def test_bad_difficulty_is_rejected():
    with pytest.raises(ValueError, match="difficulty"):
        synth.generate(1, difficulty="medium")
    with pytest.raises(ValueError, match="difficulty"):
        synth._example(0, "train", 0, "medium")
