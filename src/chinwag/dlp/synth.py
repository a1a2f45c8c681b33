"""Synthetic DLP corpus: seeded documents with gold spans by construction.

Every document is built piece by piece: plain text is appended, and each sensitive value is appended
through `_Text.val`, which records its code-point span at that moment. So gold spans never come from a
regex over the finished text; they are what we inserted, and `_finish` asserts that
`doc.field_text(field)[start:end]` is exactly the inserted value.

Templates are document *skeletons* (an email reply chain with quoted history, a stand-up chat, a PR diff of
a .env file, a CSV export, ...). Each split draws from its own disjoint set of skeletons, so the test split
measures generalisation to unseen layouts rather than memory. Values, obfuscation forms, hard negatives and
the prose banks are shared by all splits: the model must learn them, and every split must contain them.

Realism: real emails, chats, PRs and uploads are mostly ordinary text, so each template writes prose from
role-specific sentence banks (greetings, context, quoted history, signatures, disclaimers, meeting notes,
code with ordinary identifiers, log and CSV rows that are mostly harmless) up to a length budget, and
weaves the document's few sensitive values and hard negatives into it. Filler convention, so that every
unlabelled token really is harmless: filler uses first names only (a *full* person name is always a NAME
span), never an email address, phone or street address, and its numbers are dates, times, amounts,
percentages and short counts.

Difficulty (`easy` | `mixed` | `hard`) sets the payload and the length budget: easy documents are shorter
with few obfuscations and hard negatives; hard ones are long (up to ~4 KB) with many of both; mixed (the
default) sits in between.
"""

from __future__ import annotations

import base64
import datetime
import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faker import Faker

from chinwag.dlp.dsl import Attachment, Document, DocumentError
from chinwag.dlp.labels import LABELS, Span, is_public_test_card, luhn_ok
from chinwag.utils import atomic_path

SPLITS = ("train", "val", "test")
DIFFICULTIES = ("easy", "mixed", "hard")
FORMS = ("spaced_digits", "at_dot", "base64", "hex", "url_encoded", "zero_width", "homoglyph", "split_lines")
NEG_KINDS = (
    "test_card", "doc_email", "aws_doc_key", "placeholder", "uri_no_password", "uri_placeholder_password",
    "masked_card", "isbn", "ean", "uuid", "git_sha", "checksum", "version", "order_number", "tracking_number",
    "company", "city",
)  # fmt: skip

NDA_LEXICON = (
    "NDA", "non-disclosure agreement", "Non-Disclosure Agreement", "privileged & confidential",
    "Privileged and Confidential", "attorney work product", "attorney-client privileged", "trade secret",
    "confidentiality agreement", "under NDA", "mutual NDA", "legal hold",
)  # fmt: skip

# Which obfuscation forms make sense for which label (e.g. no homoglyphs inside a digit string).
OBF_FORMS = {
    "EMAIL": ("at_dot", "zero_width", "homoglyph"),
    "PHONE": ("spaced_digits", "zero_width"),
    "PAN": ("spaced_digits", "zero_width", "split_lines"),
    "SSN": ("spaced_digits", "zero_width"),
    "SECRET_KEY": ("base64", "hex", "url_encoded", "zero_width", "homoglyph", "split_lines"),
    "DB_URI": ("url_encoded", "base64", "hex", "split_lines", "zero_width"),
    "NDA_TERM": ("homoglyph", "zero_width"),
    "MATTER_ID": ("spaced_digits", "zero_width"),
    "NAME": ("homoglyph", "zero_width"),
    "ADDRESS": ("split_lines", "homoglyph"),
}
FORM_WEIGHT = {"at_dot": 4, "hex": 4, "base64": 2, "url_encoded": 2}
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
HOMOGLYPHS = {
    "a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "i": "і", "y": "у", "s": "ѕ", "A": "А",
    "E": "Е", "O": "О", "P": "Р", "C": "С", "T": "Т", "H": "Н", "K": "К", "M": "М", "B": "В",
}  # fmt: skip
TEST_CARDS = (
    "4111 1111 1111 1111", "4111111111111111", "4242 4242 4242 4242", "4242424242424242",
    "5555 5555 5555 4444", "4012 8888 8888 1881", "3782 822463 10005", "6011 1111 1111 1117",
    "5105 1051 0510 5100",
)  # fmt: skip
PLACEHOLDERS = (
    "<API_KEY>", "${TOKEN}", "changeme", "<YOUR_TOKEN_HERE>", "${SECRET_KEY}", "{{ api_token }}",
    "your-api-key", "xxxxxxxxxxxxxxxx", "<password>", "REDACTED", "${DB_PASSWORD}",
)  # fmt: skip
PASTE_SITES = (
    "https://pastebin.com/",
    "https://paste.ee/p/",
    "https://gist.github.com/anon/",
    "https://hastebin.com/",
)
WEBMAIL = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "proton.me")
ROLES = ("hr", "finance", "legal", "engineering", "support", "sales")

# Faker draws dates up to "now" by default, which makes a seeded corpus change with the clock: pin the end.
_END = datetime.datetime(2025, 1, 1)


@dataclass(frozen=True)
class _Level:
    """One difficulty: how many values and hard negatives a document carries, how often a value is
    obfuscated, and how long the document's content is."""

    pos: tuple[int, ...]  # weights of carrying 0, 1, 2, ... sensitive values
    neg: tuple[int, ...]  # weights of carrying 0, 1, 2, ... hard negatives
    obf: tuple[float, ...]  # a document draws one of these as its per-value obfuscation probability
    length: tuple[tuple[int, int, int], ...]  # (weight, lo, hi): a mixture of uniform content lengths (chars)


DIFFICULTY = {
    "easy": _Level(pos=(2, 3, 3, 2), neg=(5, 4, 1), obf=(0.0, 0.0, 0.1), length=((1, 0, 1100),)),
    "mixed": _Level(
        pos=(2, 3, 3, 2, 1),
        neg=(2, 3, 3, 2),
        obf=(0.0, 0.15, 0.4),
        length=((1, 0, 700), (8, 850, 2200), (1, 2200, 3500)),
    ),  # fmt: skip
    "hard": _Level(
        pos=(1, 2, 3, 3, 2, 1), neg=(0, 0, 1, 2, 3, 3, 2, 2), obf=(0.4, 0.6, 0.8), length=((1, 1300, 3600),)
    ),
}


@dataclass
class Example:
    """One generated document and its gold annotations (all offsets in code points of the raw field)."""

    doc: Document
    spans: list[Span]
    obfuscated: set[Span]  # the gold spans whose value was written obfuscated
    hard_negatives: list[tuple[str, int, int, str]]  # (field, start, end, kind)
    template: str = ""
    forms: dict[Span, str] = field(default_factory=dict)  # obfuscated span -> form name

    def __iter__(self):  # so `doc, spans, obf, negs = example` works
        return iter((self.doc, self.spans, self.obfuscated, self.hard_negatives))


# ----------------------------------------------------------------------------- text builder


class _Text:
    """Appends text to one field while recording where each value and hard negative landed. With a
    `quote` prefix set (e.g. "> "), plain text gets the prefix after every newline, as a quoted reply
    does; values are never altered (a multi-line value breaks the quoting, as it does in real mail)."""

    def __init__(self, s: str = ""):
        self.parts: list[str] = []
        self.n = 0
        self.vals: list[tuple[int, int, str, str | None, str]] = []  # start, end, label, form, text
        self.negs: list[tuple[int, int, str, str]] = []  # start, end, kind, text
        self.quote = ""
        if s:
            self.add(s)

    def _raw(self, s: str) -> _Text:
        self.parts.append(s)
        self.n += len(s)
        return self

    def add(self, s: str) -> _Text:
        return self._raw(s.replace("\n", "\n" + self.quote) if self.quote else s)

    def val(self, v: tuple[str, str, str | None]) -> _Text:
        label, s, form = v
        self.vals.append((self.n, self.n + len(s), label, form, s))
        return self._raw(s)

    def neg(self, v: tuple[str, str]) -> _Text:
        kind, s = v
        self.negs.append((self.n, self.n + len(s), kind, s))
        return self._raw(s)

    def item(self, v) -> _Text:
        """A sensitive value (label, text, form) or a hard negative (kind, text)."""
        return self.val(v) if len(v) == 3 else self.neg(v)

    def phrase(self, pattern: str, v) -> _Text:
        """`pattern` holds one `{}`: the value (a val triple or a neg pair) goes there."""
        pre, post = pattern.split("{}")
        self.add(pre)
        self.item(v)
        return self.add(post)

    def text(self) -> str:
        return "".join(self.parts)


# ----------------------------------------------------------------------------- values


