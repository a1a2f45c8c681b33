"""The DLP document DSL: one schema for emails, chats, pull requests and uploads, parsers for raw text,
.eml files and unified diffs, and `serialize`, which lays a document out as one text with typed field
markers and keeps exact code-point offset maps both ways.

Why offset maps rather than re-parsing the serialized text: field values may contain anything (including
text that looks like a marker), so positions are recorded while building the text and never inferred.
"""

from __future__ import annotations

import bisect
import email
import email.policy
import mimetypes
import re
from dataclasses import dataclass, field
from email.utils import getaddresses, parseaddr

from chinwag.dlp.labels import Span

CHANNELS = ("email", "chat", "pr", "upload")
ROLES = ("hr", "finance", "legal", "engineering", "support", "sales")
DESTINATIONS = ("internal", "external", "public")
VISIBILITIES = ("public", "private", "internal")


class DocumentError(ValueError):
    """A document that does not fit the schema; the message names the offending field."""


@dataclass
class Attachment:
    name: str
    mime: str
    text: str


@dataclass
class Document:
    channel: str
    role: str
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    subject: str = ""
    body: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    org_domains: list[str] = field(default_factory=list)
    id: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Document:
        """Validate and build; every error names the field path (e.g. `attachments.1.text`)."""
        if not isinstance(d, dict):
            raise DocumentError(f"document: expected a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise DocumentError(f"{sorted(unknown)[0]}: unknown field")
        for key in ("channel", "role"):
            if key not in d:
                raise DocumentError(f"{key}: missing required field")
        channel, role = _str(d, "channel"), _str(d, "role")
        if channel not in CHANNELS:
            raise DocumentError(f"channel: {channel!r} is not one of {'|'.join(CHANNELS)}")
        if role not in ROLES:
            raise DocumentError(f"role: {role!r} is not one of {'|'.join(ROLES)}")
        atts = _list(d, "attachments", dict)
        attachments = []
        for i, a in enumerate(atts):
            for k in a:
                if k not in ("name", "mime", "text"):
                    raise DocumentError(f"attachments.{i}.{k}: unknown field")
            attachments.append(
                Attachment(*(_str(a, k, f"attachments.{i}.{k}") for k in ("name", "mime", "text")))
            )
        metadata = d.get("metadata", {})
        if not isinstance(metadata, dict):
            raise DocumentError(f"metadata: expected an object, got {type(metadata).__name__}")
        for key, allowed, default in (
            ("destination", DESTINATIONS, "internal"),
            ("repo_visibility", VISIBILITIES, "private"),
        ):
            if metadata.get(key, default) not in allowed:
                raise DocumentError(f"metadata.{key}: {metadata[key]!r} is not one of {'|'.join(allowed)}")
        doc_id = d.get("id")
        if doc_id is not None and not isinstance(doc_id, str | int):
            raise DocumentError(f"id: expected a string, got {type(doc_id).__name__}")
        return cls(
            channel=channel,
            role=role,
            sender=_str(d, "sender"),
            recipients=_list(d, "recipients", str),
            subject=_str(d, "subject"),
            body=_str(d, "body"),
            attachments=attachments,
            links=_list(d, "links", str),
            metadata=dict(metadata),
            org_domains=[x.lower() for x in _list(d, "org_domains", str)],
            id=None if doc_id is None else str(doc_id),
        )

    def to_dict(self) -> dict:
        d = {
            "channel": self.channel,
            "role": self.role,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "subject": self.subject,
            "body": self.body,
            "attachments": [{"name": a.name, "mime": a.mime, "text": a.text} for a in self.attachments],
            "links": list(self.links),
            "metadata": dict(self.metadata),
            "org_domains": list(self.org_domains),
        }
        if self.id is not None:
            d["id"] = self.id
        return d

    def fields(self) -> list[tuple[str, str]]:
        """Every text field the scanner reads, in serialization order, as (path, raw text)."""
        out = [("sender", self.sender)]
        out += [(f"recipients.{i}", r) for i, r in enumerate(self.recipients)]
        out += [("subject", self.subject), ("body", self.body)]
        for i, a in enumerate(self.attachments):
            out += [(f"attachments.{i}.name", a.name), (f"attachments.{i}.text", a.text)]
        out += [(f"links.{i}", u) for i, u in enumerate(self.links)]
        return out

    def field_text(self, path: str) -> str:
        """The raw string at a field path: "body", "recipients.0", "attachments.1.text", "links.0", ..."""
        parts = path.split(".")
        try:
            if parts[0] in ("sender", "subject", "body", "channel", "role") and len(parts) == 1:
                return getattr(self, parts[0])
            if parts[0] in ("recipients", "links") and len(parts) == 2:
                return getattr(self, parts[0])[int(parts[1])]
            if parts[0] == "attachments" and len(parts) == 3 and parts[2] in ("name", "mime", "text"):
                return getattr(self.attachments[int(parts[1])], parts[2])
        except (ValueError, IndexError):
            raise DocumentError(f"{path}: no such field in this document") from None
        raise DocumentError(f"{path}: not a field path (try body, subject, recipients.0, attachments.1.text)")

    def span_text(self, span: Span) -> str:
        return self.field_text(span.field)[span.start : span.end]


def is_content_field(path: str) -> bool:
    """Content = what the user wrote or shared (subject, body, attachments, links), not the addressing."""
    return path.split(".")[0] in ("subject", "body", "attachments", "links")


def _str(d: dict, key: str, path: str | None = None) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise DocumentError(f"{path or key}: expected a string, got {type(v).__name__}")
    return v


def _list(d: dict, key: str, item_type: type) -> list:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise DocumentError(f"{key}: expected a list, got {type(v).__name__}")
    for i, x in enumerate(v):
        if not isinstance(x, item_type):
            want = "a string" if item_type is str else "an object"
            raise DocumentError(f"{key}.{i}: expected {want}, got {type(x).__name__}")
    return list(v)


# --- parsers ------------------------------------------------------------------------------------------------

_URL_RE = re.compile(r"https?://[^\s<>\"'()\[\]]+")


def _urls(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for m in _URL_RE.finditer(text):
        seen.setdefault(m.group(0).rstrip(".,;:!?"), None)
    return list(seen)


def _domain(addr: str) -> str:
    return parseaddr(addr)[1].rsplit("@", 1)[-1].lower() if "@" in addr else ""


def from_raw_text(text: str, channel: str = "chat", role: str = "support", **kw) -> Document:
    """Plain text becomes a document whose body is the text verbatim (offsets stay those of the input)."""
    return Document(channel=channel, role=role, body=text, links=_urls(text), **kw)


def parse_eml(data: bytes | str, role: str = "support", org_domains: list[str] | None = None) -> Document:
    """An RFC 822 message (stdlib `email`): From -> sender, To+Cc+Bcc -> recipients, the first text/plain
    part -> body (text/html only if there is none), attachments with text content -> attachments (binary
    ones keep name and mime with empty text), URLs in the body -> links. `org_domains` defaults to the
    sender's domain: we assume a gateway scans mail its own organisation sends."""
    msg = (
        email.message_from_bytes(data, policy=email.policy.default)
        if isinstance(data, bytes)
        else email.message_from_string(data, policy=email.policy.default)
    )
    sender = str(msg.get("From", ""))
    recipients = [
        a for _, a in getaddresses([str(v) for k in ("To", "Cc", "Bcc") for v in msg.get_all(k, [])]) if a
    ]
    body_part = msg.get_body(preferencelist=("plain", "html"))
    body = body_part.get_content() if body_part is not None else ""
    attachments = []
    for part in msg.iter_attachments() if msg.is_multipart() else []:
        mime = part.get_content_type()
        try:
            content = part.get_content()
        except (LookupError, ValueError):
            content = b""
        text = content if isinstance(content, str) else ""
        attachments.append(Attachment(name=part.get_filename() or "", mime=mime, text=text))
    meta = {k.lower().replace("-", "_"): str(msg[k]) for k in ("Message-ID", "Date") if msg[k]}
    dom = _domain(sender)
    return Document(
        channel="email",
        role=role,
        sender=sender,
        recipients=recipients,
        subject=str(msg.get("Subject", "")),
        body=body,
        attachments=attachments,
        links=_urls(body),
        metadata=meta,
        org_domains=list(org_domains) if org_domains is not None else ([dom] if dom else []),
    )


_GIT_FILE_RE = re.compile(r"^diff --git a/\S+ b/(\S+)", re.M)
_PLAIN_FILE_RE = re.compile(r"^--- .*\n\+\+\+ (?:b/)?(\S+)", re.M)


def parse_diff(text: str, role: str = "engineering", repo_visibility: str = "private") -> Document:
    """A unified diff (plain or `git format-patch`) becomes a "pr" document: the text before the first file
    is the body (a format-patch "Subject:" line also fills subject), and each file's diff chunk, verbatim,
    is one attachment named by its new path. Concatenating body and attachment texts gives back `text`."""
    # git diffs mark each file with "diff --git"; plain `diff -u` output only with its ---/+++ pair
    file_re = _GIT_FILE_RE if _GIT_FILE_RE.search(text) else _PLAIN_FILE_RE
    starts = [(m.start(), m.group(1)) for m in file_re.finditer(text)]
    body = text[: starts[0][0]] if starts else text
    attachments = []
    for i, (s, path) in enumerate(starts):
        e = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        mime = mimetypes.guess_type(path)[0] or "text/plain"
        attachments.append(Attachment(name=path, mime=mime, text=text[s:e]))
    sm = re.search(r"^Subject: (?:\[PATCH[^\]]*\] )?(.*)$", body, re.M)
    return Document(
        channel="pr",
        role=role,
        subject=sm.group(1) if sm else "",
        body=body,
        attachments=attachments,
        links=_urls(text),
        metadata={"destination": "public" if repo_visibility == "public" else "internal",
                  "repo_visibility": repo_visibility},
    )  # fmt: skip


# --- serialization with exact offset maps -------------------------------------------------------------------


@dataclass
class Serialized:
    """`text` plus, for each field, where its raw value sits in `text` (`starts[i]` .. `starts[i] + lens[i]`).

    Markers and separators belong to no field; a field's end position is the separator after it, so
    `to_field` maps it back to (field, len) unambiguously."""

    text: str
    paths: list[str]
    starts: list[int]
    lens: list[int]

    def __post_init__(self):
        self._index = {p: i for i, p in enumerate(self.paths)}

    def to_text(self, path: str, offset: int) -> int:
        i = self._index.get(path)
        if i is None:
            raise KeyError(f"{path}: not a serialized field")
        if not 0 <= offset <= self.lens[i]:
            raise ValueError(f"{path}: offset {offset} outside 0..{self.lens[i]}")
        return self.starts[i] + offset

    def to_field(self, text_offset: int) -> tuple[str, int] | None:
        """(field path, code-point offset) for a position in `text`; None inside a marker or separator."""
        i = bisect.bisect_right(self.starts, text_offset) - 1
        if i < 0 or text_offset > self.starts[i] + self.lens[i]:
            return None
        return self.paths[i], text_offset - self.starts[i]

    def span_to_text(self, span: Span) -> tuple[int, int]:
        return self.to_text(span.field, span.start), self.to_text(span.field, span.end)

    def text_to_spans(self, start: int, end: int, label: str) -> list[Span]:
        """A [start, end) range of `text` as field spans, split at field boundaries (markers dropped)."""
        out = []
        for p, s, n in zip(self.paths, self.starts, self.lens, strict=True):
            a, b = max(start, s), min(end, s + n)
            if a < b:
                out.append(Span(p, a - s, b - s, label))
        return out


def _marker(name: str, **attrs: str) -> str:
    extra = "".join(f" {k}={v}" for k, v in attrs.items() if v)
    return f"<|{name}{extra}|>"


def serialize(doc: Document) -> Serialized:
    """Lay the document out as one text: a header marker with channel/role/destination/repo visibility/org
    domains, then one line-initial typed marker per field (`<|body|>`, `<|attachments.0.text mime=..|>`)
    followed by the raw value and a newline. Values are copied verbatim so offsets are exact."""
    meta = doc.metadata
    parts = [
        _marker(
            "doc",
            channel=doc.channel,
            role=doc.role,
            destination=str(meta.get("destination", "")),
            repo=str(meta.get("repo_visibility", "")),
            org=",".join(doc.org_domains),
        )
        + "\n"
    ]
    pos = len(parts[0])
    paths, starts, lens = [], [], []
    for path, value in doc.fields():
        attrs = {}
        if path.endswith(".text") and path.startswith("attachments."):
            attrs["mime"] = doc.attachments[int(path.split(".")[1])].mime.replace(" ", "")
        m = _marker(path, **attrs)
        pos += len(m)
        paths.append(path)
        starts.append(pos)
        lens.append(len(value))
        parts += [m, value, "\n"]
        pos += len(value) + 1
    return Serialized("".join(parts), paths, starts, lens)
