"""DLP label set, the span type, and the exact validators / not-sensitive lists.

Everything here is deterministic string logic shared by the synthetic generator (to build gold spans and
hard negatives), the policy (document labels) and the scanner. Spans are always in code points of one
raw field string (`Span.field` is a path such as "body" or "attachments.1.text"), never tokenizer units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LABELS = ("EMAIL", "PHONE", "PAN", "SSN", "SECRET_KEY", "DB_URI", "NDA_TERM", "MATTER_ID", "NAME", "ADDRESS")
BIO_TAGS = ["O"] + [f"{p}-{lab}" for lab in LABELS for p in ("B", "I")]  # 21 tags
TAG_TO_ID = {t: i for i, t in enumerate(BIO_TAGS)}

MATTER_ID_RE = re.compile(r"MTR-\d{4}-\d{5}")

# The closed NDA_TERM lexicon (matched case-insensitively, whole words). Longest first so a matcher that
# tries them in order prefers "mutual non-disclosure agreement" over "non-disclosure agreement".
NDA_TERMS = tuple(
    sorted(
        (
            "NDA",
            "mutual NDA",
            "non-disclosure agreement",
            "nondisclosure agreement",
            "mutual non-disclosure agreement",
            "confidentiality agreement",
            "privileged & confidential",
            "privileged and confidential",
            "attorney-client privileged",
            "attorney-client privilege",
            "attorney work product",
            "trade secret",
            "trade secrets",
            "under seal",
            "legal hold",
        ),
        key=len,
        reverse=True,
    )
)


@dataclass(frozen=True, order=True)
class Span:
    """A labelled value: [start, end) in code points of the raw string at `field`."""

    field: str
    start: int
    end: int
    label: str

    def __post_init__(self):
        if self.label not in LABELS:
            raise ValueError(f"unknown label {self.label!r}; expected one of {', '.join(LABELS)}")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad span offsets [{self.start}, {self.end}) in field {self.field!r}")

    def to_dict(self) -> dict:
        return {"field": self.field, "start": self.start, "end": self.end, "label": self.label}

    @classmethod
    def from_dict(cls, d: dict) -> Span:
        return cls(str(d["field"]), int(d["start"]), int(d["end"]), str(d["label"]))


# --- exact validators -------------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """Luhn checksum over the digits of `digits` (separators ignored); needs 12-19 digits like a real PAN."""
    ds = [int(c) for c in digits if c.isdigit()]
    if not 12 <= len(ds) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(ds)):
        if i % 2 == 1:  # every second digit from the right is doubled
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_SSN_RE = re.compile(r"(\d{3})([- ]?)(\d{2})\2(\d{4})")


def ssn_ok(s: str) -> bool:
    """US SSN rules: AAA-GG-SSSS (same separator, or none); area not 000, 666 or 9xx; group not 00;
    serial not 0000. (9xx areas are ITINs, a near-miss negative.)"""
    m = _SSN_RE.fullmatch(s.strip())
    if not m:
        return False
    area, group, serial = m.group(1), m.group(3), m.group(4)
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# --- not sensitive: public test values, documentation domains, placeholders -------------------------------

# Card numbers published by payment processors for testing (Stripe, Braintree, Adyen, PayPal docs).
PUBLIC_TEST_CARDS = frozenset(
    {
        "4111111111111111", "4242424242424242", "4000056655665556", "4012888888881881", "4222222222222",
        "4000000000000002", "4000000000009995", "4000000000000077", "5555555555554444", "5105105105105100",
        "5200828282828210", "2223003122003222", "378282246310005", "371449635398431", "378734493671000",
        "6011111111111117", "6011000990139424", "6011000000000004", "30569309025904", "38520000023237",
        "3530111333300000", "3566002020360505", "3566111111111113", "6200000000000005",
    }
)  # fmt: skip


def is_public_test_card(s: str) -> bool:
    """True for a published test card number, in any grouping ("4111 1111 1111 1111", "4111-1111-...")."""
    return "".join(c for c in s if c.isdigit()) in PUBLIC_TEST_CARDS


# RFC 2606 / 6761 reserved names: example.com/.net/.org (and subdomains), and the .test, .invalid,
# .example and .localhost top-level domains.
_DOC_DOMAINS = ("example.com", "example.net", "example.org")
_DOC_TLDS = ("test", "invalid", "example", "localhost")


def is_doc_domain(domain: str) -> bool:
    d = domain.strip().strip(".").lower()
    return any(d == x or d.endswith("." + x) for x in _DOC_DOMAINS) or d.rsplit(".", 1)[-1] in _DOC_TLDS


def is_doc_email(s: str) -> bool:
    """True for an address at a documentation domain (user@example.com, a@b.test, x@y.invalid)."""
    s = s.strip().strip("<>")
    return "@" in s and is_doc_domain(s.rsplit("@", 1)[1])


# AWS's own documentation credentials: published in every AWS doc page, never real.
AWS_DOC_KEYS = frozenset(
    {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "ASIAIOSFODNN7EXAMPLE"}
)
_PLACEHOLDER_WORDS = frozenset(
    (
        "changeme change_me changeit password passwd secret token apikey api_key your_api_key "
        "your-api-key yourapikey your_token your_password your_secret redacted xxx todo tbd none null nil "
        "undefined dummy example sample placeholder test foo bar foobar secret123 password123 admin "
        "hunter2 insert_key_here"
    ).split()
)
_TEMPLATE_RE = re.compile(
    r"""<[^<>\s]{1,64}>            # <API_KEY>
      | \$\{[^{}]{1,64}\}          # ${TOKEN}
      | \{\{[^{}]{1,64}\}\}        # {{ secret }}
      | \$[A-Za-z_][A-Za-z0-9_]*   # $TOKEN
      | %[A-Za-z_][A-Za-z0-9_]*%   # %TOKEN%
      | ([*xX•#.\-_])\1{2,}        # ****, xxxx, ....
    """,
    re.VERBOSE,
)


def is_placeholder_secret(s: str) -> bool:
    """True for a value that is not a real credential: AWS doc keys, templates (`<API_KEY>`, `${TOKEN}`,
    `{{x}}`, `$VAR`, `%VAR%`), masks (`****`, `xxxx`), and stock words (`changeme`, `your_api_key`, ...)."""
    v = s.strip().strip("'\"`")
    if not v:
        return True
    if v in AWS_DOC_KEYS:
        return True
    if _TEMPLATE_RE.fullmatch(v):
        return True
    return v.lower() in _PLACEHOLDER_WORDS