def luhn_digit(body: str) -> str:
    """The check digit that makes `body + digit` pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these get doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


class _Gen:
    """All random choices for one document: `rng` for structure, `fake` for realistic strings."""

    def __init__(self, seed: int, split: str):
        self.split = split
        self.rng = random.Random(seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)

    # -- raw values (not yet obfuscated) --
    def pan(self) -> str:
        r = self.rng
        prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                   ("6011", 16), ("35", 16), ("4", 19)])  # fmt: skip
        while True:
            body = prefix + "".join(r.choice("0123456789") for _ in range(length - len(prefix) - 1))
            digits = body + luhn_digit(body)
            if not is_public_test_card(digits) and len(set(digits[1:])) > 3:
                break
        sep = r.choice([" ", "-", "", " "])
        if length == 15:
            groups = [digits[:4], digits[4:10], digits[10:]]
        else:
            groups = [digits[i : i + 4] for i in range(0, length, 4)]
        return sep.join(groups)

    def ssn(self) -> str:
        r = self.rng
        area = r.choice([a for a in range(1, 900) if a != 666])
        group, serial = r.randint(1, 99), r.randint(1, 9999)
        sep = r.choice(["-", "-", " "])
        return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"

    def email(self) -> str:
        return self.fake.free_email() if self.rng.random() < 0.5 else self.fake.company_email()

    def phone(self) -> str:
        r, f = self.rng, self.fake
        k = r.random()
        if k < 0.5:
            return f.phone_number()
        d = f.numerify("##########")
        d = str(r.randint(2, 9)) + d[1:3] + str(r.randint(2, 9)) + d[4:]
        return r.choice([f"({d[:3]}) {d[3:6]}-{d[6:]}", f"{d[:3]}.{d[3:6]}.{d[6:]}",
                         f"+1 {d[:3]} {d[3:6]} {d[6:]}", f"+44 20 {d[2:6]} {d[6:]}"])  # fmt: skip

    def secret(self) -> str:
        r, f = self.rng, self.fake
        alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        kind = r.choice(
            ["aws_id", "aws_secret", "github", "slack", "jwt", "pem", "password", "stripe", "generic"]
        )
        if kind == "aws_id":
            return "AKIA" + "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        if kind == "aws_secret":
            return "".join(r.choice(alnum + "/+") for _ in range(40))
        if kind == "github":
            return r.choice(["ghp_", "gho_", "ghs_"]) + "".join(r.choice(alnum) for _ in range(36))
        if kind == "slack":
            return f"xox{r.choice('bpa')}-{f.numerify('#' * 11)}-{f.numerify('#' * 12)}-" + "".join(
                r.choice(alnum) for _ in range(24)
            )
        if kind == "stripe":
            return r.choice(["sk_live_", "rk_live_"]) + "".join(r.choice(alnum) for _ in range(24))
        if kind == "jwt":
            b64 = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()  # noqa: E731
            sig = base64.urlsafe_b64encode(f.binary(32)).rstrip(b"=").decode()
            return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'sub': f.user_name(), 'iat': r.randint(1_600_000_000, 1_800_000_000)})}.{sig}"  # noqa: E501
        if kind == "pem":
            body = base64.b64encode(f.binary(r.choice([96, 144, 192]))).decode()
            lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
            t = r.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
            return f"-----BEGIN {t}-----\n{lines}\n-----END {t}-----"
        if kind == "password":
            return f.password(length=r.randint(10, 18), special_chars=True)
        return "".join(r.choice(alnum) for _ in range(r.choice([32, 40, 48])))

    def db_uri(self, password: str | None = None) -> str:
        r, f = self.rng, self.fake
        schemes = [("postgresql", 5432), ("postgres", 5432), ("mysql", 3306), ("mongodb", 27017),
                   ("redis", 6379), ("mssql", 1433), ("amqp", 5672)]  # fmt: skip
        scheme, port = r.choice(schemes)
        pw = password if password is not None else f.password(length=r.randint(10, 16), special_chars=False)
        user = "" if scheme == "redis" and r.random() < 0.5 else f.user_name()
        host = r.choice([f.hostname(), f"db-{r.randint(1, 9)}.{f.domain_name()}", f.ipv4_private()])
        return f"{scheme}://{user}:{pw}@{host}:{port}/{f.word()}"

    def address(self) -> str:
        f = self.fake
        sep = self.rng.choice([", ", ", ", "\n"])
        return f"{f.street_address()}{sep}{f.city()}, {f.state_abbr()} {f.postcode()}"

    def raw(self, label: str) -> str:
        r, f = self.rng, self.fake
        return {
            "EMAIL": self.email,
            "PHONE": self.phone,
            "PAN": self.pan,
            "SSN": self.ssn,
            "SECRET_KEY": self.secret,
            "DB_URI": self.db_uri,
            "NDA_TERM": lambda: r.choice(NDA_LEXICON),
            "MATTER_ID": lambda: f"MTR-{r.randint(2015, 2029)}-{r.randint(0, 99999):05d}",
            "NAME": f.name,
            "ADDRESS": self.address,
        }[label]()

    # -- obfuscation --
    def obfuscate(self, label: str, s: str, form: str) -> str:
        r = self.rng
        if form == "spaced_digits":
            sep = r.choice([" ", " ", ".", "-", " . "])
            return sep.join(ch for ch in s if ch not in " -.()")
        if form == "at_dot":
            at = r.choice([" at ", " [at] ", "(at)", " AT ", " {at} "])
            dot = r.choice([" dot ", " [dot] ", "(dot)", " DOT "])
            local, domain = s.split("@", 1)
            return local.replace(".", dot) + at + domain.replace(".", dot)
        if form == "base64":
            return base64.b64encode(s.encode()).decode()
        if form == "hex":
            return s.encode().hex()
        if form == "url_encoded":  # every byte, so even a plain token changes shape
            return "".join(f"%{b:02X}" for b in s.encode())
        if form == "zero_width":
            chars = list(s)
            for _ in range(r.randint(1, 3)):
                chars.insert(r.randint(1, len(chars) - 1), r.choice(ZERO_WIDTH))
            return "".join(chars)
        if form == "homoglyph":
            idx = [i for i, ch in enumerate(s) if ch in HOMOGLYPHS]
            chars = list(s)
            for i in r.sample(idx, min(len(idx), r.randint(1, 3))):
                chars[i] = HOMOGLYPHS[chars[i]]
            return "".join(chars)
        if form == "split_lines":
            cut = r.randint(len(s) // 3, 2 * len(s) // 3)
            return s[:cut] + r.choice(["\n", "\n  ", " \\\n", "\n> "]) + s[cut:]
        raise ValueError(form)

    def value(self, label: str, obf_p: float = 0.2) -> tuple[str, str, str | None]:
        """(label, text, form or None): a fresh value, obfuscated with probability `obf_p`."""
        s = self.raw(label)
        if self.rng.random() >= obf_p:
            return label, s, None
        forms = [
            fm
            for fm in OBF_FORMS[label]
            if not (fm == "homoglyph" and not any(c in HOMOGLYPHS for c in s))
            and not (fm in ("split_lines", "zero_width") and "\n" in s and len(s) < 8)
        ]
        # Forms only a few labels support get more weight, so every form is common enough to evaluate.
        form = self.rng.choices(forms, weights=[FORM_WEIGHT.get(fm, 1) for fm in forms])[0]
        return label, self.obfuscate(label, s, form), form

    # -- hard negatives --
    def negative(self, kind: str | None = None) -> tuple[str, str]:
        r, f = self.rng, self.fake
        kind = kind or r.choice(NEG_KINDS)
        text = {
            "test_card": lambda: r.choice(TEST_CARDS),
            "doc_email": lambda: r.choice(
                [f.email(), f"{f.user_name()}@example.com", f"{f.user_name()}@test.test", "admin@foo.invalid"]
            ),
            "aws_doc_key": lambda: r.choice(
                ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
            ),
            "placeholder": lambda: r.choice(PLACEHOLDERS),
            "uri_no_password": self._uri_without_password,
            "uri_placeholder_password": lambda: self.db_uri(
                r.choice(["${DB_PASSWORD}", "<password>", "changeme", "PASSWORD", "****"])
            ),
            "masked_card": lambda: (
                r.choice(["**** **** **** ", "XXXX-XXXX-XXXX-", "•••• •••• •••• ", "ending in "])
                + f.numerify("####")
            ),
            "isbn": lambda: r.choice([f.isbn13(), f.isbn10()]),
            "ean": self._ean,
            "uuid": lambda: f.uuid4(),
            "git_sha": lambda: f.sha1()[: r.choice([7, 8, 12, 40])],
            "checksum": lambda: r.choice([f.sha256(), f.md5()]),
            "version": lambda: f"v{r.randint(0, 12)}.{r.randint(0, 40)}.{r.randint(0, 99)}",
            "order_number": lambda: r.choice(["ORD-", "#", "PO-", "INV-"]) + f.numerify("#######"),
            "tracking_number": lambda: (
                "1Z" + f.bothify("???#####?#######", letters="ABCDEFGHJKLMNPRSTUVWXYZ")
            ),
            "company": f.company,
            "city": f.city,
        }[kind]()
        return kind, text

    def _ean(self) -> str:
        while True:  # EAN-13 uses its own checksum; skip the ~10% that would also pass Luhn like a card
            e = self.fake.ean13()
            if not luhn_ok(e):
                return e

    def _uri_without_password(self) -> str:
        uri = self.db_uri("PW")
        return uri.replace(":PW@", "@")


# ----------------------------------------------------------------------------- carrier phrases
# `{}` is where the value goes; `{first}`, `{company}`, ... are filler slots (see `_Doc.slot`).

PHRASES = {
    "EMAIL": (
        "you can reach me at {}", "send it to {} please", "my personal address is {}", "cc {} on this",
        "{first}'s new email is {}", "forward the signed copy to {}", "the customer wrote in from {}",
        "please update the contact on file to {}", "reply to {} rather than the shared inbox",
        "the invite should go to {}",
    ),
    "PHONE": (
        "call me on {}", "mobile: {}", "her cell is {}", "ring {} after 5", "the best number for him is {}",
        "you can text me at {}", "the customer asked for a callback on {}", "{first}'s direct line is {}",
        "emergency contact number: {}", "reach the site manager on {}",
    ),
    "PAN": (
        "card number {}", "charge it to {}", "the customer's card is {}", "use {} for the refund",
        "corporate card {} exp 09/27", "please process the payment with {}", "the declined card was {}",
        "card on the booking: {}", "the travel card ending the month is {}",
    ),
    "SSN": (
        "SSN {}", "social security number: {}", "his SSN is {}", "ssn={}", "for the I-9 her SSN is {}",
        "SSN on the W-4 is {}", "the employee's social is {}", "SSN for the background check: {}",
    ),
    "SECRET_KEY": (
        "the key is {}", "token: {}", "use this secret: {}", "here's the prod key {}",
        "the service account token is {}", "password for the admin console is {}",
        "I rotated it, the new one is {}", "export API_TOKEN={}", "the webhook signing secret is {}",
    ),
    "DB_URI": (
        "connect with {}", "DATABASE_URL is {}", "prod db: {}", "try {} from the bastion",
        "the read replica is at {}", "point the worker at {}", "the connection string is {}",
    ),
    "NDA_TERM": (
        "this is covered by the {}", "{} - do not forward", "marked {}", "see the {} terms",
        "we signed the {} with {company} last week", "everything in the deck falls under the {}",
        "the {} expires in {month}", "treat the pricing as {}",
    ),
    "MATTER_ID": (
        "re matter {}", "file under {}", "billing to {}", "matter no. {}", "time entries should go to {}",
        "the docket for {} is attached", "please reference {} in the subject line",
    ),
    "NAME": (
        "{} starts Monday", "spoke with {} today", "{} asked about it", "assigning to {}",
        "{} from {company} will join the call", "the candidate, {}, accepted the offer",
        "please add {} to the distribution list", "{} is the new account owner",
        "the request came from {} in {team}",
    ),
    "ADDRESS": (
        "ship to {}", "she lives at {}", "mailing address: {}", "office moved to {}",
        "please send the paperwork to {}", "the delivery address on file is {}",
        "the return label should go to {}",
    ),
}  # fmt: skip
NEG_PHRASES = {
    "test_card": (
        "use test card {} in staging", "the sandbox card {} works", "card number {} (Stripe test)",
        "QA can charge {} with any CVC",
    ),
    "doc_email": (
        "e.g. {}", "the docs use {} as the sample", "set the sender to {} in the fixture", "contact: {}",
    ),
    "aws_doc_key": ("the AWS docs example key {}", "placeholder id {}", "AWS_ACCESS_KEY_ID={} in the sample"),
    "placeholder": ("set the key to {}", "token: {}", "replace {} with your own key", "password: {}"),
    "uri_no_password": ("local db is {}", "connect to {}", "the replica is at {}"),
    "uri_placeholder_password": ("template URL {}", "DATABASE_URL={} (fill in)", "connection string: {}"),
    "masked_card": ("card {} on file", "paid with {}", "the card is {}"),
    "isbn": ("ISBN {}", "book {}", "the handbook (ISBN {})"),
    "ean": ("barcode {}", "EAN {}", "scan {} at the register"),
    "uuid": ("request id {}", "trace {}", "tenant {}"),
    "git_sha": ("fixed in {}", "commit {}", "reverted {}"),
    "checksum": ("sha {}", "checksum {}", "the sha256 of the build is {}"),
    "version": ("bumped to {}", "released {}", "we're on {} in prod"),
    "order_number": ("order {}", "invoice {}", "reference {}"),
    "tracking_number": ("tracking {}", "UPS {}", "shipped, tracking number {}"),
    "company": ("we signed with {}", "{} renewed", "the contract with {} is up for renewal"),
    "city": ("she is in {}", "flying to {}", "the office in {}"),
}  # fmt: skip
KEYS = {
    "SECRET_KEY": (
        "API_KEY", "SECRET_KEY", "auth_token", "password", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN",
        "STRIPE_KEY", "webhook_secret",
    ),
    "DB_URI": ("DATABASE_URL", "db_uri", "MONGO_URL", "REDIS_URL", "replica_url"),
    "EMAIL": ("contact_email", "EMAIL", "owner", "notify"), "PHONE": ("phone", "ON_CALL_PHONE", "sms_to"),
    "PAN": ("card_number", "pan"), "SSN": ("ssn", "tax_id"), "NAME": ("full_name", "contact", "owner_name"),
    "ADDRESS": ("address", "ship_to"), "NDA_TERM": ("classification", "notice"),
    "MATTER_ID": ("matter_id", "MATTER"),
}  # fmt: skip

NEG_KEYS = {
    "test_card": ("card_number", "test_card"), "doc_email": ("contact_email", "example_email"),
    "aws_doc_key": ("AWS_ACCESS_KEY_ID", "aws_key"), "placeholder": ("API_KEY", "auth_token", "password"),
    "uri_no_password": ("DATABASE_URL", "db_uri"), "uri_placeholder_password": ("DATABASE_URL", "MONGO_URL"),
    "masked_card": ("card", "card_number"), "isbn": ("isbn",), "ean": ("barcode", "ean"),
    "uuid": ("request_id", "tenant_id"), "git_sha": ("commit", "revision"),
    "checksum": ("sha256", "checksum"), "version": ("version", "release"),
    "order_number": ("order_id", "invoice"), "tracking_number": ("tracking",),
    "company": ("company", "vendor"), "city": ("city", "office"),
}  # fmt: skip

# ----------------------------------------------------------------------------- filler banks
# None of these contains a full person name, an email address, a phone number, an address or an NDA lexicon
# term: the filler must be harmless, so that an unlabelled token really is "O".

TEAMS = (
    "platform", "payments", "data", "mobile", "growth", "security", "infra", "billing", "design", "web",
    "analytics", "support ops", "people ops", "revenue ops", "procurement", "facilities",
)  # fmt: skip
PRODUCTS = (
    "the dashboard", "the mobile app", "the billing portal", "the reporting module", "the admin console",
    "the public API", "the browser extension", "the desktop client", "the scheduler", "the analytics add-on",
    "the export tool", "the checkout page",
)  # fmt: skip
PROJECTS = (
    "Atlas", "Bluebird", "Cascade", "Falcon", "Harbor", "Juniper", "Lighthouse", "Meridian", "Nimbus",
    "Orion", "Quartz", "Redwood", "Sequoia", "Tundra", "Willow", "Beacon",
)  # fmt: skip
SERVICES = (
    "auth-service", "billing-api", "search-indexer", "notification-worker", "orders-api", "gateway",
    "user-service", "report-builder", "sync-worker", "checkout", "ledger", "media-proxy",
)  # fmt: skip
FILES = (
    "tests/test_api.py", "src/handlers.py", "web/app.ts", "db/schema.sql", "scripts/deploy.sh",
    "config/settings.yaml", "lib/cache.go", "src/billing/invoice.py", "app/models/user.rb",
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)  # fmt: skip
TIMES = ("9:30", "10am", "10:30", "11:15", "noon", "1pm", "2:30", "3pm", "4pm", "4:45", "5pm")
PLANS = ("Starter", "Team", "Business", "Enterprise", "Pro")

GENERIC = (
    "Thanks for pulling this together so quickly.", "Let me know if you have any questions.",
    "I'll follow up once I hear back from {first}.", "Can we find 30 minutes on {day} to go through it?",
    "I've added it to the agenda for {day}'s sync.", "Sorry for the slow reply, it's been a busy week.",
    "Just circling back on this before the end of the week.",
    "{first} is out until {day}, so I'm covering in the meantime.", "No rush on this, next week is fine.",
    "Happy to jump on a call if that's easier.", "Adding {first} for visibility.",
    "As discussed on {day}, here is where we landed.",
    "I think we're mostly aligned, with a couple of open points below.",
    "Please review before {day} so we can close this out.",
    "The deadline moved to {date}, which gives us a bit more room.",
    "We should loop in the {team} team before anything goes out.", "Quick update on where things stand.",
    "I spoke with {first} this morning and they're on board.",
    "Let's keep this thread for the decision and move the details to the doc.",
    "I'll send a calendar invite for {day} at {time}.", "If nothing else comes up, we're good to go.",
    "Flagging this now so it doesn't surprise anyone later.", "Thanks again, really appreciate the help.",
    "The notes from last week are in the shared folder.", "{first} mentioned this might slip by a few days.",
    "I've attached the latest version for reference.", "Can you confirm you received the updated copy?",
    "We'll revisit this in the {quarter} planning session.", "Does {day} afternoon still work for everyone?",
    "I don't think we need a meeting for this, email is fine.",
    "Let me check with {first} and get back to you by end of day.",
    "Good catch, I missed that in the first draft.",
    "I'm travelling on {day} but will be online in the evening.",
    "We agreed to keep the scope small for the first version.",
    "The summary is at the top, details further down.", "Can you take a first pass and I'll review after?",
    "I'd rather wait until {first} is back before deciding.",
    "This came up again in the {team} retro, so it's worth fixing properly.",
)  # fmt: skip
ROLE_TALK = {
    "hr": (
        "The offer letter for the {team} role went out on {day}.",
        "Open enrollment for benefits closes on {date}.",
        "Please make sure timesheets are submitted by {day} at noon.",
        "We're planning the onboarding session for {n} new starters next week.",
        "The review cycle starts on {date}; self-assessments are due two weeks later.",
        "{first} will be the onboarding buddy for the first month.",
        "Payroll runs a day early this month because of the holiday.",
        "The updated handbook is now on the intranet.",
        "We've scheduled the exit interview for {day} at {time}.",
        "PTO requests should go through the portal, not email.",
        "The relocation package covers the first {n} weeks of temporary housing.",
        "Background checks usually take three to five business days.",
        "Hiring manager feedback for the {team} candidates is due {day}.",
        "We're updating the parental leave policy starting in {quarter}.",
        "Laptop and badge will be ready at the front desk on the first morning.",
        "The training modules need to be completed within {n} days of the start date.",
        "Headcount for {team} was approved for {quarter}.",
        "Please remind your team about the wellness stipend deadline.",
        "The interview panel for the senior role is {first} and {first2}.",
        "We received {n} applications for the internship so far.",
    ),
    "finance": (
        "Invoice {invoice} for {amount} is now past due.", "The {quarter} close is scheduled for {date}.",
        "Expense reports over {amount} need a second approver.",
        "We reconciled the {company} account and found a difference of {amount}.",
        "The {team} budget is {pct} under forecast so far.", "Vendor payments go out on Thursdays.",
        "Please code this to the {team} cost center.", "The auditors will be onsite from {day}.",
        "{company} asked for net 45 terms instead of net 30.",
        "The wire was released this morning and should land by {day}.",
        "Accruals for {month} look reasonable apart from travel.",
        "I've updated the forecast model with the latest headcount numbers.",
        "Can you send the signed PO so I can release payment?",
        "Revenue for {month} came in at {amount}, slightly ahead of plan.",
        "Corporate card statements are due by the {nth}.",
        "The variance is mostly timing, not a real overspend.",
        "Please attach receipts for anything above {amount}.",
        "We're switching the payroll provider at the start of {quarter}.",
    ),
    "legal": (
        "I've attached the redlined version of the master services agreement.",
        "{company} came back with comments on the indemnification clause.",
        "The statement of work needs a signature from {first} before {date}.",
        "Please don't sign anything until we've reviewed the liability cap.",
        "Outside counsel will send the draft response by {day}.", "The filing deadline is {date}.",
        "We need the board consent executed before the closing.",
        "The data processing addendum is still with their procurement team.",
        "Discovery requests are due in {n} days.", "I'd suggest we push back on the auto-renewal language.",
        "The governing law clause still says Delaware.",
        "Please route all questions about the dispute through our team.",
        "The settlement conference is set for {date}.",
        "We are collecting documents from the custodians this week.",
        "The trademark application was published for opposition.",
        "Their counsel asked for an extension until {date}.",
        "The termination for convenience clause needs 60 days' notice.",
        "We should confirm the signatory has authority to bind {company}.",
    ),
    "engineering": (
        "The deploy to staging went out at {time} without issues.",
        "We're seeing elevated p99 latency on {service} since the last release.",
        "I bumped the connection pool size from 10 to {n}.", "The flaky test in {file} is fixed on main.",
        "Can someone review the migration before we merge?",
        "Rollback is straightforward: revert the commit and redeploy.",
        "CI is green again after the cache fix.", "The on-call handoff is on {day} at {time}.",
        "{service} now retries with exponential backoff.",
        "We should add an alert on queue depth for {service}.",
        "The feature flag is enabled for {pct} of traffic.", "I'll write up the postmortem by {day}.",
        "Memory usage dropped by about {pct} after the change.",
        "The new endpoint is behind auth and rate limited.",
        "Let's pin the dependency until upstream ships a fix.",
        "Load tests show {n}k requests per second at steady state.",
        "The {project} cutover is planned for {date}.",
        "Release {version} is tagged and the changelog is updated.",
        "Error rates are back to baseline after the hotfix.",
        "We need to bump the base image because of the openssl advisory.",
    ),
    "support": (
        "The customer reports that the export button does nothing in {product}.",
        "I've escalated the ticket to tier 2.", "They're on the {plan} plan, renewed in {month}.",
        "The refund was approved and should appear in {n} business days.",
        "Could you try clearing the cache and logging in again?",
        "The replacement unit shipped from our {city} warehouse.",
        "We've identified the issue and a fix is rolling out today.",
        "I'm sorry for the trouble this has caused.", "The ticket was reopened after the customer replied.",
        "Average first response time this week was {n} minutes.",
        "Please attach a screenshot of the error message.", "This looks like a duplicate of {ticket}.",
        "The customer would like a callback tomorrow morning.",
        "Their account was migrated to the new billing system on {date}.",
        "I've added a note to the account so the next agent has context.",
        "The workaround is to export in smaller batches until the fix ships.",
    ),
    "sales": (
        "{company} is interested in a pilot for {n} seats.",
        "The demo with {company} is booked for {day} at {time}.",
        "They asked for a {pct} discount on a two-year term.",
        "The renewal is due on {date} and they're evaluating competitors.",
        "I'll send the revised quote with the volume tier.",
        "Procurement wants the security questionnaire before signing.",
        "Pipeline for {quarter} is at {amount}, ahead of target.",
        "Their champion, {first}, is moving to a different team.", "We lost the {company} deal on price.",
        "Can marketing send over the latest case studies?",
        "Let's put the {company} opportunity in commit for this quarter.",
        "The trial ends {day}; I'll check in beforehand.",
        "They want SSO and audit logs, which means the {plan} tier.",
        "I'm meeting their CFO in {city} next {day}.",
    ),
}  # fmt: skip
CHAT_LINES = (
    "sounds good", "on it", "lgtm 👍", "can you take a look when you get a sec?", "brb, grabbing coffee",
    "ok pushed a fix", "thanks!!", "yep", "hmm not sure, let me check", "standup in 5",
    "who's on call this week?", "that worked, thanks", "I'll ping {first}", "meeting moved to {time}",
    "is {service} slow for anyone else?", "nvm found it", "haha fair", "ty", "will do",
    "did that go out yet?", "can we push this to {day}?", "+1", "agreed", "not yet, blocked on {first}",
    "give me 10 min", "oh nice", "I'll write it up in the doc", "let's take it offline",
    "any update on this?", "yeah that's the one", "sorry, was in a meeting", "I can pair on it after lunch",
    "done ✅", "morning all ☀️", "ok thx", "checking now", "ugh, again?", "happy friday 🎉",
)  # fmt: skip
GREETINGS = (
    "Hi {first},", "Hello {first},", "Hi team,", "Hi all,", "Hey {first},", "Good morning,", "Dear {first},",
    "{first} -", "Hi both,",
)  # fmt: skip
SIGNOFFS = (
    "Best,",
    "Thanks,",
    "Cheers,",
    "Regards,",
    "Kind regards,",
    "Many thanks,",
    "Thanks!",
    "Best regards,",
)
DISCLAIMERS = (
    "This email and any attachments are intended only for the named recipient. If you have received it in "
    "error, please notify the sender and delete it. Any unauthorised use, disclosure or copying is "
    "prohibited. {company} does not accept liability for any errors or omissions in the contents of this "
    "message.",
    "CONFIDENTIALITY NOTICE: The information in this message may be protected by law and is meant for the "
    "addressee only. If you are not the intended recipient, do not read, forward or store it; please "
    "reply to let us know and then delete all copies.",
    "Please consider the environment before printing this email.",
    "Our offices will be closed on {date}. For urgent matters please contact the main switchboard.",
    "{company} will never ask you for your password or banking details by email.",
)  # fmt: skip

# Code context for the PR diffs: ordinary identifiers, no secrets (used verbatim, never slot-filled).
CODE = {
    "py": (
        """\
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)""",
        """\
