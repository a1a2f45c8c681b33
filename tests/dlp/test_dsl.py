"""The DLP document DSL: schema round trip and errors, .eml and diff parsing, serialize offset maps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chinwag.dlp.dsl import Document, DocumentError, from_raw_text, parse_diff, parse_eml, serialize
from chinwag.dlp.labels import Span

UNICODE_BODY = "Hi 😀 Zoë — 東京都の住所 e\u0301cole 👩‍👩‍👧 card 4000 0566 5566 5556\nbye"


def full_doc() -> Document:
    return Document.from_dict(
        {
            "id": "d1",
            "channel": "email",
            "role": "finance",
            "sender": "Dana Wu <dana.wu@corp.com>",
            "recipients": ["bob@vendor.io", "李雷 <lei@corp.com>"],
            "subject": "Invoice 🧾 for 東京",
            "body": UNICODE_BODY,
            "attachments": [
                {"name": "a.csv", "mime": "text/csv", "text": "name,card\nZoë,5555 5555 5555 4444\n"},
                {"name": "", "mime": "text/plain", "text": ""},
            ],
            "links": ["https://pastebin.com/abc"],
            "metadata": {"destination": "external", "repo_visibility": "private", "ticket": 7},
            "org_domains": ["corp.com"],
        }
    )


def test_round_trip_and_field_paths():
    doc = full_doc()
    d = doc.to_dict()
    assert Document.from_dict(d) == doc
    assert Document.from_dict(d).to_dict() == d
    assert doc.field_text("recipients.1") == "李雷 <lei@corp.com>"
    assert doc.field_text("attachments.0.text").startswith("name,card")
    assert doc.field_text("links.0") == "https://pastebin.com/abc"
    assert doc.field_text("attachments.0.mime") == "text/csv"
    paths = [p for p, _ in doc.fields()]
    assert paths == [
        "sender", "recipients.0", "recipients.1", "subject", "body", "attachments.0.name",
        "attachments.0.text", "attachments.1.name", "attachments.1.text", "links.0",
    ]  # fmt: skip
    for p, text in doc.fields():
        assert doc.field_text(p) == text
    with pytest.raises(DocumentError, match="recipients.5"):
        doc.field_text("recipients.5")
    with pytest.raises(DocumentError, match="bogus"):
        doc.field_text("bogus")


@pytest.mark.parametrize(
    "patch, where",
    [
        ({"channel": "fax"}, "channel"),
        ({"role": "ceo"}, "role"),
        ({"body": 3}, "body"),
        ({"recipients": "x@y.com"}, "recipients"),
        ({"recipients": ["ok@y.com", 5]}, "recipients.1"),
        ({"attachments": [{"name": "a", "mime": "text/plain", "text": None}]}, "attachments.0.text"),
        ({"attachments": [{"name": "a", "size": 3}]}, "attachments.0.size"),
        ({"metadata": {"destination": "mars"}}, "metadata.destination"),
        ({"metadata": {"repo_visibility": "secret"}}, "metadata.repo_visibility"),
        ({"metadata": []}, "metadata"),
        ({"colour": "red"}, "colour"),
        ({"links": [{"u": 1}]}, "links.0"),
    ],
)
def test_from_dict_errors_name_the_field(patch, where):
    d = {"channel": "chat", "role": "hr", "body": "hi"} | patch
    with pytest.raises(DocumentError) as e:
        Document.from_dict(d)
    assert str(e.value).startswith(where + ":")


def test_missing_required():
    with pytest.raises(DocumentError, match="^role: missing"):
        Document.from_dict({"channel": "chat"})
    with pytest.raises(DocumentError, match="expected a JSON object"):
        Document.from_dict(["x"])


def test_minimal_defaults():
    doc = Document.from_dict({"channel": "upload", "role": "support"})
    assert doc.body == "" and doc.recipients == [] and doc.id is None and doc.metadata == {}


EML = (
    b"From: Dana Wu <dana.wu@corp.com>\r\n"
    b"To: bob@vendor.io, Lei <lei@corp.com>\r\n"
    b"Cc: audit@corp.com\r\n"
    b"Subject: =?utf-8?q?Q3_numbers_=E2=9C=93?=\r\n"
    b"Message-ID: <1@corp.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"See https://pastebin.com/raw/xyz. Zo\xc3\xab's SSN is 123-45-6789.\r\n"
    b'--XX\r\nContent-Type: text/csv; name="people.csv"\r\nContent-Disposition: attachment; '
    b'filename="people.csv"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    b"bmFtZSxzc24KWm9lLDEyMy00NS02Nzg5Cg==\r\n"
    b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
    b'filename="blob.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n'
    b"--XX--\r\n"
)


def test_parse_eml_multipart_with_attachments():
    doc = parse_eml(EML, role="hr")
    assert doc.channel == "email" and doc.role == "hr"
    assert doc.sender == "Dana Wu <dana.wu@corp.com>"
    assert doc.recipients == ["bob@vendor.io", "lei@corp.com", "audit@corp.com"]
    assert doc.subject == "Q3 numbers ✓"
    assert "Zoë's SSN is 123-45-6789." in doc.body
    assert doc.links == ["https://pastebin.com/raw/xyz"]
    assert doc.org_domains == ["corp.com"]
    assert doc.metadata["message_id"] == "<1@corp.com>"
    assert [(a.name, a.mime) for a in doc.attachments] == [
        ("people.csv", "text/csv"),
        ("blob.bin", "application/octet-stream"),
    ]
    assert doc.attachments[0].text == "name,ssn\nZoe,123-45-6789\n"
    assert doc.attachments[1].text == ""  # binary: kept by name, no text
    assert parse_eml(EML.decode("utf-8")).subject == doc.subject  # str input works too
    Document.from_dict(doc.to_dict())  # parsed documents satisfy the schema


GIT_DIFF = """From 1234 Mon Sep 17 00:00:00 2001
Subject: [PATCH] add config

