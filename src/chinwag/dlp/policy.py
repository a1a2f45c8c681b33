"""Document labels from gold spans: the issue-8 policy, applied exactly and explained.

`document_labels(doc, spans, obfuscated)` is what the synthetic generator uses to label documents and what
the scanner applies to its own predicted spans. Only *content* spans (subject, body, attachments, links)
count; spans in `sender` / `recipients.N` are addressing, not disclosure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parseaddr
from urllib.parse import urlsplit

from chinwag.dlp.dsl import Document, is_content_field
from chinwag.dlp.labels import Span

LEVEL2 = frozenset({"PAN", "SSN", "SECRET_KEY", "DB_URI"})
LEVEL1_LEGAL = frozenset({"MATTER_ID", "NDA_TERM"})
CONTACT_PII = frozenset({"NAME", "ADDRESS", "PHONE", "EMAIL"})

# Content types each role is expected to handle. engineering's SECRET_KEY/DB_URI are expected only when
# the destination is internal (see `_internal`).
EXPECTED = {
    "hr": frozenset({"SSN", "NAME", "ADDRESS", "PHONE", "EMAIL"}),
    "finance": frozenset({"PAN", "NAME", "EMAIL", "PHONE"}),
    "legal": frozenset({"NDA_TERM", "MATTER_ID", "NAME", "EMAIL"}),
    "engineering": frozenset({"EMAIL"}),
    "support": frozenset({"EMAIL", "PHONE", "NAME", "ADDRESS"}),
    "sales": frozenset({"EMAIL", "PHONE", "NAME"}),
}
ENGINEERING_INTERNAL_ONLY = frozenset({"SECRET_KEY", "DB_URI"})

PASTE_SITES = tuple(
    (
        "pastebin.com paste.ee hastebin.com ghostbin.com dpaste.org dpaste.com paste.ubuntu.com rentry.co "
        "rentry.org justpaste.it controlc.com privatebin.net 0bin.net termbin.com ix.io sprunge.us "
        "paste.rs pastes.dev gist.github.com pastie.org paste.mozilla.org"
    ).split()
)
WEBMAIL_DOMAINS = tuple(
    (
        "gmail.com googlemail.com yahoo.com ymail.com hotmail.com outlook.com live.com msn.com icloud.com "
        "me.com aol.com proton.me protonmail.com gmx.com gmx.net gmx.de mail.com yandex.com yandex.ru "
        "zoho.com fastmail.com tutanota.com hey.com"
    ).split()
)

DECISIONS = ("ALLOW", "ALLOW_WITH_WARNING", "BLOCK")


@dataclass
class DocLabels:
    level: int  # 0, 1 or 2
    sensitivity: bool  # level >= 1
    exposure: bool
    context_consistent: bool  # the ContextConsistency head is high when this is True
    obfuscation: bool
    decision: str
    rationale: list[str] = field(default_factory=list)

    def heads(self) -> dict[str, float]:
        """The four document-head targets, in the scan output's key names."""
        return {
            "sensitivity": float(self.sensitivity),
            "exposure": float(self.exposure),
            "context": float(self.context_consistent),
            "obfuscation": float(self.obfuscation),
        }

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "sensitivity": self.sensitivity,
            "exposure": self.exposure,
            "context_consistent": self.context_consistent,
            "obfuscation": self.obfuscation,
            "decision": self.decision,
            "rationale": list(self.rationale),
        }


def _host_matches(host: str, domains: Iterable[str]) -> bool:
    host = host.lower().strip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def _addr(s: str) -> str:
    return parseaddr(s)[1].lower()


def _norm(s: str) -> str:
    return " ".join(s.casefold().split())


def is_third_party(doc: Document, span: Span) -> bool:
    """A PII value is first-party when it names the sender or a recipient: its text (case/space-folded)
    occurs in the sender or a recipient string, e.g. "Dana Wu" in "Dana Wu <dana@corp.com>". Anything else
    (including the sender's own phone in a signature, which we cannot tell apart) counts as third-party."""
    value = _norm(doc.span_text(span))
    if not value:
        return False
    return not any(value in _norm(p) for p in [doc.sender, *doc.recipients])


def external_recipients(doc: Document) -> list[str]:
    """Recipients whose domain is not an org domain (or a subdomain of one). No org domains: all external."""
    out = []
    for r in doc.recipients:
        a = _addr(r)
        if "@" in a and not _host_matches(a.rsplit("@", 1)[1], doc.org_domains):
            out.append(a)
    return out


def paste_links(doc: Document) -> list[str]:
    out = []
    for u in doc.links:
        host = urlsplit(u if "://" in u else "//" + u).hostname or ""
        if _host_matches(host, PASTE_SITES):
            out.append(u)
    return out