def load_settings(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    data.setdefault("timeout", 30)
    return data""",
        """\
class RetryPolicy:
    def __init__(self, attempts: int = 3, backoff: float = 0.5):
        self.attempts = attempts
        self.backoff = backoff

    def delays(self):
        return [self.backoff * 2**i for i in range(self.attempts)]""",
        """\
@app.get("/health")
def health():
    return {"status": "ok", "version": __version__}""",
        """\
def chunked(items, size):
    for i in range(0, len(items), size):
        yield items[i : i + size]""",
        """\
    for order in orders:
        if order.status != "paid":
            continue
        totals[order.region] += order.amount""",
        """\
CACHE_TTL = int(os.environ.get("CACHE_TTL", "300"))
MAX_WORKERS = int(os.environ.get("MAX_WORKERS", "4"))
FEATURE_FLAGS = {"new_checkout": False, "beta_search": True}""",
        """\
    try:
        resp = session.get(url, timeout=timeout)
        resp.raise_for_status()
    except requests.RequestException as exc:
        log.warning("fetch failed: %s", exc)
        return None""",
        """\
def test_parse_empty_payload():
    assert parse_payload(b"") == {}


def test_parse_rejects_garbage():
    with pytest.raises(ValueError):
        parse_payload(b"not json")""",
        """\
def send_report(recipients, report):
    body = render_template("weekly.txt", report=report)
    for rcpt in recipients:
        mailer.send(to=rcpt, subject=report.title, body=body)""",
        """\
@dataclass
class Invoice:
    number: str
    amount_cents: int
    currency: str = "USD"
    paid: bool = False""",
        """\
    queue = deque(maxlen=1000)
    while not stop.is_set():
        job = broker.get(timeout=1.0)
        if job is None:
            continue
        queue.append(handle(job))""",
    ),
    "yaml": (
        """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders-api
  labels:
    app: orders-api
spec:
  replicas: 3""",
        """\
    spec:
      containers:
        - name: app
          image: registry.local/orders-api:1.14.2
          ports:
            - containerPort: 8080
          resources:
            limits:
              memory: 512Mi""",
        """\
on:
  push:
    branches: [main]
  pull_request:

jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: make test""",
        """\
logging:
  level: info
  format: json
cache:
  ttl_seconds: 300
  max_entries: 10000""",
        """\
server:
  host: 0.0.0.0
  port: 8080
  read_timeout: 15s
  write_timeout: 30s""",
        """\
retries:
  attempts: 5
  backoff: exponential
features:
  new_checkout: false
  beta_search: true""",
    ),
    "json": (
        """\
  "name": "web-client",
  "version": "2.3.0",
  "private": true,""",
        """\
  "scripts": {
    "build": "vite build",
    "test": "vitest run",
    "lint": "eslint src"
  },""",
        """\
  "logging": {
    "level": "info",
    "console": true
  },""",
        """\
  "retry": {
    "attempts": 3,
    "backoffMs": 250
  },""",
        """\
  "features": {
    "newCheckout": false,
    "betaSearch": true
  },""",
    ),
    "env": (
        """\
# app settings
APP_ENV=production
LOG_LEVEL=info
PORT=8080""",
        """\
WORKERS=4
CACHE_TTL_SECONDS=300
TIMEZONE=UTC""",
        """\
FEATURE_NEW_CHECKOUT=true
FEATURE_BETA_SEARCH=false
SENTRY_ENVIRONMENT=production""",
        """\
# queue
QUEUE_NAME=jobs-default
QUEUE_VISIBILITY_TIMEOUT=60
MAX_RETRIES=5""",
    ),
    "sh": (
        """\
#!/usr/bin/env bash
set -euo pipefail

SERVICE=orders-api
REGION=us-east-1""",
        """\
echo "building $SERVICE"
docker build -t "$SERVICE:$GIT_SHA" .
docker push "$SERVICE:$GIT_SHA\"""",
        """\
for host in web-1 web-2 web-3; do
  ssh "$host" "sudo systemctl restart $SERVICE"
done""",
        """\
if ! curl -fsS "http://localhost:8080/health" > /dev/null; then
  echo "health check failed" >&2
  exit 1
fi""",
    ),
    "sql": (
        """\
CREATE TABLE contacts (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);""",
        """\
CREATE INDEX idx_orders_customer ON orders (customer_id);
ALTER TABLE orders ADD COLUMN notes TEXT;""",
        """\
UPDATE plans SET monthly_price_cents = 4900 WHERE code = 'team';
UPDATE plans SET monthly_price_cents = 9900 WHERE code = 'business';""",
        """\
-- backfill the region column for old rows
UPDATE accounts SET region = 'us' WHERE region IS NULL;""",
    ),
    "md": (
        """\
## Installation

```bash
pip install -e .
make dev
```""",
        """\
## Running the tests

Run `make test`. The integration tests need Docker; skip them with `make test-unit`.""",
        """\
## Configuration

Settings are read from environment variables first and then from `config.yaml`.
See the table below for the defaults.""",
        """\
## Troubleshooting

If the worker exits immediately, check that the queue exists and that the service
has permission to read from it.""",
        """\
## Contributing

Open an issue first for anything larger than a small fix. Keep pull requests focused and include tests.""",
    ),
}
PR_CHANGES = (
    "Move the config loading into one place", "Add retries around the upstream call", "Drop the unused flag",
    "Document the new environment variables", "Bump the base image", "Fix the flaky timeout test",
    "Rename the queue settings for clarity", "Add a health check to the deploy script",
    "Split the settings per environment", "Log the request id on errors", "Update the onboarding docs",
)  # fmt: skip
LOG_MSGS = (
    "GET /api/v1/orders 200 {ms}ms", "POST /api/v1/login 200 {ms}ms", "cache miss for key user:{n}",
    "worker {n} started", "retrying request to {service} (attempt {k}/3)", "healthcheck ok",
    "scheduled job nightly-export finished in {n}s", "connection pool size={n} in_use={k}",
    "deprecated config key 'timeout_ms' used", "session refreshed", "rate limit reached for tenant {n}",
    "queue depth {n}", "GC pause {ms}ms", "feature flag new_checkout evaluated",
    "GET /static/app.js 304 {k}ms", "upstream {service} responded 503, backing off", "migrated {n} rows",
    "PUT /api/v1/items/{n} 204 {ms}ms", "consumer lag {n} messages", "loaded {n} templates",
    "TLS certificate valid for {n} more days",
)  # fmt: skip
LOG_CARRIERS = (
    "user lookup: {}", "payload contained {}", "retry with {}", "config value {}", "parsed {}", "debug: {}",
)  # fmt: skip
CSV_SCHEMAS = (
    # (header, row pattern): rows are slot-filled; the notes column takes a value now and then
    ("order_date,sku,qty,unit_price,status,region,notes",
     "{isodate},SKU-{n}{k},{k},{price},{status},{region},"),
    ("ticket,opened,priority,status,product,notes", "{ticket},{isodate},{priority},{status},{product},"),
    ("date,category,amount,currency,approved,notes", "{isodate},{category},{price},USD,{yesno},"),
    ("team,quarter,headcount,open_roles,budget,notes", "{team},{quarter},{n},{k},{amount},"),
    ("week,channel,sessions,signups,conversion,notes", "{isodate},{region},{n}{k}0,{n},{pct},"),
)  # fmt: skip
CSV_NOTES = (
    "", "", "", "", "gift wrap", "backorder", "priority", "see thread", "resent", "partial",
    "follow up {day}", "waiting on {first}",
)  # fmt: skip

