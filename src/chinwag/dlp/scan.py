"""The DLP scanner at inference time: a trained run folder in, one result per document out (issue 8).

    scanner = Scanner.load("runs/dlp")
    scanner.scan(doc)  # -> {"id", "spans", "scores", "decision", "rationale", "latency_ms"}

Pipeline for one document:
1. `serialize` it with the DSL and tokenize (exact code-point offsets).
2. Run the model over windows of at most `window` tokens (the training `max_len`). A longer document is cut
   into overlapping windows; every window after the first starts with the document's header tokens
   (`<|doc channel=.. role=.. destination=..|>`), so each window knows the channel, role and destination.
   Each token takes its BIO tag from the window in which it sits most centrally (farthest from an edge, so
   it saw the most context); document logits are combined across windows by max (sensitivity, exposure,
   obfuscation: any window that sees a risk raises it) and min (context: any inconsistent window lowers
   it). This is the simple version; "DLP scanner II" carries the slow state across windows.
3. BIO tags -> field spans (`tokenizer.bio_to_spans`), so every span is (field path, code points of the
   raw field value), never tokenizer units.
4. Exact validators veto spans as a last step (`veto_reason`): a PAN that fails Luhn or is a published test
   card, an impossible SSN, a documentation-domain email, a placeholder secret, a DB URI without a real
   password, a malformed matter number. They only ever remove spans; the model is the detector.
5. Scores: the document head logits divided by the per-head temperature in `calib.json`, then sigmoid.
6. Decision and rationale: `policy.document_labels` on the predicted spans, the same rules that labelled
   the training data. The policy also needs to know which spans are written obfuscated; the spans do not
   say, so a span counts as obfuscated when `obfuscation_form` recognises its form (zero-width characters,
   homoglyphs, "at"/"dot", hex/base64/url-encoding, spaced digits, a value split across lines), and when
   the calibrated obfuscation head is >= 0.5 but no span shows a known form, every content span does.

Run folder (written by `chinwag.dlp.train`): `model.safetensors` + `config.json` (`train.load_dlp`),
`tokenizer.json` (`DLPTokenizer.load`), optional `calib.json` = {"temperature": {head: T}} (absent: T = 1)
and optional `train_config.json` (its `max_len` / `segment_len` set the window and segment length).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chinwag.dlp.dsl import Document, Serialized, is_content_field, serialize
from chinwag.dlp.hints import with_hints
from chinwag.dlp.labels import (
    MATTER_ID_RE,
    Span,
    is_doc_email,
    is_placeholder_secret,
    is_public_test_card,
    luhn_ok,
    ssn_ok,
)
from chinwag.dlp.model import DOC_HEADS, DLPModel
from chinwag.dlp.policy import DocLabels, document_labels
from chinwag.dlp.tokenizer import DLPTokenizer, Encoding, bio_to_spans
from chinwag.utils import read_json

TOKENIZER, CALIB, TRAIN_CONFIG = "tokenizer.json", "calib.json", "train_config.json"
DEFAULT_WINDOW = 512
# heads where any risky window makes the document risky (max of logits); "context" is high when consistent,
# so there the most inconsistent window wins (min)
MAX_HEADS = ("sensitivity", "exposure", "obfuscation")
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_ZW_TABLE = {ord(c): None for c in ZERO_WIDTH}


class ScanError(ValueError):
    """A run folder or input the scanner cannot use; the message names the file (and field)."""


# ----------------------------------------------------------------------------- validators and forms


def _clean(s: str) -> str:
    return s.translate(_ZW_TABLE)


def _unobfuscate_email(s: str) -> str:
    """ "jo [dot] lee (at) gmail dot com" -> "jo.lee@gmail.com", so the domain can be checked."""
    s = re.sub(r"\s*[\[\(\{]\s*at\s*[\]\)\}]\s*|\s+at\s+", "@", s, flags=re.I)
    s = re.sub(r"\s*[\[\(\{]\s*dot\s*[\]\)\}]\s*|\s+dot\s+", ".", s, flags=re.I)
    return s


_URI_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://([^/@\s]*)@")


def veto_reason(label: str, text: str) -> str | None:
    """Why an exact rule says the value `text` predicted as `label` is not sensitive (None: keep it).

    Only rules that are exact are here; anything fuzzy stays the model's call. Zero-width characters are
    dropped first, and digit checks read the digits only, so obfuscated values are validated too."""
    t = _clean(text)
    if label == "PAN":
        if not luhn_ok(t):
            return "fails the Luhn check"
        if is_public_test_card(t):
            return "public test card"
    elif label == "SSN":
        digits = "".join(c for c in t if c.isdigit())
        if len(digits) != 9 or not ssn_ok(digits):
            return "not a valid SSN (area/group/serial rules)"
    elif label == "EMAIL":
        if is_doc_email(_unobfuscate_email(t)):
            return "documentation domain"
    elif label == "SECRET_KEY":
        if is_placeholder_secret(t):
            return "placeholder"
    elif label == "DB_URI":
        if is_placeholder_secret(t):
            return "placeholder"
        m = _URI_USERINFO.match(t.strip())
        if m:  # a readable URI: it must carry a real password (encoded forms are left to the model)
            user, sep, password = m.group(1).partition(":")
            if not sep or not password:
                return "no password in the URI"
            if is_placeholder_secret(password):
                return "placeholder password"
    elif label == "MATTER_ID":
        compact = "".join(c for c in t if c.isalnum())
        if not (MATTER_ID_RE.fullmatch(t.strip()) or re.fullmatch(r"MTR\d{9}", compact)):
            return "not a matter number (MTR-dddd-ddddd)"
    return None


def _printable(b: bytes) -> bool:
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(s) and all(c.isprintable() or c in "\n\r\t" for c in s)


def obfuscation_form(label: str, text: str) -> str | None:
    """The obfuscation form a predicted value is written in (synth's FORMS names), or None when it looks
    plain. Every test is a property of the string itself, so this is exact on what it recognises."""
    if any(c in ZERO_WIDTH for c in text):
        return "zero_width"
    if any(c.isascii() and c.isalpha() for c in text) and any(
        "\u0370" <= c <= "\u04ff" for c in text
    ):  # Latin mixed with Greek/Cyrillic look-alikes
        return "homoglyph"
    if label == "EMAIL" and "@" not in text and _unobfuscate_email(text) != text:
        return "at_dot"
    t = text.strip()
    if re.fullmatch(r"(?:%[0-9A-Fa-f]{2}){4,}", t):
        return "url_encoded"
    if len(t) >= 16 and len(t) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", t) and _printable(bytes.fromhex(t)):
        return "hex"
    if len(t) >= 16 and len(t) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", t):
        try:
            if _printable(base64.b64decode(t, validate=True)):
                return "base64"
        except (binascii.Error, ValueError):
            pass
    if label in ("PHONE", "PAN", "SSN", "MATTER_ID"):
        runs = re.findall(r"\d+", text)
        if sum(map(len, runs)) >= 6 and all(len(r) == 1 for r in runs):
            return "spaced_digits"
    # a newline inside a value; addresses are multi-line by nature and PEM keys by format
    if "\n" in t and label != "ADDRESS" and not (label == "SECRET_KEY" and "-----BEGIN" in t):
        return "split_lines"
    return None


# ----------------------------------------------------------------------------- prediction


@dataclass
class DocPrediction:
    """Everything the scanner concluded about one document (the scan result is built from this)."""

    spans: list[Span]  # after validator vetoes, sorted by (field order, start)
    scores: dict[str, float]  # calibrated probabilities, DOC_HEADS keys
    decision: str
    rationale: list[str] = field(default_factory=list)
    raw_spans: list[Span] = field(default_factory=list)  # before vetoes
    logits: dict[str, float] = field(default_factory=dict)  # uncalibrated doc logits
    obfuscated: set[Span] = field(default_factory=set)  # the spans the policy treated as obfuscated
    labels: DocLabels | None = None
    n_tokens: int = 0
    n_windows: int = 0


@dataclass
class _Windows:
    ser: Serialized
    enc: Encoding
    rows: list[list[int]]  # token indices of `enc` per window
    owner: list[tuple[int, int]]  # per token: (window, position in that window) its BIO tag comes from


def plan_windows(n: int, header: int, window: int, overlap: int) -> tuple[list[list[int]], list[tuple]]:
    """Windows over `n` tokens whose first `header` tokens are repeated at the start of every window.

    Returns (rows, owner): rows[w] = token indices of window w; owner[t] = (w, k) with rows[w][k] == t, the
    window where token t is farthest from a window edge (for t < header: the first window)."""
    if n <= window:
        return [list(range(n))], [(0, k) for k in range(n)]
    if header * 2 > window:  # a monstrous header (huge org list): do not repeat it
        header = 0
    body = window - header  # content tokens per window
    stride = max(1, body - overlap)
    starts = list(range(header, n - body, stride)) + [n - body]
    rows = [list(range(header)) + list(range(a, a + body)) for a in starts]
    owner: list[tuple[int, int]] = [(0, k) for k in range(header)]
    for t in range(header, n):
        best, best_w = -1, 0
        for w, a in enumerate(starts):
            if a <= t < a + body:
                margin = min(t - a, a + body - 1 - t)
                if margin > best:
                    best, best_w = margin, w
        owner.append((best_w, header + t - starts[best_w]))
    return rows, owner


class Scanner:
    def __init__(
        self,
        model: DLPModel,
        tok: DLPTokenizer,
        temperature: dict[str, float] | None = None,
        window: int = DEFAULT_WINDOW,
        overlap: int | None = None,
        segment_len: int | None = None,
        validate: bool = True,
        batch_size: int = 8,
    ):
        pool = model.config.pool_every
        if segment_len is not None and (segment_len <= 0 or segment_len % pool):
            raise ScanError(
                f"segment_len must be a positive multiple of pool_every={pool}, got {segment_len}"
            )
        if window < 2:
            raise ScanError(f"window must be >= 2 tokens, got {window}")
        self.model = model.eval()
        self.tok = tok
        self.temperature = {h: 1.0 for h in DOC_HEADS} | dict(temperature or {})
        self.window = int(window)
        self.overlap = self.window // 4 if overlap is None else int(overlap)
        self.segment_len = segment_len
        self.validate = validate
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: str | Path, **overrides) -> Scanner:
        """Load a run folder; `overrides` (window, overlap, segment_len, validate, batch_size) win over
        train_config.json."""
        from chinwag.dlp.model import DLPConfigError
        from chinwag.dlp.train import CONFIG, WEIGHTS, load_dlp

        folder = Path(folder)
        if not folder.is_dir():
            raise ScanError(f"{folder}: not a run folder (directory not found)")
        for name in (WEIGHTS, CONFIG, TOKENIZER):
            if not (folder / name).is_file():
                raise ScanError(f"{folder / name}: file not found (is {folder} a DLP run folder?)")
        try:
            model = load_dlp(folder)
            tok = DLPTokenizer.load(folder / TOKENIZER)
        except (DLPConfigError, FileNotFoundError, OSError, RuntimeError, ValueError) as e:
            raise ScanError(str(e).splitlines()[0]) from None
        if tok.vocab_size > model.config.vocab_size:
            raise ScanError(f"{folder / TOKENIZER}: {tok.vocab_size} pieces but the model embeds "
                            f"{model.config.vocab_size}")  # fmt: skip
        kw: dict = {"temperature": load_calibration(folder / CALIB)}
        if (folder / TRAIN_CONFIG).is_file():
            tc = _read_obj(folder / TRAIN_CONFIG)
            if isinstance(tc.get("max_len"), int) and tc["max_len"] > 0:
                kw["window"] = tc["max_len"]
            seg = tc.get("segment_len")
            if seg is None or (isinstance(seg, int) and seg > 0 and seg % model.config.pool_every == 0):
                kw["segment_len"] = seg
        return cls(model, tok, **(kw | overrides))

    # --- model passes ---

    def _windows(self, doc: Document) -> _Windows:
        ser = serialize(doc)
        enc = self.tok.encode(ser.text)
        if self.model.config.n_hints:
            enc = Encoding(with_hints(enc.ids, ser.text, enc.offsets, self.tok.vocab_size), enc.offsets)
        # the header is everything before the sender's marker (`<|doc ...|>\n`): always the first field
        hdr_end = ser.starts[0] - len("<|sender|>")
        header = bisect.bisect_right([e for _, e in enc.offsets], hdr_end)
        rows, owner = plan_windows(len(enc), header, self.window, self.overlap)
        return _Windows(ser, enc, rows, owner)

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(bio logits [L, tags], doc logits [heads]) for each id row, batched by similar length."""
        out: list = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for a in range(0, len(order), self.batch_size):
            idx = order[a : a + self.batch_size]
            L = max(1, max(len(rows[i]) for i in idx))
            ids = torch.zeros(len(idx), L, dtype=torch.long)
            mask = torch.zeros(len(idx), L, dtype=torch.bool)
            for r, i in enumerate(idx):
                ids[r, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
                mask[r, : len(rows[i])] = True
            res = self.model(ids, mask, segment_len=self.segment_len)
            for r, i in enumerate(idx):
                out[i] = (res.bio_logits[r, : len(rows[i])].float(), res.doc_logits[r].float())
        return out

    def predict(self, docs: list[Document]) -> list[DocPrediction]:
        """Predictions for many documents; windows of all of them share batches."""
        plans = [self._windows(d) for d in docs]
        flat = [[p.enc.ids[t] for t in row] for p in plans for row in p.rows]
        outs = self._forward(flat)
        preds, k = [], 0
        for doc, p in zip(docs, plans, strict=True):
            mine = outs[k : k + len(p.rows)]
            k += len(p.rows)
            tags = [int(mine[w][0][j].argmax()) for w, j in p.owner]
            doc_logits = torch.stack([d for _, d in mine])  # [windows, heads]
            logits = {}
            for h, name in enumerate(DOC_HEADS):
                col = doc_logits[:, h]
                logits[name] = float(col.max() if name in MAX_HEADS else col.min())
            raw = bio_to_spans(p.ser, p.enc, tags)
            preds.append(self.decide(doc, raw, logits, n_tokens=len(p.enc), n_windows=len(p.rows)))
        return preds

    def decide(self, doc: Document, raw_spans: list[Span], logits: dict[str, float], **info) -> DocPrediction:
        """Validators, calibration and the policy on predicted spans (no model call: testable alone)."""
        order = {path: i for i, (path, _) in enumerate(doc.fields())}
        raw = sorted(set(raw_spans), key=lambda s: (order.get(s.field, len(order)), s.start, s.end, s.label))
        spans = [s for s in raw if not (self.validate and veto_reason(s.label, doc.span_text(s)))]
        scores = {h: _sigmoid(logits[h] / self.temperature[h]) for h in DOC_HEADS}
        content = [s for s in spans if is_content_field(s.field)]
        obf = {s for s in content if obfuscation_form(s.label, doc.span_text(s))}
        if not obf and scores["obfuscation"] >= 0.5:  # the head saw a form the string tests cannot name
            obf = set(content)
        lab = document_labels(doc, spans, obf)
        return DocPrediction(spans, scores, lab.decision, list(lab.rationale), raw, dict(logits), obf, lab,
                             **info)  # fmt: skip

    def scan(self, doc: Document | dict) -> dict:
        """One document -> the issue's result schema. `doc` may be a dict in the document schema."""
        if isinstance(doc, dict):
            doc = Document.from_dict(doc)
        t0 = time.perf_counter()
        pred = self.predict([doc])[0]
        return to_result(doc, pred, (time.perf_counter() - t0) * 1000.0)


def to_result(doc: Document, pred: DocPrediction, latency_ms: float) -> dict:
    """The scan result: {"id", "spans": [{field, start, end, label}], "scores": {sensitivity, exposure,
    context, obfuscation}, "decision", "rationale", "latency_ms"}."""
    return {
        "id": doc.id,
        "spans": [s.to_dict() for s in pred.spans],
        "scores": {h: round(pred.scores[h], 6) for h in DOC_HEADS},
        "decision": pred.decision,
        "rationale": list(pred.rationale),
        "latency_ms": round(latency_ms, 3),
    }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _read_obj(path: Path) -> dict:
    try:
        obj = read_json(path)
    except (FileNotFoundError, ValueError) as e:
        raise ScanError(str(e)) from None
    if not isinstance(obj, dict):
        raise ScanError(f"{path}: expected a JSON object")
    return obj


def load_calibration(path: str | Path) -> dict[str, float]:
    """{head: T} from calib.json ({"temperature": {head: T}}); a missing file or head means T = 1."""
    path = Path(path)
    if not path.is_file():
        return {h: 1.0 for h in DOC_HEADS}
    temps = _read_obj(path).get("temperature")
    if not isinstance(temps, dict):
        raise ScanError(f"{path}: temperature: expected an object {{head: T}}")
    out = {h: 1.0 for h in DOC_HEADS}
    for h, t in temps.items():
        if h not in DOC_HEADS:
            raise ScanError(f"{path}: temperature.{h}: unknown head (expected {', '.join(DOC_HEADS)})")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ScanError(f"{path}: temperature.{h}: expected a positive number, got {t!r}")
        out[h] = float(t)
    return out
