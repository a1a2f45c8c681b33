"""The document labelling policy (issue 8, "Document heads") and the exact validators / negative lists."""

from __future__ import annotations

import pytest

from chinwag.dlp.dsl import Document
from chinwag.dlp.labels import (
    BIO_TAGS,
    LABELS,
    Span,
    is_doc_email,
    is_placeholder_secret,
    is_public_test_card,
    luhn_ok,
    ssn_ok,
)
from chinwag.dlp.policy import document_labels, self_forward


def doc_with(
    body: str, role="engineering", recipients=("lee@corp.com",), metadata=None, links=(), sender=None
):
    return Document(
        channel="email",
        role=role,
        sender=sender or "Dana Wu <dana.wu@corp.com>",
        recipients=list(recipients),
        body=body,
        links=list(links),
        metadata=dict(metadata or {}),
        org_domains=["corp.com"],
    )


def span_of(doc: Document, value: str, label: str, field: str = "body") -> Span:
    text = doc.field_text(field)
    i = text.index(value)
    return Span(field, i, i + len(value), label)


def test_label_set():
    assert len(BIO_TAGS) == 21 and BIO_TAGS[0] == "O" and BIO_TAGS[1:3] == ["B-EMAIL", "I-EMAIL"]
    assert set(LABELS) == {t[2:] for t in BIO_TAGS[1:]}
    with pytest.raises(ValueError):
        Span("body", 0, 1, "IBAN")
    with pytest.raises(ValueError):
        Span("body", 3, 1, "PAN")
    assert Span.from_dict(Span("body", 1, 2, "PAN").to_dict()) == Span("body", 1, 2, "PAN")


@pytest.mark.parametrize("label", ["PAN", "SSN", "SECRET_KEY", "DB_URI"])
def test_level2_types_internal_engineering(label):
    d = doc_with("value XYZ here")
    lab = document_labels(d, [span_of(d, "XYZ", label)])
    assert lab.level == 2 and lab.sensitivity and not lab.exposure and not lab.obfuscation
    # engineering may hold secrets/URIs internally; PAN/SSN are unexpected for the role
    assert lab.context_consistent == (label in ("SECRET_KEY", "DB_URI"))
    assert lab.decision == "ALLOW_WITH_WARNING"  # level 2 alone warns
    assert lab.rationale[0] == f"level 2: {label} detected"


def test_spans_outside_content_fields_do_not_count():
    d = doc_with("hello", recipients=["bob@vendor.io"])
    lab = document_labels(d, [Span("recipients.0", 0, 13, "EMAIL"), Span("sender", 0, 4, "SSN")])
    assert lab.level == 0 and not lab.exposure and lab.decision == "ALLOW"
    assert lab.rationale == ["no sensitive content"]


@pytest.mark.parametrize(
    "label, value", [("MATTER_ID", "MTR-2024-00017"), ("NDA_TERM", "attorney work product")]
)
def test_level1_legal(label, value):
    d = doc_with(f"Re {value} draft", role="legal")
    lab = document_labels(d, [span_of(d, value, label)])
    assert (lab.level, lab.context_consistent, lab.decision) == (1, True, "ALLOW")
    assert lab.rationale == [f"level 1: legal-privileged content ({label})"]


def test_level1_needs_two_distinct_third_party_pii_types():
    d = doc_with("Call Zoe Park on 555-201-3344, or Lee at 555-201-0000.", role="support")
    name, phone = span_of(d, "Zoe Park", "NAME"), span_of(d, "555-201-3344", "PHONE")
    phone2 = span_of(d, "555-201-0000", "PHONE")
    assert document_labels(d, [phone, phone2]).level == 0  # one type, twice
    lab = document_labels(d, [name, phone])
    assert lab.level == 1 and lab.rationale == ["level 1: PII detected (third-party NAME, PHONE)"]
    assert lab.decision == "ALLOW"  # support handles names/phones, internal recipient