SUBJECTS = (
    "{project} update", "{team} planning", "Quick question", "Follow-up from {day}", "{quarter} numbers",
    "Action items from today", "Checking in", "Issue with {product}", "Next steps", "Schedule for {day}",
    "Draft for review", "Notes and open questions", "Heads up: {service} change", "{company} call recap",
    "Timeline for {project}", "Updated plan",
)  # fmt: skip

_SLOT = re.compile(r"\{(\w+)\}")


# ----------------------------------------------------------------------------- document context


class _Doc:
    """The shared parts of one document: who sends, to whom, where, which values go in, how long it is, and
    the filler "cast" (first names, team, product, ...) that keeps one document's prose consistent."""

    def __init__(self, g: _Gen, channel: str, roles: tuple[str, ...], difficulty: str = "mixed"):
        self.g = g
        r, f = g.rng, g.fake
        self.channel = channel
        self.role = r.choice(roles) if r.random() < 0.7 else r.choice(ROLES)
        self.org = f.domain_name()
        self.org_domains = [self.org] + ([f.domain_name()] if r.random() < 0.2 else [])
        self.sender_name = f.name()
        self.sender_first = next(w for w in self.sender_name.split() if not w.endswith("."))  # not "Dr."
        local = self.sender_name.lower().replace(" ", ".").replace("'", "")
        self.sender_addr = f"{local}@{self.org}"
        # Half the senders carry a display name, so a signature NAME is first-party (policy.is_third_party).
        self.sender = f"{self.sender_name} <{self.sender_addr}>" if r.random() < 0.5 else self.sender_addr
        kind = r.random()
        self.self_forward = kind >= 0.85
        if kind < 0.5:  # internal colleagues
            addrs = [f"{f.user_name()}@{self.org}" for _ in range(r.randint(1, 3))]
        elif kind < 0.85:  # an outside party
            addrs = [f"{f.user_name()}@{self.org}", g.email()][: r.randint(1, 2)]
            if r.random() < 0.5:
                addrs.reverse()
        else:  # a self-forward to personal webmail
            addrs = [f"{local.replace('.', '')}{r.randint(1, 99)}@{r.choice(WEBMAIL)}"]
        self.recipient_addrs = addrs
        self.recipients = list(addrs)  # a quoted correspondent gets a display name (see `named_recipient`)
        dest = r.choices(["internal", "external", "public"], weights=[6, 3, 1])[0]
        if any(not rc.endswith("@" + self.org) for rc in addrs) and dest == "internal":
            dest = "external"
        self.metadata: dict = {"destination": dest}
        self.links: list[str] = []
        if r.random() < 0.1:
            self.links.append(r.choice(PASTE_SITES) + f.lexify("????????"))
        elif r.random() < 0.2:
            self.links.append(f.url())
        # The payload: which sensitive labels and hard negatives this document carries, and its length.
        lv = DIFFICULTY[difficulty]
        self.pos = [r.choice(LABELS) for _ in range(r.choices(range(len(lv.pos)), weights=lv.pos)[0])]
        self.n_neg = r.choices(range(len(lv.neg)), weights=lv.neg)[0]
        self.obf_p = r.choice(lv.obf)
        _, lo, hi = r.choices(lv.length, weights=[w for w, _, _ in lv.length])[0]
        self.target = r.randint(lo, hi)  # characters of content (subject, body, attachments)
        # The filler cast.
        self.people = [f.first_name() for _ in range(4)]
        self.company = f.company()
        self.team, self.product = r.choice(TEAMS), r.choice(PRODUCTS)
        self.project, self.service = r.choice(PROJECTS), r.choice(SERVICES)
        self.ticket = f"{r.choice(('OPS', 'ENG', 'SUP', 'FIN', 'HR'))}-{r.randint(100, 9999)}"
        self.clock = datetime.datetime(2023, 1, 2, 8) + datetime.timedelta(minutes=r.randrange(600 * 24 * 60))
        self.slots = self._slot_table()

    def _slot_table(self) -> dict[str, Callable[[], str]]:
        """What each `{slot}` of the filler banks draws: the cast for names, fresh draws for the rest."""
        r, f = self.g.rng, self.g.fake
        pick = r.choice
        return {
            "first": lambda: pick(self.people),
            "first2": lambda: pick(self.people),
            "company": lambda: self.company,
            "team": lambda: pick((self.team, self.team, pick(TEAMS))),
            "product": lambda: self.product,
            "project": lambda: self.project,
            "service": lambda: pick((self.service, pick(SERVICES))),
            "file": lambda: pick(FILES),
            "day": lambda: pick(DAYS),
            "date": lambda: f"{pick(MONTHS)} {r.randint(1, 28)}",
            "isodate": lambda: (self.clock.date() + datetime.timedelta(days=r.randint(-90, 0))).isoformat(),
            "time": lambda: pick(TIMES),
            "month": lambda: pick(MONTHS),
            "quarter": lambda: f"Q{r.randint(1, 4)}",
            "nth": lambda: pick(("1st", "5th", "10th", "15th", "20th", "25th", "28th")),
            "n": lambda: str(r.randint(2, 40)),
            "k": lambda: str(r.randint(1, 9)),
            "ms": lambda: str(r.randint(3, 900)),
            "amount": lambda: f"${r.randint(1, 95) * 10 ** r.randint(2, 4):,}",
            "price": lambda: f"{r.randint(1, 400)}.{r.randint(0, 99):02d}",
            "pct": lambda: f"{r.randint(2, 60)}%",
            "city": lambda: f.city(),
            "ticket": lambda: self.ticket,
            "invoice": lambda: f"INV-{r.randint(10000, 99999)}",
            "version": lambda: f"{r.randint(1, 5)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
            "plan": lambda: pick(PLANS),
            "status": lambda: pick(("open", "pending", "shipped", "closed", "paid", "on hold")),
            "priority": lambda: pick(("low", "normal", "high", "urgent")),
            "region": lambda: pick(("us-east", "us-west", "emea", "apac", "latam")),
            "category": lambda: pick(("travel", "meals", "software", "hardware", "training", "office")),
            "yesno": lambda: pick(("yes", "no", "pending")),
        }

    # -- filler --
    def say(self, pattern: str) -> str:
        """Fill `{slot}`s (an empty `{}`, the value's place in a carrier phrase, is left alone)."""
        return _SLOT.sub(lambda m: self.slots[m.group(1)](), pattern)

    def sents(self, k: int, role: str | None = None, share: float = 0.65) -> str:
        """`k` distinct filler sentences: the role's talk (`share` of them) and generic office talk."""
        r, bank = self.g.rng, ROLE_TALK[role or self.role]
        out: list[str] = []
        while len(out) < k:
            s = r.choice(bank if r.random() < share else GENERIC)
            if s not in out:
                out.append(s)
        return " ".join(self.say(s) for s in out)

    def para(self, role: str | None = None) -> str:
        return self.sents(self.g.rng.randint(2, 4), role)

    def chat_line(self) -> str:
        r = self.g.rng
        return self.say(r.choice(CHAT_LINES)) if r.random() < 0.6 else self.sents(1)

    def room(self, frac: float = 1.0, reserve: int = 0) -> int:
        """The length a field should reach: `frac` of the document's target, less `reserve` characters."""
        return max(0, int(self.target * frac) - reserve)

    def tick(self, max_s: int = 300) -> datetime.datetime:
        self.clock += datetime.timedelta(seconds=self.g.rng.randint(1, max_s))
        return self.clock

    def when(self) -> str:
        c = self.tick(3 * 86400)
        return f"{c:%a, %b} {c.day}, {c.year} at {c:%I:%M %p}".replace(" 0", " ")

    def subject(self) -> str:
        return self.say(self.g.rng.choice(SUBJECTS))

    def named_recipient(self) -> tuple[str, str]:
        """Give recipient 0 a display name ("Dana Wu <dana.wu@corp.com>") and return (name, address), so a
        quoted "Dana Wu <dana.wu@corp.com> wrote:" is a first-party NAME and EMAIL."""
        f = self.g.fake
        addr = self.recipient_addrs[0]
        name = self.sender_name if self.self_forward else f"{f.first_name()} {f.last_name()}"
        if addr.endswith("@" + self.org):
            addr = name.lower().replace(" ", ".").replace("'", "") + "@" + self.org
            self.recipient_addrs[0] = addr
        self.recipients[0] = f"{name} <{addr}>"
        return name, addr

    # -- payload --
    def values(self) -> list:
        """Interleaved sensitive values and hard negatives, each a val triple or a neg pair."""
        items = [self.g.value(lab, self.obf_p) for lab in self.pos] + [
            self.g.negative() for _ in range(self.n_neg)
        ]
        self.g.rng.shuffle(items)
        return items

    def carry(
        self, t: _Text, v, lead: float = 0.4, tail: float = 0.3, end: str = ".", cap: bool = True
    ) -> None:
        """One sentence carrying the value `v` (a carrier phrase), with filler sentences around it."""
        r = self.g.rng
        if r.random() < lead:
            t.add(self.sents(1) + " ")
        pattern = self.say(r.choice(PHRASES[v[0]] if len(v) == 3 else NEG_PHRASES[v[0]]))
        if cap and not pattern.startswith("{}"):
            pattern = pattern[0].upper() + pattern[1:]
        t.phrase(pattern, v).add(end)
        if r.random() < tail:
            t.add(" " + self.sents(1))

    def weave(self, t: _Text, items: list, until: int, filler: Callable[[], str], put: Callable) -> None:
        """Write `items` through `put(t, v)` with `filler()` text around them until `t` is about `until`
        characters long: the remaining room is split at random between the gaps before, between and after."""
        r = self.g.rng
        w = [r.random() + 0.3 for _ in range(len(items) + 1)]
        for i in range(len(items) + 1):
            end = t.n + max(0, until - t.n) * w[i] / sum(w[i:])
            while t.n < end:
                t.add(filler())
            if i < len(items):
                put(t, items[i])

    # common filler/put pairs
    def para_sep(self) -> str:
        return self.para() + "\n\n"

    def carry_para(self, t: _Text, v) -> None:
        self.carry(t, v)
        t.add("\n\n")