diff --git a/app/settings.py b/app/settings.py
index 111..222 100644
--- a/app/settings.py
+++ b/app/settings.py
@@ -1,2 +1,3 @@
 DEBUG = False
+DATABASE_URL = "postgres://svc:Qm7vT2pxLw9@db.corp:5432/app"
diff --git a/.env b/.env
new file mode 100644
--- /dev/null
+++ b/.env
@@ -0,0 +1 @@
+AWS_SECRET_ACCESS_KEY=abc
"""


def test_parse_git_diff():
    doc = parse_diff(GIT_DIFF, repo_visibility="public")
    assert doc.channel == "pr" and doc.role == "engineering"
    assert doc.subject == "add config"
    assert [a.name for a in doc.attachments] == ["app/settings.py", ".env"]
    assert doc.attachments[0].mime == "text/x-python"
    assert doc.attachments[0].text.startswith("diff --git a/app/settings.py")
    assert "AWS_SECRET_ACCESS_KEY" in doc.attachments[1].text
    assert doc.body + "".join(a.text for a in doc.attachments) == GIT_DIFF  # nothing lost, offsets verbatim
    assert doc.metadata == {"destination": "public", "repo_visibility": "public"}


def test_parse_plain_unified_diff():
    text = "--- a/x.yaml\n+++ b/x.yaml\n@@ -1 +1 @@\n-a: 1\n+a: 2\n"
    text += "--- a/y.json\n+++ b/y.json\n@@ -1 +1 @@\n-{}\n+[]\n"
    doc = parse_diff(text)
    assert [a.name for a in doc.attachments] == ["x.yaml", "y.json"]
    assert doc.body == "" and "".join(a.text for a in doc.attachments) == text
    assert doc.metadata["repo_visibility"] == "private"


def test_from_raw_text():
    doc = from_raw_text("ping me at https://rentry.co/x 😀")
    assert doc.channel == "chat" and doc.body.endswith("😀") and doc.links == ["https://rentry.co/x"]


def test_serialize_layout_and_markers():
    doc = full_doc()
    s = serialize(doc)
    assert s.text.startswith(
        "<|doc channel=email role=finance destination=external repo=private org=corp.com|>\n"
    )
    assert "<|body|>" + UNICODE_BODY + "\n" in s.text
    assert "<|attachments.0.text mime=text/csv|>" in s.text
    assert s.to_field(0) is None  # inside the header marker
    body_start = s.to_text("body", 0)
    assert s.to_field(body_start - 1) is None  # the marker's last character
    assert s.to_field(s.to_text("body", len(UNICODE_BODY))) == ("body", len(UNICODE_BODY))
    with pytest.raises(ValueError):
        s.to_text("body", len(UNICODE_BODY) + 1)
    with pytest.raises(KeyError):
        s.to_text("nope", 0)


def test_offsets_every_field_and_unicode_case():
    doc = full_doc()
    s = serialize(doc)
    for path, text in doc.fields():
        for o in range(len(text) + 1):
            t = s.to_text(path, o)
            assert s.to_field(t) == (path, o)
            assert s.text[t : t + len(text) - o] == text[o:]
    # positions that are not in a field map to None and nothing else does
    covered = {s.to_text(p, o) for p, t in doc.fields() for o in range(len(t) + 1)}
    assert all((s.to_field(i) is None) == (i not in covered) for i in range(len(s.text) + 1))


def test_text_to_spans_splits_at_field_boundaries():
    doc = Document(channel="chat", role="hr", subject="ab😀", body="東京cd")
    s = serialize(doc)
    start, end = s.to_text("subject", 1), s.to_text("body", 3)
    spans = s.text_to_spans(start, end, "ADDRESS")
    assert spans == [Span("subject", 1, 3, "ADDRESS"), Span("body", 0, 3, "ADDRESS")]
    for sp in spans:
        a, b = s.span_to_text(sp)
        assert s.text[a:b] == doc.field_text(sp.field)[sp.start : sp.end]
    assert s.text_to_spans(0, 3, "NAME") == []  # only marker text


# pieces, not single characters: multi-code-point emoji, combining marks, zero-width, marker look-alikes
_text = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(["😀", "👩‍👩‍👧", "東京", "é", "​", "\n", "<|body|>", "|>"]),
    ),
    max_size=8,
).map("".join)


@st.composite
def documents(draw):
    n_att = draw(st.integers(0, 2))
    return Document.from_dict(
        {
            "channel": "upload",
            "role": "legal",
            "sender": draw(_text),
            "recipients": draw(st.lists(_text, max_size=2)),
            "subject": draw(_text),
            "body": draw(_text),
            "attachments": [
                {"name": draw(_text), "mime": "text/plain", "text": draw(_text)} for _ in range(n_att)
            ],
            "links": draw(st.lists(_text, max_size=2)),
        }
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(documents(), st.data())
def test_offset_round_trip_property(doc, data):
    s = serialize(doc)
    for path, text in doc.fields():
        for o in range(len(text) + 1):
            assert s.to_field(s.to_text(path, o)) == (path, o)
        a = data.draw(st.integers(0, len(text)))
        b = data.draw(st.integers(a, len(text)))
        sp = Span(path, a, b, "NAME")
        ta, tb = s.span_to_text(sp)
        assert s.text[ta:tb] == text[a:b]
        assert s.text_to_spans(ta, tb, "NAME") == ([sp] if a < b else [])
