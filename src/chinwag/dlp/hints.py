"""A cheap lexical pre-pass whose output is one more input to the DLP encoder: a "hint" id per token.

Why: a from-scratch encoder trained for half an hour on a 2-core CPU learns context (is this digit run a
card or an order number? is this address first-party?) far faster than it learns the *shapes* of values from
raw pieces. Presidio and gitleaks do the reverse (shape first, context as a small score boost). Here the
shapes are only hints: high recall, no precision asked. The model decides every tag, so hard negatives
(test cards, example.com, placeholders, UUIDs) and obfuscated values (which these patterns mostly miss) are
still learned, and a value with no hint can still be tagged.

Patterns are generic formats (RFC-ish emails, NANP/E.164 phones, known key prefixes), not the synthetic
generator's templates.
"""

from __future__ import annotations

import re

from chinwag.dlp.labels import NDA_TERMS, luhn_ok

# id 0 = no hint. Later entries win where patterns overlap (more specific last).
HINTS = (
    "none",
    "CAPWORDS",  # two or more Capitalised words: a name, a place, a company, a heading
    "DIGITS",  # a long run of digits (with separators), not Luhn-valid
    "PHONE",
    "SSN_SHAPE",
    "DIGITS_LUHN",  # 12-19 digits that pass Luhn: card-shaped
    "STREET",  # number + words + street suffix
    "EMAIL",
    "ENTROPY",  # a long mixed-class token: key, hash, id, base64
    "ASSIGNED",  # the value after password= / secret: / token => ...
    "KEY_PREFIX",  # AKIA..., ghp_..., xoxb-..., sk_live_..., JWT, PEM
    "URI_PASSWORD",  # scheme://user:pass@host
    "MATTER",
    "NDA",
)
HINT_ID = {h: i for i, h in enumerate(HINTS)}

_NDA = "|".join(re.escape(t) for t in NDA_TERMS)
_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("CAPWORDS", re.compile(r"\b[A-Z][a-z'\-]+(?:[ \t]+[A-Z]\.?)?(?:[ \t]+[A-Z][a-z'\-]+)+\b")),
    ("DIGITS", re.compile(r"(?<![\w.])\d(?:[ \-.]?\d){7,22}(?![\w])")),
    (
        "PHONE",
        re.compile(
            r"(?<![\w])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]?\d{3,4}(?![\w])"
        ),
    ),
    ("SSN_SHAPE", re.compile(r"(?<![\w\-])\d{3}([ \-]?)\d{2}\1\d{4}(?![\w\-])")),
    ("DIGITS_LUHN", re.compile(r"(?<![\w])\d(?:[ \-]?\d){11,18}(?![\w])")),
    (
        "STREET",
        re.compile(
            r"\b\d{1,6}[ \t]+(?:[A-Z][a-z]+[ \t]+){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|"
            r"Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Circle|Parkway|Suite|Apt)\b\.?[^\n]{0,60}?"
            r"\b\d{5}(?:-\d{4})?\b"
        ),
    ),  # fmt: skip
    ("EMAIL", re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")),
    ("ENTROPY", re.compile(r"(?<![\w/+])(?=[\w/+=\-]*\d)(?=[\w/+=\-]*[A-Za-z])[\w/+=\-]{20,}")),
    (
        "ASSIGNED",
        re.compile(
            r"(?i)(?:pass(?:word|wd)?|pwd|secret|token|api[_\-]?key|auth|credential)s?[\"']?"
            r"\s*(?:=|:|=>)\s*[\"']?(?P<v>[^\s\"',;]{6,})"
        ),
    ),  # fmt: skip
    (
        "KEY_PREFIX",
        re.compile(
            r"\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[\w\-]{10,}|"
            r"sk_(?:live|test)_[A-Za-z0-9]{10,}|eyJ[\w\-]+\.[\w\-]+\.[\w\-]+)|"
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]{0,4000}?-----END [A-Z ]*PRIVATE KEY-----"
        ),
    ),  # fmt: skip
    ("URI_PASSWORD", re.compile(r"\b[a-z][a-z0-9+.\-]{1,15}://[^\s:/@]*:[^\s@/]+@[^\s/]+(?:/[^\s]*)?")),
    ("MATTER", re.compile(r"\bMTR-\d{4}-\d{5}\b")),
    ("NDA", re.compile(rf"(?i)(?<!\w)(?:{_NDA})(?!\w)")),
]


def _matches(text: str):
    for name, pat in _PATTERNS:
        for m in pat.finditer(text):
            s, e = m.span("v") if "v" in pat.groupindex else m.span()
            if name == "DIGITS_LUHN" and not luhn_ok(m.group()):
                continue
            yield name, s, e


def char_hints(text: str) -> list[int]:
    """Hint id per code point of `text` (0 where nothing matched; later, more specific patterns win)."""
    out = [0] * len(text)
    for name, s, e in _matches(text):
        out[s:e] = [HINT_ID[name]] * (e - s)
    return out


def token_hints(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """Hint id per token: the highest-priority hint over the token's characters."""
    ch = char_hints(text)
    return [max(ch[s:e], default=0) for s, e in offsets]


def with_hints(ids: list[int], text: str, offsets: list[tuple[int, int]], vocab_size: int) -> list[int]:
    """Pack each token's hint into its id (`id + vocab_size * hint`), so every path that carries token ids
    (datasets, batches, scan windows) carries the hints too; the model unpacks them (DLPModel.embed_ids)."""
    return [i + vocab_size * h for i, h in zip(ids, token_hints(text, offsets), strict=True)]