# ----------------------------------------------------------------------------- templates
# Each template returns (subject, body: _Text, attachments: list[(name, mime, _Text)]).

TEMPLATES: dict[str, tuple[str, tuple[str, ...], Callable]] = {}


def template(name: str, channel: str, roles: tuple[str, ...] = ROLES):
    def deco(fn):
        TEMPLATES[name] = (channel, roles, fn)
        return fn

    return deco


def _greeting(d: _Doc) -> str:
    return d.say(d.g.rng.choice(GREETINGS)) + "\n\n"


def _signature(d: _Doc, t: _Text, disclaimer: float = 0.3) -> None:
    g, r = d.g, d.g.rng
    t.add("\n" + r.choice(SIGNOFFS) + "\n")
    if r.random() < 0.6:
        t.val(("NAME", d.sender_name, None))
    else:
        t.add(d.sender_first)
    if r.random() < 0.35:
        t.add("\n" + g.fake.job() + " | ").neg(("company", g.fake.company()))
    if r.random() < 0.25:
        t.add("\nM: ").val(("PHONE", g.phone(), None))
    if r.random() < 0.1:
        t.add("\nSent from my phone")
    if r.random() < disclaimer:
        t.add("\n\n" + d.say(r.choice(DISCLAIMERS)))


def _bullet(d: _Doc, mark: str = "- ") -> Callable[[], str]:
    return lambda: mark + d.sents(1) + "\n"