def test_first_party_pii_is_not_third_party():
    d = doc_with("Thanks, Dana Wu / dana.wu@corp.com", role="sales")
    spans = [span_of(d, "Dana Wu", "NAME"), span_of(d, "dana.wu@corp.com", "EMAIL")]
    assert document_labels(d, spans).level == 0  # the sender's own signature


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"recipients": ["lee@corp.com", "x@gmail.com"]}, "external recipient x@gmail.com"),
        ({"metadata": {"destination": "public"}}, "public destination"),
        ({"metadata": {"repo_visibility": "public"}}, "public repository"),
        ({"links": ["https://pastebin.com/raw/A1"]}, "paste-site link https://pastebin.com/raw/A1"),
        ({"links": ["https://gist.github.com/u/1"]}, "paste-site link https://gist.github.com/u/1"),
    ],
)
def test_exposure_each_reason(kw, reason):
    d = doc_with("key AKIAQYLPMN5HFIQR7XYZ", **kw)
    lab = document_labels(d, [span_of(d, "AKIAQYLPMN5HFIQR7XYZ", "SECRET_KEY")])
    assert lab.exposure and lab.decision == "BLOCK"  # level 2 + exposure
    assert f"secret exposed: {reason}" in lab.rationale
    assert not lab.context_consistent  # engineering secrets only to internal destinations
    assert "unexpected for role engineering: SECRET_KEY" in lab.rationale


def test_exposure_needs_sensitivity_and_subdomains_are_internal():
    d = doc_with("nothing here", recipients=["x@gmail.com"], links=["https://pastebin.com/x"])
    assert not document_labels(d, []).exposure
    d = doc_with("MTR-2024-00017", role="legal", recipients=["a@eu.corp.com"])
    assert not document_labels(d, [span_of(d, "MTR-2024-00017", "MATTER_ID")]).exposure


def test_level1_with_exposure_warns():
    d = doc_with("NDA attached", role="legal", recipients=["ext@partner.com"])
    lab = document_labels(d, [span_of(d, "NDA", "NDA_TERM")])
    assert (lab.level, lab.exposure, lab.decision) == (1, True, "ALLOW_WITH_WARNING")
    assert "sensitive data exposed: external recipient ext@partner.com" in lab.rationale


@pytest.mark.parametrize(
    "role, label, consistent",
    [
        ("hr", "SSN", True), ("hr", "PAN", False), ("finance", "PAN", True), ("finance", "SSN", False),
        ("legal", "MATTER_ID", True), ("legal", "SSN", False), ("support", "ADDRESS", True),
        ("support", "DB_URI", False), ("sales", "NAME", True), ("sales", "ADDRESS", False),
        ("engineering", "DB_URI", True), ("engineering", "NDA_TERM", False), ("finance", "MATTER_ID", False),
    ],
)  # fmt: skip
def test_context_per_role(role, label, consistent):
    d = doc_with("Zoe Park, 1 Main St 90210, 555-201-3344, value V1", role=role)
    spans = [span_of(d, "V1", label)]
    if label in ("NAME", "ADDRESS"):  # two third-party PII types make it sensitive
        other = span_of(d, "555-201-3344", "PHONE") if label == "NAME" else span_of(d, "Zoe Park", "NAME")
        spans = [span_of(d, "Zoe Park" if label == "NAME" else "1 Main St 90210", label), other]
    lab = document_labels(d, spans)
    assert lab.sensitivity and lab.context_consistent == consistent
    if not consistent:
        assert lab.decision == "ALLOW_WITH_WARNING"
        assert f"unexpected for role {role}: {label}" in lab.rationale
    assert lab.heads()["context"] == float(consistent)


def test_context_is_consistent_when_not_sensitive():
    d = doc_with("just a name: Zoe Park", role="engineering")
    lab = document_labels(d, [span_of(d, "Zoe Park", "NAME")])
    assert lab.level == 0 and lab.context_consistent and lab.decision == "ALLOW"


