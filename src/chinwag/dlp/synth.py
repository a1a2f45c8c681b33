"""Synthetic DLP corpus: seeded documents with gold spans by construction.

Every document is built piece by piece: plain text is appended, and each sensitive value is appended
through `_Text.val`, which records its code-point span at that moment. So gold spans never come from a
regex over the finished text; they are what we inserted, and `_finish` asserts that
`doc.field_text(field)[start:end]` is exactly the inserted value.

Templates are document *skeletons* (an email reply chain, an informal chat, a PR diff of a .env file, a
CSV upload, ...). Each split draws from its own disjoint set of skeletons, so the test split measures
generalisation to unseen layouts rather than memory. Values, obfuscation forms and hard negatives are
shared by all splits: the model must learn them, and every split must contain all of them.
"""

from __future__ import annotations

import base64
import datetime
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faker import Faker

from chinwag.dlp.dsl import Attachment, Document
from chinwag.dlp.labels import LABELS, Span, is_public_test_card, luhn_ok
from chinwag.utils import atomic_path

SPLITS = ("train", "val", "test")
FORMS = ("spaced_digits", "at_dot", "base64", "hex", "url_encoded", "zero_width", "homoglyph", "split_lines")
NEG_KINDS = (
    "test_card", "doc_email", "aws_doc_key", "placeholder", "uri_no_password", "uri_placeholder_password",
    "masked_card", "isbn", "ean", "uuid", "git_sha", "checksum", "version", "order_number",
    "tracking_number", "company", "city",
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
    "a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "i": "і", "y": "у", "s": "ѕ",
    "A": "А", "E": "Е", "O": "О", "P": "Р", "C": "С", "T": "Т", "H": "Н", "K": "К", "M": "М", "B": "В",
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
    """Appends text to one field while recording where each value and hard negative landed."""

    def __init__(self):
        self.parts: list[str] = []
        self.n = 0
        self.vals: list[tuple[int, int, str, str | None, str]] = []  # start, end, label, form, text
        self.negs: list[tuple[int, int, str, str]] = []  # start, end, kind, text

    def add(self, s: str) -> _Text:
        self.parts.append(s)
        self.n += len(s)
        return self

    def val(self, v: tuple[str, str, str | None]) -> _Text:
        label, s, form = v
        self.vals.append((self.n, self.n + len(s), label, form, s))
        return self.add(s)

    def neg(self, v: tuple[str, str]) -> _Text:
        kind, s = v
        self.negs.append((self.n, self.n + len(s), kind, s))
        return self.add(s)

    def phrase(self, pattern: str, v) -> _Text:
        """`pattern` holds one `{}`: the value (a val triple or a neg pair) goes there."""
        pre, post = pattern.split("{}")
        self.add(pre)
        self.val(v) if len(v) == 3 else self.neg(v)
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


# ----------------------------------------------------------------------------- phrases

PHRASES = {
    "EMAIL": ("you can reach me at {}", "send it to {} please", "my personal address is {}", "cc {} on this"),
    "PHONE": ("call me on {}", "mobile: {}", "her cell is {}", "ring {} after 5"),
    "PAN": ("card number {}", "charge it to {}", "the customer's card is {}", "use {} for the refund"),
    "SSN": ("SSN {}", "social security number: {}", "his SSN is {}", "ssn={}"),
    "SECRET_KEY": ("the key is {}", "token: {}", "use this secret: {}", "here's the prod key {}"),
    "DB_URI": ("connect with {}", "DATABASE_URL is {}", "prod db: {}", "try {} from the bastion"),
    "NDA_TERM": ("this is covered by the {}", "{} - do not forward", "marked {}", "see the {} terms"),
    "MATTER_ID": ("re matter {}", "file under {}", "billing to {}", "matter no. {}"),
    "NAME": ("{} starts Monday", "spoke with {} today", "{} asked about it", "assigning to {}"),
    "ADDRESS": ("ship to {}", "she lives at {}", "mailing address: {}", "office moved to {}"),
}
NEG_PHRASES = {
    "test_card": ("use test card {} in staging", "the sandbox card {} works"),
    "doc_email": ("e.g. {}", "the docs use {} as the sample"),
    "aws_doc_key": ("the AWS docs example key {}", "placeholder id {}"),
    "placeholder": ("set the key to {}", "token: {}"),
    "uri_no_password": ("local db is {}", "connect to {}"),
    "uri_placeholder_password": ("template URL {}", "DATABASE_URL={} (fill in)"),
    "masked_card": ("card {} on file", "paid with {}"),
    "isbn": ("ISBN {}", "book {}"),
    "ean": ("barcode {}", "EAN {}"),
    "uuid": ("request id {}", "trace {}"),
    "git_sha": ("fixed in {}", "commit {}"),
    "checksum": ("sha {}", "checksum {}"),
    "version": ("bumped to {}", "released {}"),
    "order_number": ("order {}", "invoice {}"),
    "tracking_number": ("tracking {}", "UPS {}"),
    "company": ("we signed with {}", "{} renewed"),
    "city": ("she is in {}", "flying to {}"),
}
KEYS = {
    "SECRET_KEY": (
        "API_KEY",
        "SECRET_KEY",
        "auth_token",
        "password",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
    ),
    "DB_URI": ("DATABASE_URL", "db_uri", "MONGO_URL", "REDIS_URL"),
    "EMAIL": ("contact_email", "EMAIL", "owner"),
    "PHONE": ("phone", "ON_CALL_PHONE"),
    "PAN": ("card_number", "pan"),
    "SSN": ("ssn", "tax_id"),
    "NAME": ("full_name", "contact"),
    "ADDRESS": ("address", "ship_to"),
    "NDA_TERM": ("classification", "notice"),
    "MATTER_ID": ("matter_id", "MATTER"),
}


# ----------------------------------------------------------------------------- document context


class _Doc:
    """The shared parts of one document: who sends, to whom, where, and which values go in."""

    def __init__(self, g: _Gen, channel: str, roles: tuple[str, ...]):
        self.g = g
        r, f = g.rng, g.fake
        self.channel = channel
        self.role = r.choice(roles) if r.random() < 0.7 else r.choice(ROLES)
        self.org = f.domain_name()
        self.org_domains = [self.org] + ([f.domain_name()] if r.random() < 0.2 else [])
        self.sender_name = f.name()
        local = self.sender_name.lower().replace(" ", ".").replace("'", "")
        self.sender_addr = f"{local}@{self.org}"
        # Half the senders carry a display name, so a signature NAME is first-party (policy.is_third_party).
        self.sender = f"{self.sender_name} <{self.sender_addr}>" if r.random() < 0.5 else self.sender_addr
        kind = r.random()
        if kind < 0.5:  # internal colleagues
            self.recipients = [f"{f.user_name()}@{self.org}" for _ in range(r.randint(1, 3))]
        elif kind < 0.85:  # an outside party
            self.recipients = [f"{f.user_name()}@{self.org}", g.email()][: r.randint(1, 2)]
            if r.random() < 0.5:
                self.recipients.reverse()
        else:  # a self-forward to personal webmail
            self.recipients = [f"{local.replace('.', '')}{r.randint(1, 99)}@{r.choice(WEBMAIL)}"]
        dest = r.choices(["internal", "external", "public"], weights=[6, 3, 1])[0]
        if any(not rc.endswith("@" + self.org) for rc in self.recipients) and dest == "internal":
            dest = "external"
        self.metadata: dict = {"destination": dest}
        self.links: list[str] = []
        if r.random() < 0.1:
            self.links.append(r.choice(PASTE_SITES) + f.lexify("????????"))
        elif r.random() < 0.2:
            self.links.append(f.url())
        # The payload: which sensitive labels and which hard negatives this document carries.
        n_pos = r.choices([0, 1, 2, 3, 4], weights=[2, 3, 3, 2, 1])[0]
        self.pos = [r.choice(LABELS) for _ in range(n_pos)]
        self.n_neg = r.choices([0, 1, 2, 3], weights=[2, 3, 3, 2])[0]
        self.obf_p = r.choice([0.0, 0.15, 0.4])

    def values(self) -> list:
        """Interleaved sensitive values and hard negatives, each a val triple or a neg pair."""
        items = [self.g.value(lab, self.obf_p) for lab in self.pos] + [
            self.g.negative() for _ in range(self.n_neg)
        ]
        self.g.rng.shuffle(items)
        return items

    def sentence(self, t: _Text, v) -> None:
        pool = PHRASES[v[0]] if len(v) == 3 else NEG_PHRASES[v[0]]
        t.phrase(self.g.rng.choice(pool), v)

    def prose(self, t: _Text, items: list, sep: str = ". ", filler: float = 0.5) -> None:
        for v in items:
            if self.g.rng.random() < filler:
                t.add(self.g.fake.sentence() + " ")
            self.sentence(t, v)
            t.add(sep)


# ----------------------------------------------------------------------------- templates
# Each template returns (subject, body: _Text, attachments: list[(name, mime, _Text)]).

TEMPLATES: dict[str, tuple[str, tuple[str, ...], Callable]] = {}


def template(name: str, channel: str, roles: tuple[str, ...] = ROLES):
    def deco(fn):
        TEMPLATES[name] = (channel, roles, fn)
        return fn

    return deco


def _signature(d: _Doc, t: _Text, style: int) -> None:
    g = d.g
    t.add(["\n\n-- \n", "\n\nBest,\n", "\n\nThanks,\n", "\n\nCheers\n"][style % 4])
    if g.rng.random() < 0.6:
        t.val(("NAME", d.sender_name, None))
    else:
        t.add(d.sender_name.split()[0])
    if g.rng.random() < 0.3:
        t.add("\n").add(g.fake.job()).add(" | ").neg(("company", g.fake.company()))
    if g.rng.random() < 0.25:
        t.add("\nM: ").val(("PHONE", g.phone(), None))


@template("email_plain", "email")
def _email_plain(d: _Doc):
    t = _Text().add(d.g.rng.choice(["Hi team,\n\n", "Hello,\n\n", "Hi all,\n\n"]))
    d.prose(t, d.values())
    _signature(d, t, 0)
    return d.g.fake.sentence(nb_words=5).rstrip("."), t, []


@template("email_reply_chain", "email")
def _email_reply(d: _Doc):
    g, items = d.g, d.values()
    t = _Text().add("Sounds good, see below.\n")
    half = len(items) // 2
    d.prose(t, items[:half], sep=".\n")
    _signature(d, t, 1)
    other = g.fake.name()
    t.add(f"\n\nOn {g.fake.date(end_datetime=_END)} at {g.fake.time(end_datetime=_END)[:5]}, {other} <").add(
        f"{g.fake.user_name()}@{d.org}"
    ).add("> wrote:\n> ")
    d.prose(t, items[half:], sep=".\n> ")
    return "Re: " + g.fake.sentence(nb_words=4).rstrip("."), t, []


@template("email_forward", "email")
def _email_forward(d: _Doc):
    g = d.g
    t = _Text().add("FYI, forwarding.\n\n---------- Forwarded message ---------\nFrom: ")
    t.add(g.fake.name()).add("\nSubject: ").add(g.fake.catch_phrase()).add("\n\n")
    d.prose(t, d.values(), sep=".\n")
    return "Fwd: " + g.fake.catch_phrase(), t, []


@template("email_with_attachment", "email")
def _email_attach(d: _Doc):
    g, items = d.g, d.values()
    t = _Text().add("Please find the details attached.\n")
    a = _Text()
    for v in items:
        d.sentence(a, v)
        a.add("\n")
    _signature(d, t, 2)
    return g.fake.bs().capitalize(), t, [("notes.txt", "text/plain", a)]


@template("email_legal_memo", "email", ("legal",))
def _email_memo(d: _Doc):
    g = d.g
    t = _Text().add("PRIVILEGED REVIEW\n\nCounsel,\n\n")
    d.prose(t, d.values(), sep=";\n", filler=0.3)
    _signature(d, t, 3)
    return "Memo: " + g.fake.catch_phrase(), t, []


@template("email_hr_onboarding", "email", ("hr",))
def _email_hr(d: _Doc):
    t = _Text().add("New hire paperwork below.\n\n")
    for v in d.values():
        t.add("- ")
        d.sentence(t, v)
        t.add("\n")
    _signature(d, t, 1)
    return "Onboarding", t, []


@template("chat_informal", "chat")
def _chat_informal(d: _Doc):
    g = d.g
    t = _Text()
    for v in d.values():
        t.add(g.rng.choice(["hey ", "ok so ", "fyi ", "lol ", ""]))
        d.sentence(t, v)
        t.add(g.rng.choice(["\n", " 🙏\n", "!!\n", " thx\n"]))
    if not t.parts:
        t.add("anyone around? " + g.fake.sentence())
    return "", t, []


@template("chat_transcript", "chat")
def _chat_transcript(d: _Doc):
    g = d.g
    t = _Text()
    for v in d.values():
        t.add(f"[{g.fake.time(end_datetime=_END)[:5]}] {g.fake.first_name().lower()}: ")
        d.sentence(t, v)
        t.add("\n")
    t.add(f"[{g.fake.time(end_datetime=_END)[:5]}] {g.fake.first_name().lower()}: {g.fake.sentence()}\n")
    return "", t, []


@template("chat_support_ticket", "chat", ("support", "sales"))
def _chat_support(d: _Doc):
    g = d.g
    t = _Text().add(f"Ticket #{g.fake.numerify('######')}\nCustomer says: ")
    d.prose(t, d.values(), sep=". ", filler=0.2)
    t.add("\nAgent: thanks, looking into it.")
    return "", t, []


@template("chat_thread_reply", "chat")
def _chat_thread(d: _Doc):
    g = d.g
    t = _Text().add("> " + g.fake.sentence() + "\n")
    d.prose(t, d.values(), sep=" / ", filler=0.3)
    return "", t, []


def _kv_line(d: _Doc, t: _Text, v, fmt: str) -> None:
    """One `key = value` line in the syntax of `fmt`; the span covers the value only."""
    g = d.g
    key = g.rng.choice(KEYS.get(v[0], ("value", "ref", "id")))
    if fmt in ("json", "yaml") and "\n" in v[1]:  # multi-line values need a block form; keep it prose
        d.sentence(t.add("# "), v)
        t.add("\n")
        return
    pre, post = {
        "env": (f"{key.upper()}=", "\n"),
        "py": (f'{key.upper()} = "', '"\n'),
        "yaml": (f"  {key.lower()}: ", "\n"),
        "json": (f'  "{key.lower()}": "', '",\n'),
    }[fmt]
    t.add(pre)
    t.val(v) if len(v) == 3 else t.neg(v)
    t.add(post)


def _diff(d: _Doc, path: str, fmt: str) -> _Text:
    g = d.g
    t = _Text().add(
        f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1,3 +1,{g.rng.randint(4, 9)} @@\n"
    )
    t.add(
        " "
        + {"env": "# settings", "py": "import os", "yaml": "config:", "json": "{", "md": "# Setup"}[fmt]
        + "\n"
    )
    for v in d.values():
        t.add("+")
        if fmt == "md" or (fmt == "py" and g.rng.random() < 0.3):
            t.add("# " if fmt == "py" else "")
            d.sentence(t, v)
            t.add("\n")
        else:
            _kv_line(d, t, v, fmt)
    return t


def _pr(d: _Doc, path: str, fmt: str):
    g = d.g
    d.metadata["repo_visibility"] = g.rng.choice(["private", "private", "internal", "public"])
    if d.metadata["repo_visibility"] == "public":
        d.metadata["destination"] = "public"
    body = _Text().add(g.fake.sentence() + "\n\n")
    if g.rng.random() < 0.3:
        body.add("Reviewed with ").val(("NAME", g.fake.name(), None)).add(".")
    return f"Update {path}", body, [(path, "text/x-diff", _diff(d, path, fmt))]


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


@template("pr_readme_diff", "pr", ("engineering",))
def _pr_readme(d):
    return _pr(d, d.g.rng.choice(["README.md", "docs/setup.md", "CONTRIBUTING.md"]), "md")


@template("upload_csv", "upload", ("hr", "finance", "sales"))
def _up_csv(d: _Doc):
    g = d.g
    a = _Text().add("id,field,value,updated\n")
    for i, v in enumerate(d.values()):
        a.add(f'{i + 1},{v[0].lower()},"')
        a.val(v) if len(v) == 3 else a.neg(v)
        a.add(f'",{g.fake.date(end_datetime=_END)}\n')
    return "", _Text().add("export attached"), [(g.fake.file_name(extension="csv"), "text/csv", a)]


@template("upload_log", "upload", ("engineering", "support"))
def _up_log(d: _Doc):
    g = d.g
    a = _Text()
    for v in d.values():
        level = g.rng.choice(["INFO", "WARN", "DEBUG", "ERROR"])
        a.add(f"{g.fake.iso8601(end_datetime=_END)} {level} [{g.fake.word()}] ")
        d.sentence(a, v)
        a.add("\n")
    a.add(f"{g.fake.iso8601(end_datetime=_END)} INFO done\n")
    return "", _Text().add("logs from the incident"), [("app.log", "text/plain", a)]


@template("upload_env", "upload", ("engineering",))
def _up_env(d: _Doc):
    a = _Text().add("# generated\n")
    for v in d.values():
        _kv_line(d, a, v, "env")
    return "", _Text(), [("prod.env", "text/plain", a)]


@template("upload_json", "upload", ("engineering", "finance", "support"))
def _up_json(d: _Doc):
    a = _Text().add("{\n")
    for v in d.values():
        _kv_line(d, a, v, "json")
    a.add('  "ok": true\n}\n')
    return "", _Text().add("payload"), [("payload.json", "application/json", a)]


@template("upload_notes", "upload")
def _up_notes(d: _Doc):
    a = _Text().add("MEETING NOTES\n\n")
    d.prose(a, d.values(), sep=".\n", filler=0.6)
    return "", _Text(), [("notes.md", "text/markdown", a)]


# Disjoint template sets per split; every channel appears in every split.
SPLIT_TEMPLATES = {
    "train": (
        "email_plain", "email_reply_chain", "email_hr_onboarding", "chat_informal", "chat_transcript",
        "pr_env_diff", "pr_py_diff", "pr_yaml_diff", "upload_csv", "upload_log",
    ),
    "val": (
        "email_forward", "email_legal_memo", "chat_support_ticket", "pr_json_diff", "upload_env",
        "upload_json",
    ),
    "test": (
        "email_with_attachment", "chat_thread_reply", "pr_readme_diff", "upload_notes", "upload_json_test",
    ),
}  # fmt: skip


@template("upload_json_test", "upload", ("engineering", "finance"))
def _up_json_test(d: _Doc):  # a nested JSON layout unlike the flat one in val
    a = _Text().add('{"records": [\n')
    for v in d.values():
        a.add('  {"type": "' + v[0].lower() + '", "data": "')
        a.val(v) if len(v) == 3 else a.neg(v)
        a.add('"},\n')
    a.add("  {}\n]}\n")
    return "", _Text().add("dump"), [("records.json", "application/json", a)]


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
        (f"recipients.{i}", r) for i, r in enumerate(d.recipients)
    ]:
        raw = doc.field_text(path)
        start = raw.index(value)
        spans.append(Span(path, start, start + len(value), "EMAIL"))
    return Example(doc, spans, obf, negs, name, forms)


def _example(seed: int, split: str, i: int) -> Example:
    g = _Gen(zlib.crc32(f"{seed}/{split}/{i}".encode()), split)
    names = SPLIT_TEMPLATES[split]
    name = names[g.rng.randrange(len(names))]
    channel, roles, fn = TEMPLATES[name]
    d = _Doc(g, channel, roles)
    subject, body, atts = fn(d)
    return _finish(d, name, subject, body, atts)


def generate(n: int, seed: int = 0, split: str = "train") -> list[Example]:
    """`n` documents of `split`; the same (n, seed, split) always gives the same documents, and document i
    does not depend on n (so a larger corpus extends a smaller one)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for i in range(n):
        ex = _example(seed, split, i)
        ex.doc.id = f"{split}-{seed}-{i:06d}"
        out.append(ex)
    return out


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