def _carry_bullet(d: _Doc, mark: str = "- ") -> Callable:
    def put(t: _Text, v) -> None:
        t.add(mark)
        d.carry(t, v, lead=0.2, tail=0.1)
        t.add("\n")

    return put


@template("email_plain", "email")
def _email_plain(d: _Doc):
    t = _Text(_greeting(d))
    d.weave(t, d.values(), d.room(reserve=150), d.para_sep, d.carry_para)
    _signature(d, t)
    return d.subject(), t, []


@template("email_reply_chain", "email")
def _email_reply(d: _Doc):
    r, items = d.g.rng, d.values()
    half = r.randint(0, len(items))
    t = _Text(_greeting(d))
    d.weave(t, items[:half], d.room(0.35), d.para_sep, d.carry_para)
    _signature(d, t, disclaimer=0.0)
    name, addr = d.named_recipient()
    t.add(f"\n\nOn {d.when()}, ").val(("NAME", name, None)).add(" <").val(("EMAIL", addr, None))
    t.add("> wrote:\n\n")
    t.quote = "> "
    t.add(f"> {r.choice(['Hi', 'Hey', 'Thanks'])} {d.sender_first},\n\n")
    d.weave(t, items[half:], d.room(reserve=60), d.para_sep, d.carry_para)
    t.add(r.choice(SIGNOFFS) + "\n" + name.split()[0])
    t.quote = ""
    return "Re: " + d.subject(), t, []


@template("email_hr_onboarding", "email", ("hr",))
def _email_hr(d: _Doc):
    r = d.g.rng
    t = _Text(_greeting(d) + r.choice(["Welcome to the team! ", "Great to have you joining us. ", ""]))
    t.add(d.para("hr") + "\n\nA few things for your first week:\n")
    d.weave(t, d.values(), d.room(0.85), _bullet(d), _carry_bullet(d))
    t.add("\n" + d.sents(2, "hr") + "\n")
    _signature(d, t)
    return (
        d.say(r.choice(["Welcome aboard!", "Your first week", "Onboarding checklist", "Start date: {date}"])),
        t,
        [],
    )


@template("email_meeting_followup", "email")
def _email_meeting(d: _Doc):
    r = d.g.rng
    t = _Text(_greeting(d) + d.say(f"Thanks for joining {{day}}'s {d.team} sync. Notes below.\n\n"))
    t.add("Attendees: " + ", ".join(d.people[: r.randint(2, 4)]) + "\n\nDiscussion\n")
    d.weave(t, d.values(), d.room(0.75), d.para_sep, d.carry_para)
    t.add("Action items\n")
    for p in r.sample(d.people, r.randint(1, 3)):
        t.add(f"- {p}: {d.sents(1)}\n")
    _signature(d, t)
    return d.say("Notes: {team} sync {date}"), t, []


@template("email_forward", "email")
def _email_forward(d: _Doc):
    r = d.g.rng
    t = _Text(r.choice(["FYI, see below.", "Forwarding for context.", "Can you take this one?"]) + " ")
    t.add(d.sents(r.randint(1, 2)) + "\n\n---------- Forwarded message ---------\nFrom: ")
    if r.random() < 0.5:
        name, addr = d.named_recipient()
        t.val(("NAME", name, None)).add(" <").val(("EMAIL", addr, None)).add(">")
    else:
        team = r.choice(TEAMS).replace(" ", "")
        t.add(f"{team.title()} Team <").val(("EMAIL", f"{team}@{d.org}", None)).add(">")
    t.add(f"\nDate: {d.when()}\nSubject: {d.subject()}\nTo: ").val(("EMAIL", d.sender_addr, None))
    t.add("\n\n" + _greeting(d))
    d.weave(t, d.values(), d.room(reserve=40), d.para_sep, d.carry_para)
    t.add(r.choice(SIGNOFFS))
    return "Fwd: " + d.subject(), t, []


@template("email_legal_memo", "email", ("legal",))
def _email_memo(d: _Doc):
    r = d.g.rng
    t = _Text(d.say("MEMORANDUM\n\nTo: {team} leadership\nFrom: Legal\nDate: {date}\n"))
    t.add(f"Re: {d.company} {r.choice(['contract review', 'dispute', 'renewal terms', 'vendor audit'])}\n\n")
    t.add("1. Background\n" + d.para("legal") + "\n\n2. Analysis\n")
    d.weave(t, d.values(), d.room(0.85), lambda: d.para("legal") + "\n\n", d.carry_para)
    t.add("3. Next steps\n")
    for _ in range(r.randint(2, 3)):
        t.add("- " + d.sents(1, "legal") + "\n")
    _signature(d, t, disclaimer=0.5)
    return "Memo: " + d.company, t, []


@template("email_vendor_followup", "email", ("finance", "sales", "support", "legal"))
def _email_vendor(d: _Doc):
    r = d.g.rng
    t = _Text(_greeting(d) + d.say("Following up on our call on {day}. ") + d.sents(2) + "\n\n")
    t.add(r.choice(["A few open points:\n", "To summarise where we are:\n", "Questions from our side:\n"]))
    num = iter(range(1, 100))

    def point() -> str:
        return f"{next(num)}. {d.sents(r.randint(1, 2))}\n"

    def put(t: _Text, v) -> None:
        t.add(f"{next(num)}. ")
        d.carry(t, v, lead=0.3, tail=0.2)
        t.add("\n")

    d.weave(t, d.values(), d.room(reserve=200), point, put)
    t.add("\n" + d.sents(1) + "\n")
    _signature(d, t, disclaimer=0.6)
    return d.say("{company} / next steps"), t, []


@template("email_with_attachment", "email")
def _email_attach(d: _Doc):
    r = d.g.rng
    t = _Text(_greeting(d) + d.sents(r.randint(1, 3)) + " Please find the details attached.\n")
    _signature(d, t)
    a = _Text(d.say(r.choice(["Notes - {project}\n\n", "Summary for {day}\n\n", "Details\n\n", ""])))
    d.weave(a, d.values(), d.room(0.75), d.para_sep, d.carry_para)
    name = r.choice(["notes.txt", "summary.txt", "details.txt", "handover.txt"])
    return d.subject(), t, [(name, "text/plain", a)]


@template("email_support_escalation", "email", ("support", "sales", "engineering"))
def _email_escalation(d: _Doc):
    r, items = d.g.rng, d.values()
    half = r.randint(0, len(items))
    t = _Text(_greeting(d) + d.say("Escalating {ticket}, customer impact summary below.\n\nSummary\n"))
    t.add(d.para("support") + "\n\nTimeline\n")

    def line() -> str:
        return f"- {d.tick(1800):%H:%M} {d.sents(1, 'support')}\n"

    def put(t: _Text, v) -> None:
        t.add(f"- {d.tick(1800):%H:%M} ")
        d.carry(t, v, lead=0.0, tail=0.2)
        t.add("\n")

    d.weave(t, items[:half], d.room(0.5), line, put)
    t.add("\nCustomer's message:\n")
    t.quote = "> "
    t.add("> ")
    d.weave(t, items[half:], d.room(reserve=140), lambda: d.para("support") + "\n\n", d.carry_para)
    t.quote = ""
    _signature(d, t)
    return d.say("Escalation: {ticket}"), t, []


# -- chats


def _chat_put(d: _Doc, prefix: Callable[[], str] = lambda: "") -> Callable:
    def put(t: _Text, v) -> None:
        r = d.g.rng
        lead = r.choice(["hey ", "ok so ", "fyi ", "btw ", "", ""])
        t.add(prefix() + lead)
        d.carry(t, v, lead=0.1, tail=0.15, end="", cap=not lead)
        t.add(r.choice(["\n", " 🙏\n", "!!\n", " thx\n", "\n", "\n"]))

    return put


@template("chat_informal", "chat")
def _chat_informal(d: _Doc):
    t = _Text()
    d.weave(t, d.values(), d.room(0.6), lambda: d.chat_line() + "\n", _chat_put(d))
    if not t.parts:
        t.add("anyone around? " + d.sents(1))
    return "", t, []


def _stamp(d: _Doc, max_s: int = 240) -> str:
    return f"[{d.tick(max_s):%H:%M}] {d.g.rng.choice(d.people).lower()}: "


@template("chat_transcript", "chat")
def _chat_transcript(d: _Doc):
    t = _Text()
    d.weave(
        t, d.values(), d.room(0.7), lambda: _stamp(d) + d.chat_line() + "\n", _chat_put(d, lambda: _stamp(d))
    )
    t.add(_stamp(d) + d.chat_line() + "\n")
    return "", t, []


@template("chat_standup", "chat", ("engineering", "support", "sales", "finance"))
def _chat_standup(d: _Doc):
    r = d.g.rng

    def update() -> str:
        return f"{_stamp(d, 90)}yesterday: {d.sents(1)} today: {d.sents(1)} blockers: none\n"

    def put(t: _Text, v) -> None:
        t.add(f"{_stamp(d, 90)}yesterday: {d.sents(1)} today: ")
        d.carry(t, v, lead=0.0, tail=0.0)
        t.add(" blockers: " + r.choice(["none", "waiting on review", "none 🎉"]) + "\n")

    t = _Text(f"[{d.clock:%H:%M}] standup-bot: Good morning! Please post your update for {d.clock:%A}.\n")
    d.weave(t, d.values(), d.room(0.8), update, put)
    return "", t, []