def test_self_forward_to_personal_webmail():
    d = doc_with("SSN 123-45-6789", role="hr", recipients=["danawu88@gmail.com"])
    assert self_forward(d)
    lab = document_labels(d, [span_of(d, "123-45-6789", "SSN")])
    assert not lab.context_consistent and "self-forward to personal webmail" in lab.rationale
    assert lab.decision == "BLOCK"  # level 2 to an external (webmail) recipient
    assert self_forward(doc_with("x", recipients=["wu.dana@yahoo.com"]))
    assert not self_forward(doc_with("x", recipients=["zoe.park@gmail.com"]))
    assert not self_forward(doc_with("x", recipients=["dana.wu@partner.com"]))  # not webmail
    assert self_forward(doc_with("x", recipients=["a@b.com"], metadata={"self_forward": True}))
    assert not self_forward(doc_with("x", recipients=["danawu@gmail.com"], metadata={"self_forward": False}))


def test_obfuscation_blocks_at_level1_only():
    d = doc_with("mail zoe at park dot io, Zoe Park", role="support")
    email, name = span_of(d, "zoe at park dot io", "EMAIL"), span_of(d, "Zoe Park", "NAME")
    lab = document_labels(d, [email, name], obfuscated={email})
    assert lab.obfuscation and lab.level == 1 and lab.decision == "BLOCK"
    assert "obfuscated value: EMAIL" in lab.rationale
    lone = document_labels(d, [email], obfuscated=[email])  # level 0: flagged, but allowed
    assert lone.obfuscation and lone.level == 0 and lone.decision == "ALLOW"
    assert not document_labels(d, [email, name]).obfuscation


def test_decision_branches_and_heads():
    d = doc_with("Zoe Park 555-201-3344 MTR-2024-00017", role="legal")
    pii = [span_of(d, "Zoe Park", "NAME"), span_of(d, "555-201-3344", "PHONE")]
    lab = document_labels(d, pii)  # level 1, legal: PHONE unexpected -> warn
    assert lab.decision == "ALLOW_WITH_WARNING" and not lab.context_consistent
    lab = document_labels(d, [span_of(d, "MTR-2024-00017", "MATTER_ID")])
    assert lab.decision == "ALLOW" and lab.heads() == {
        "sensitivity": 1.0,
        "exposure": 0.0,
        "context": 1.0,
        "obfuscation": 0.0,
    }
    assert lab.to_dict()["decision"] == "ALLOW" and lab.to_dict()["level"] == 1


def test_luhn():
    assert luhn_ok("4539 1488 0343 6467") and luhn_ok("378282246310005") and luhn_ok("4111-1111-1111-1111")
    assert not luhn_ok("4539 1488 0343 6468") and not luhn_ok("1234") and not luhn_ok("0" * 20)


@pytest.mark.parametrize(
    "s, ok",
    [
        ("123-45-6789", True), ("123 45 6789", True), ("123456789", True), ("000-12-3456", False),
        ("666-12-3456", False), ("912-34-5678", False), ("123-00-4567", False), ("123-45-0000", False),
        ("123-45 6789", False), ("12-345-6789", False), ("123-45-678", False),
    ],
)  # fmt: skip
def test_ssn(s, ok):
    assert ssn_ok(s) is ok


def test_not_sensitive_helpers():
    assert is_public_test_card("4111 1111 1111 1111") and is_public_test_card("4242-4242-4242-4242")
    assert not is_public_test_card("4539 1488 0343 6467")
    for e in ("user@example.com", "a@mail.example.org", "x@corp.test", "y@host.invalid", "<z@example.net>"):
        assert is_doc_email(e), e
    for e in ("dana@gmail.com", "a@example.co", "a@notexample.com", "no-at-sign.example.com"):
        assert not is_doc_email(e), e
    for v in ("AKIAIOSFODNN7EXAMPLE", "<API_KEY>", "${TOKEN}", "{{ secret }}", "$TOKEN", "%PASS%", "changeme",
              "'********'", "xxxxxxxx", "your_api_key", ""):  # fmt: skip
        assert is_placeholder_secret(v), v
    for v in ("AKIAQYLPMN5HFIQR7XYZ", "ghp_8f3kQ9zLmN2pR7sT1vW4xY6bC0dE5gH3jK9m", "Qm7#vT2p!xLw9"):
        assert not is_placeholder_secret(v), v