def _tokens(s: str) -> set[str]:
    return {t for t in "".join(c if c.isalnum() else " " for c in s.casefold()).split() if len(t) >= 2}


def self_forward(doc: Document) -> bool:
    """The sender sends to their own personal webmail. `metadata.self_forward` (bool) decides when present;
    otherwise a webmail recipient whose local part holds all the name tokens of the sender's local part
    or display name (e.g. dana.wu@corp.com -> danawu88@gmail.com, "Dana Wu" -> wu.dana@yahoo.com)."""
    if isinstance(doc.metadata.get("self_forward"), bool):
        return doc.metadata["self_forward"]
    name, addr = parseaddr(doc.sender)
    if "@" not in addr or _host_matches(addr.rsplit("@", 1)[1], WEBMAIL_DOMAINS):
        return False
    sender_local = addr.rsplit("@", 1)[0].casefold()
    keys = [_tokens(sender_local), _tokens(name)]
    for r in doc.recipients:
        a = _addr(r)
        if "@" not in a or not _host_matches(a.rsplit("@", 1)[1], WEBMAIL_DOMAINS):
            continue
        local = a.rsplit("@", 1)[0]
        squashed = "".join(c for c in local if c.isalnum())
        if local == sender_local or any(k and all(t in squashed for t in k) for k in keys):
            return True
    return False


def _internal(doc: Document) -> bool:
    """Internal destination: not marked external/public, no public repo, every recipient in the org, no
    paste-site link (i.e. none of the exposure reasons holds)."""
    m = doc.metadata
    return (
        m.get("destination", "internal") == "internal"
        and m.get("repo_visibility") != "public"
        and not external_recipients(doc)
        and not paste_links(doc)
    )


def document_labels(doc: Document, spans: Iterable[Span], obfuscated: Iterable[Span] = ()) -> DocLabels:
    """Apply the issue-8 policy. `obfuscated` is the subset of `spans` whose value is written obfuscated
    (spaced digits, "at"/"dot", base64/hex/url-encoding, zero-width chars, homoglyphs, split lines)."""
    content = [s for s in spans if is_content_field(s.field)]
    obf = set(obfuscated)
    types = {s.label for s in content}
    why: list[str] = []

    # --- sensitivity level
    third_party = {s.label for s in content if s.label in CONTACT_PII and is_third_party(doc, s)}
    if types & LEVEL2:
        level = 2
        why.append("level 2: " + ", ".join(sorted(types & LEVEL2)) + " detected")
    elif types & LEVEL1_LEGAL or len(third_party) >= 2:
        level = 1
        if types & LEVEL1_LEGAL:
            why.append("level 1: legal-privileged content (" + ", ".join(sorted(types & LEVEL1_LEGAL)) + ")")
        if len(third_party) >= 2:
            why.append("level 1: PII detected (third-party " + ", ".join(sorted(third_party)) + ")")
    else:
        level = 0
    sensitive = level >= 1

    # --- exposure
    reasons = []
    if ext := external_recipients(doc):
        reasons.append("external recipient " + ", ".join(ext))
    if doc.metadata.get("destination") == "public":
        reasons.append("public destination")
    if doc.metadata.get("repo_visibility") == "public":
        reasons.append("public repository")
    if pastes := paste_links(doc):
        reasons.append("paste-site link " + ", ".join(pastes))
    exposure = sensitive and bool(reasons)
    if exposure:
        what = "secret" if types & {"SECRET_KEY", "DB_URI"} else "sensitive data"
        why.append(f"{what} exposed: " + "; ".join(reasons))

    # --- context consistency
    expected = set(EXPECTED[doc.role])
    if doc.role == "engineering" and _internal(doc):
        expected |= ENGINEERING_INTERNAL_ONLY
    unexpected = sorted(types - expected)
    fwd = self_forward(doc)
    context_consistent = not (sensitive and (unexpected or fwd))
    if not context_consistent:
        if unexpected:
            why.append(f"unexpected for role {doc.role}: " + ", ".join(unexpected))
        if fwd:
            why.append("self-forward to personal webmail")

    # --- obfuscation: any content span whose value is written obfuscated
    obf_labels = sorted({s.label for s in content if s in obf})
    obfuscation = bool(obf_labels)
    if obfuscation:
        why.append("obfuscated value: " + ", ".join(obf_labels))

    # --- decision
    if (level == 2 and exposure) or (obfuscation and level >= 1):
        decision = "BLOCK"
    elif (level >= 1 and exposure) or level == 2 or (level >= 1 and not context_consistent):
        decision = "ALLOW_WITH_WARNING"
    else:
        decision = "ALLOW"
    if not why:
        why.append("no sensitive content")
    return DocLabels(level, sensitive, exposure, context_consistent, obfuscation, decision, why)