@template("chat_support_ticket", "chat", ("support", "sales"))
def _chat_support(d: _Doc):
    r = d.g.rng
    agent = r.choice(d.people)
    t = _Text(d.say(f"Ticket #{r.randint(100000, 999999)} · {{plan}} plan · opened {{isodate}}\n\n"))
    t.add("Customer: " + d.say(r.choice(["Hi, ", "Hello, ", "hi there, "])) + d.sents(1, "support") + "\n")

    def turn() -> str:
        who = r.choice(["Customer", f"Agent ({agent})"])
        return f"{who}: {d.sents(r.randint(1, 2), 'support')}\n"

    def put(t: _Text, v) -> None:
        t.add("Customer: ")
        d.carry(t, v, lead=0.3, tail=0.2)
        t.add("\n")

    d.weave(t, d.values(), d.room(0.8), turn, put)
    t.add(f"Agent ({agent}): thanks, looking into it now.")
    return "", t, []


@template("chat_dm_handoff", "chat")
def _chat_handoff(d: _Doc):
    t = _Text(d.say("hey! handing over a few things while I'm out {day} to {day}:\n"))
    d.weave(t, d.values(), d.room(0.7), _bullet(d, "• "), _carry_bullet(d, "• "))
    t.add(d.say("ping {first} if anything is on fire 🔥\n"))
    return "", t, []


@template("chat_thread_reply", "chat")
def _chat_thread(d: _Doc):
    r = d.g.rng
    t = _Text("> " + d.sents(r.randint(1, 3)) + "\n")

    def reply() -> str:
        return f"{r.choice(d.people).lower()}: {d.chat_line()}\n"

    d.weave(t, d.values(), d.room(0.7), reply, _chat_put(d, lambda: f"{r.choice(d.people).lower()}: "))
    return "", t, []


@template("chat_incident_channel", "chat", ("engineering", "support"))
def _chat_incident(d: _Doc):
    r = d.g.rng
    sev = r.choice(["SEV1", "SEV2", "SEV3"])
    t = _Text(
        f"[{d.clock:%H:%M}] incident-bot: 🚨 {sev} declared for {d.service}, commander: {d.people[0]}\n"
    )

    def line() -> str:
        if r.random() < 0.06:
            return f"[{d.tick():%H:%M}] incident-bot: status update requested\n"
        return _stamp(d) + (d.sents(1, "engineering") if r.random() < 0.6 else d.chat_line()) + "\n"

    d.weave(t, d.values(), d.room(0.75), line, _chat_put(d, lambda: _stamp(d)))
    t.add(f"[{d.tick():%H:%M}] incident-bot: {sev} resolved, postmortem due {r.choice(DAYS)}\n")
    return "", t, []


# -- pull requests


def _key(d: _Doc, v) -> str:
    """A field name for the value or hard negative `v`; a negative gets the name its look-alike would have
    (a test card under `card_number`), so the key never gives the answer away."""
    return d.g.rng.choice(KEYS[v[0]] if len(v) == 3 else NEG_KEYS[v[0]])


def _kv_line(d: _Doc, t: _Text, v, fmt: str) -> None:
    """One `key = value` line in the syntax of `fmt`; the span covers the value only."""
    key = _key(d, v)
    if fmt in ("json", "yaml", "sql") and "\n" in v[1]:  # multi-line values need a block form; keep it prose
        t.add({"sql": "-- "}.get(fmt, "# "))
        d.carry(t, v, lead=0.0, tail=0.0)
        t.add("\n")
        return
    pre, post = {
        "env": (f"{key.upper()}=", "\n"),
        "py": (f'{key.upper()} = "', '"\n'),
        "yaml": (f"  {key.lower()}: ", "\n"),
        "json": (f'  "{key.lower()}": "', '",\n'),
        "sh": (f'export {key.upper()}="', '"\n'),
        "sql": (f"INSERT INTO settings (name, value) VALUES ('{key.lower()}', '", "');\n"),
    }[fmt]
    t.add(pre).item(v).add(post)


def _diff(d: _Doc, path: str, fmt: str, items: list, until: int) -> _Text:
    r, f = d.g.rng, d.g.fake
    t = _Text(f"diff --git a/{path} b/{path}\nindex {f.sha1()[:7]}..{f.sha1()[:7]} 100644\n--- a/{path}\n")
    t.add(f"+++ b/{path}\n")
    line_no = [r.randint(1, 40)]

    def hunk() -> str:
        block = r.choice(CODE[fmt]).split("\n")
        a = line_no[0]
        line_no[0] += len(block) + r.randint(3, 30)
        mark = r.choice([" ", " ", "+", "-"])  # context, or lines this change adds or removes
        body = "".join(mark + ln + "\n" for ln in block)
        return f"@@ -{a},{len(block)} +{a},{len(block) + 1} @@\n" + body

    def put(t: _Text, v) -> None:
        t.add("+")
        if fmt == "md" or (fmt in ("py", "sh") and r.random() < 0.3):
            t.add("# " if fmt != "md" else "")
            d.carry(t, v, lead=0.1, tail=0.0)
            t.add("\n")
        else:
            _kv_line(d, t, v, fmt)

    t.add(hunk())  # a diff opens with a hunk, however short the change
    d.weave(t, items, until, hunk, put)
    return t


def _pr(d: _Doc, path: str, fmt: str):
    r = d.g.rng
    d.metadata["repo_visibility"] = r.choice(["private", "private", "internal", "public"])
    if d.metadata["repo_visibility"] == "public":
        d.metadata["destination"] = "public"
    items = d.values()
    k = sum(r.random() < 0.15 for _ in items)  # a few values land in the description, most in the diff
    body = _Text("## Summary\n" + d.para("engineering") + "\n\n")
    for v in items[:k]:
        d.carry(body, v)
        body.add("\n\n")
    body.add("## Changes\n" + "".join(f"- {c}\n" for c in r.sample(PR_CHANGES, r.randint(2, 4))))
    body.add(
        "\n## Testing\n- "
        + r.choice(["unit tests pass locally", "ran the integration suite", "manual QA on staging"])
    )
    if r.random() < 0.3:
        body.add("\n\nReviewed with ").val(("NAME", d.g.fake.name(), None)).add(".")
    diff = _diff(d, path, fmt, items[k:], d.room(reserve=body.n))
    title = r.choice(PR_CHANGES)
    return f"{title} ({path})", body, [(path, "text/x-diff", diff)]


@template("pr_env_diff", "pr", ("engineering",))
def _pr_env(d):
    return _pr(d, d.g.rng.choice([".env", "config/.env.production", "deploy/app.env"]), "env")


@template("pr_py_diff", "pr", ("engineering",))
def _pr_py(d):
    return _pr(d, d.g.rng.choice(["settings.py", "app/config.py", "scripts/sync.py"]), "py")


@template("pr_yaml_diff", "pr", ("engineering",))
def _pr_yaml(d):
    return _pr(d, d.g.rng.choice(["config.yaml", "k8s/secrets.yaml", ".github/workflows/ci.yml"]), "yaml")


@template("pr_json_diff", "pr", ("engineering",))
def _pr_json(d):
    return _pr(d, d.g.rng.choice(["config.json", "appsettings.json", "fixtures/users.json"]), "json")


@template("pr_shell_diff", "pr", ("engineering",))
def _pr_shell(d):
    return _pr(d, d.g.rng.choice(["scripts/deploy.sh", "bin/bootstrap.sh", "ops/rotate.sh"]), "sh")


@template("pr_readme_diff", "pr", ("engineering",))
def _pr_readme(d):
    return _pr(d, d.g.rng.choice(["README.md", "docs/setup.md", "CONTRIBUTING.md"]), "md")


@template("pr_sql_migration", "pr", ("engineering",))
def _pr_sql(d):
    return _pr(d, f"db/migrations/{d.g.rng.randint(1, 250):04d}_{d.g.fake.word()}.sql", "sql")


# -- uploads


def _rows(d: _Doc, a: _Text, header: str, row: str, sep: str = ",") -> None:
    """A table of mostly harmless rows; a few rows carry a value in the last (notes) column."""
    r = d.g.rng
    a.add(header.replace(",", sep) + "\n")

    def filler() -> str:
        return d.say(row.replace(",", sep) + r.choice(CSV_NOTES)) + "\n"

    def put(t: _Text, v) -> None:
        t.add(d.say(row.replace(",", sep)))
        if r.random() < 0.5:
            t.add('"').item(v).add('"\n')
        else:
            d.carry(t, v, lead=0.0, tail=0.0, end="")
            t.add("\n")

    d.weave(a, d.values(), d.room(0.9), filler, put)


@template("upload_csv", "upload", ("hr", "finance", "sales"))
def _up_csv(d: _Doc):
    r = d.g.rng
    a = _Text()
    _rows(d, a, *r.choice(CSV_SCHEMAS))
    body = r.choice(["export attached", "here's the export you asked for", "", "csv from the report builder"])
    return "", _Text(body), [(d.g.fake.file_name(extension="csv"), "text/csv", a)]


@template("upload_tsv", "upload", ("hr", "finance", "support"))
def _up_tsv(d: _Doc):
    r = d.g.rng
    a = _Text()
    _rows(d, a, *r.choice(CSV_SCHEMAS), sep="\t")
    return (
        "",
        _Text(r.choice(["tab-separated dump", "", "weekly sheet"])),
        [("sheet.tsv", "text/tab-separated-values", a)],
    )


@template("upload_log", "upload", ("engineering", "support"))
def _up_log(d: _Doc):
    r = d.g.rng

    def stamp(level: str) -> str:
        return f"{d.tick(20):%Y-%m-%dT%H:%M:%S}Z {level} [{d.slots['service']()}] "

    def line() -> str:
        return stamp(r.choice(["INFO", "INFO", "INFO", "DEBUG", "WARN"])) + d.say(r.choice(LOG_MSGS)) + "\n"

    def put(t: _Text, v) -> None:
        t.add(stamp(r.choice(["WARN", "ERROR", "DEBUG"])))
        if r.random() < 0.5:
            t.phrase(r.choice(LOG_CARRIERS), v)
        else:
            d.carry(t, v, lead=0.0, tail=0.0, end="")
        t.add("\n")

    a = _Text()
    d.weave(a, d.values(), d.room(0.95), line, put)
    a.add(stamp("INFO") + "shutdown complete\n")
    return (
        "",
        _Text(r.choice(["logs from the incident", "", "app.log attached"])),
        [("app.log", "text/plain", a)],
    )


@template("upload_report", "upload", ("engineering", "finance", "sales", "support", "hr"))
def _up_report(d: _Doc):
    r = d.g.rng
    a = _Text(d.say(f"# {d.team.title()} weekly report, week of {{date}}\n\n## Highlights\n"))
    for _ in range(r.randint(2, 4)):
        a.add("- " + d.sents(1) + "\n")
    a.add("\n## Metrics\n\n| metric | this week | last week |\n|---|---|---|\n")
    for m in r.sample(["tickets closed", "deploys", "signups", "revenue", "incidents", "NPS", "hires"], 3):
        a.add(d.say(f"| {m} | {{n}} | {{n}} |\n"))
    a.add("\n## Notes and risks\n\n")
    d.weave(a, d.values(), d.room(0.95), d.para_sep, d.carry_para)
    return "", _Text("weekly report"), [("report.md", "text/markdown", a)]


@template("upload_env", "upload", ("engineering",))
def _up_env(d: _Doc):
    r = d.g.rng
    a = _Text(d.say("# generated {isodate}\n"))
    d.weave(
        a,
        d.values(),
        d.room(0.95),
        lambda: r.choice(CODE["env"]) + "\n\n",
        lambda t, v: _kv_line(d, t, v, "env"),
    )
    return "", _Text(), [(r.choice(["prod.env", ".env.local", "worker.env"]), "text/plain", a)]


@template("upload_json", "upload", ("engineering", "finance", "support"))
def _up_json(d: _Doc):
    r = d.g.rng
    a = _Text("{\n")
    d.weave(
        a,
        d.values(),
        d.room(0.95),
        lambda: r.choice(CODE["json"]) + "\n",
        lambda t, v: _kv_line(d, t, v, "json"),
    )
    a.add('  "ok": true\n}\n')
    return "", _Text("payload"), [("payload.json", "application/json", a)]


@template("upload_json_test", "upload", ("engineering", "finance"))
def _up_json_test(d: _Doc):  # a nested JSON layout unlike the flat one in val
    r = d.g.rng

    def record() -> str:
        kind = r.choice(["event", "metric", "note"])
        data = {"event": lambda: d.say(r.choice(LOG_MSGS)), "metric": lambda: d.say("latency_p99={ms}ms"),
                "note": lambda: d.sents(1)}[kind]()  # fmt: skip
        return f'  {{"kind": "{kind}", "at": "{d.tick(600):%Y-%m-%dT%H:%M:%S}", "data": "{data}"}},\n'

    def put(t: _Text, v) -> None:
        kind = _key(d, v) if r.random() < 0.5 else "note"
        t.add(f'  {{"kind": "{kind}", "at": "{d.tick(600):%Y-%m-%dT%H:%M:%S}", "data": "')
        if kind == "note" and "\n" not in v[1]:
            d.carry(t, v, lead=0.0, tail=0.0, end="")
        else:
            t.item(v)
        t.add('"},\n')

    a = _Text('{"records": [\n')
    d.weave(a, d.values(), d.room(0.95), record, put)
    a.add("  {}\n]}\n")
    return "", _Text("dump"), [("records.json", "application/json", a)]


@template("upload_notes", "upload")
def _up_notes(d: _Doc):
    r = d.g.rng
    a = _Text(
        d.say(f"MEETING NOTES, {d.team} - {{date}}\n\nPresent: ") + ", ".join(d.people[: r.randint(2, 4)])
    )
    a.add("\n\n")
    d.weave(a, d.values(), d.room(0.9), d.para_sep, d.carry_para)
    a.add(d.say("Next meeting: {day} at {time}\n"))
    return "", _Text(), [("notes.md", "text/markdown", a)]


@template("upload_letter", "upload", ("legal", "hr", "finance", "sales"))
def _up_letter(d: _Doc):
    r = d.g.rng
    a = _Text(d.say(f"{d.company}\n{{date}}, 2024\n\nDear {{first}},\n\n"))
    d.weave(a, d.values(), d.room(0.9, reserve=60), d.para_sep, d.carry_para)
    a.add(r.choice(["Sincerely,", "Yours sincerely,", "Kind regards,"]) + "\n\n").val(
        ("NAME", d.sender_name, None)
    )
    a.add("\n" + d.g.fake.job() + "\n")
    return "", _Text(r.choice(["letter attached", "signed letter", ""])), [("letter.txt", "text/plain", a)]


# Disjoint template sets per split; every channel appears in every split.
SPLIT_TEMPLATES = {
    "train": (
        "email_plain", "email_reply_chain", "email_hr_onboarding", "email_meeting_followup", "chat_informal",
        "chat_transcript", "chat_standup", "pr_env_diff", "pr_py_diff", "pr_yaml_diff", "upload_csv",
        "upload_log", "upload_report",
    ),
    "val": (
        "email_forward", "email_legal_memo", "email_vendor_followup", "chat_support_ticket",
        "chat_dm_handoff", "pr_json_diff", "pr_shell_diff", "upload_env", "upload_json", "upload_tsv",
    ),
    "test": (
        "email_with_attachment", "email_support_escalation", "chat_thread_reply", "chat_incident_channel",
        "pr_readme_diff", "pr_sql_migration", "upload_notes", "upload_json_test", "upload_letter",
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- generation


def _finish(d: _Doc, name: str, subject, body: _Text, atts: list) -> Example:
    fields: list[tuple[str, _Text]] = [("body", body)]
    if isinstance(subject, _Text):
        fields.append(("subject", subject))
        subject_text = subject.text()
    else:
        subject_text = subject
    attachments = []
    for i, (fname, mime, t) in enumerate(atts):
        attachments.append(Attachment(fname, mime, t.text()))
        fields.append((f"attachments.{i}.text", t))
    doc = Document(
        channel=d.channel, role=d.role, sender=d.sender, recipients=list(d.recipients), subject=subject_text,
        body=body.text(), attachments=attachments, links=list(d.links), metadata=dict(d.metadata),
        org_domains=list(d.org_domains),
    )  # fmt: skip
    spans, obf, forms, negs = [], set(), {}, []
    for path, t in fields:
        raw = doc.field_text(path)
        for start, end, label, form, value in t.vals:
            assert raw[start:end] == value, (path, start, end, value)
            sp = Span(path, start, end, label)
            spans.append(sp)
            if form:
                obf.add(sp)
                forms[sp] = form
        for start, end, kind, value in t.negs:
            assert raw[start:end] == value, (path, start, end, value)
            negs.append((path, start, end, kind))
    # Addresses in the header fields are real-looking emails too (never documentation domains).
    for path, value in [("sender", d.sender_addr)] + [
        (f"recipients.{i}", a) for i, a in enumerate(d.recipient_addrs)
    ]:
        raw = doc.field_text(path)
        start = raw.index(value)
        spans.append(Span(path, start, start + len(value), "EMAIL"))
    return Example(doc, spans, obf, negs, name, forms)


def _check_difficulty(difficulty: str) -> None:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")


def _example(seed: int, split: str, i: int, difficulty: str = "mixed") -> Example:
    """Document `i` of (seed, split, difficulty); it does not depend on how many documents are drawn."""
    _check_difficulty(difficulty)
    key = f"{seed}/{split}/{i}" + ("" if difficulty == "mixed" else f"/{difficulty}")
    g = _Gen(zlib.crc32(key.encode()), split)
    names = SPLIT_TEMPLATES[split]
    name = names[g.rng.randrange(len(names))]
    channel, roles, fn = TEMPLATES[name]
    d = _Doc(g, channel, roles, difficulty)
    subject, body, atts = fn(d)
    return _finish(d, name, subject, body, atts)


def generate(n: int, seed: int = 0, split: str = "train", difficulty: str = "mixed") -> list[Example]:
    """`n` documents of `split` at `difficulty` (easy | mixed | hard); the same (n, seed, split, difficulty)
    always gives the same documents, and document i does not depend on n (so a larger corpus extends a
    smaller one)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_difficulty(difficulty)
    out = []
    for i in range(n):
        ex = _example(seed, split, i, difficulty)
        ex.doc.id = doc_id(seed, split, i, difficulty)
        out.append(ex)
    return out


def doc_id(seed: int, split: str, i: int, difficulty: str = "mixed") -> str:
    """`train-0-000042` for mixed documents (as before the difficulty knob), `train-hard-0-000042` else."""
    tag = split if difficulty == "mixed" else f"{split}-{difficulty}"
    return f"{tag}-{seed}-{i:06d}"


def example_record(ex: Example) -> dict:
    """One JSONL record: the document schema plus `id`, gold spans (with obfuscation flags and forms),
    hard negatives and, when `chinwag.dlp.policy` exists, the document labels."""
    rec = ex.doc.to_dict()
    rec["id"] = ex.doc.id
    rec["template"] = ex.template
    rec["spans"] = [
        {"field": s.field, "start": s.start, "end": s.end, "label": s.label, "obfuscated": s in ex.obfuscated,
         "form": ex.forms.get(s)}
        for s in ex.spans
    ]  # fmt: skip
    rec["hard_negatives"] = [
        {"field": f, "start": a, "end": b, "kind": k} for f, a, b, k in ex.hard_negatives
    ]
    labels = doc_labels(ex)
    if labels is not None:
        rec["labels"] = labels
    return rec


def doc_labels(ex: Example) -> dict | None:
    try:
        from chinwag.dlp.policy import document_labels
    except ImportError:
        return None
    return document_labels(ex.doc, ex.spans, obfuscated=ex.obfuscated).to_dict()


def write_jsonl(examples: list[Example], path: str | Path) -> None:
    """Atomically write one JSON record per line."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(example_record(ex), ensure_ascii=False) + "\n")


def example_from_record(
    rec: dict, where: str = "<record>", need_spans: bool = False, error: type[ValueError] = ValueError
) -> Example:
    """The inverse of `example_record`: a JSONL record -> Example (document, gold spans, obfuscation forms,
    negatives). Errors are `error`s whose message starts with `where` and names the field."""
    if not isinstance(rec, dict):
        raise error(f"{where}: expected a JSON object")
    keep = set(Document.__dataclass_fields__)
    try:
        doc = Document.from_dict({k: v for k, v in rec.items() if k in keep})
    except DocumentError as e:
        raise error(f"{where}: {e}") from None
    if need_spans and not isinstance(rec.get("spans"), list):
        raise error(f"{where}: spans: missing or not a list (eval needs gold spans, as written by "
                            "`chinwag dlp synth`)")  # fmt: skip
    spans, obf, forms = [], set(), {}
    for i, s in enumerate(rec.get("spans") or []):
        try:
            sp = Span.from_dict(s)
            value = doc.field_text(sp.field)
        except (KeyError, TypeError, ValueError) as e:  # DocumentError is a ValueError
            raise error(f"{where}: spans.{i}: {e}") from None
        if sp.end > len(value):
            raise error(f"{where}: spans.{i}: end {sp.end} is past the end of {sp.field} ({len(value)})")
        spans.append(sp)
        if s.get("obfuscated"):
            obf.add(sp)
            forms[sp] = str(s.get("form") or "unknown")
    negs = []
    for i, n in enumerate(rec.get("hard_negatives") or []):
        try:
            negs.append((str(n["field"]), int(n["start"]), int(n["end"]), str(n["kind"])))
        except (KeyError, TypeError, ValueError) as e:
            raise error(f"{where}: hard_negatives.{i}: bad entry ({e})") from None
    return Example(doc, spans, obf, negs, str(rec.get("template", "")), forms)
