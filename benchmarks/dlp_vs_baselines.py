"""The DLP scanner against Presidio (pattern recognizers only) and detect-secrets on one labelled test set.

    pip install 'chinwag[dlp-baselines]'        # presidio-analyzer + detect-secrets (no torch)
    chinwag dlp synth --split test --n 1000 --seed 0 --out data/dlp/test.jsonl
    python benchmarks/dlp_vs_baselines.py --data data/dlp/test.jsonl [--model runs/dlp] [--json out.json]
    python benchmarks/dlp_vs_baselines.py --n 1000 --seed 0     # or generate the synth test split in memory

Every system scans every text field of each document (sender, recipients, subject, body, attachment
names and texts, links) and its findings become our spans (field, code-point start/end, label); all
systems are then scored by the same `chinwag.dlp.metrics` / `evaluate.score_predictions` code.

Presidio 2.2 (presidio-analyzer): `AnalyzerEngine` with the `NoOpNlpEngine`, i.e. its pattern recognizers
only (no NER model is installable offline; NoOp also turns off context-word boosting), score >= 0.4 (the
usual threshold; phones score exactly 0.4, SSNs 0.5, Luhn-valid cards 1.0). Mapping:
EMAIL_ADDRESS -> EMAIL, PHONE_NUMBER -> PHONE, CREDIT_CARD -> PAN, US_SSN -> SSN. Its other entities
(URL, DATE_TIME, IP_ADDRESS, UUID, US_ITIN, US_BANK_NUMBER, US_DRIVER_LICENSE, US_PASSPORT, UK_NHS, IBAN,
CRYPTO, MAC_ADDRESS, MEDICAL_LICENSE) have no label of ours and are dropped (an ITIN is a negative for us).
tldextract (used by its email recognizer) is pinned to its bundled suffix-list snapshot: no network.

detect-secrets 1.5 (all 27 default plugins and filters, `default_settings()`), file mode: each field is
written to its own file (attachments keep their name, so the keyword and YAML/INI rules see the right
type; other fields are `.txt`) and `scan_file` reads it. Findings carry a line number and the secret value
but no offsets, so each is located with `str.find` on its line (then in the whole field). Mapping:
"Basic Auth Credentials" -> DB_URI, widened from the password it reports to the whole `scheme://...` URI
around it (up to whitespace, a quote or a bracket, without trailing prose punctuation); "Public IP (ipv4)"
is dropped; every other type -> SECRET_KEY. Two repairs give the tool its best score: a Private Key
finding ("BEGIN RSA PRIVATE KEY") is widened to the whole PEM block, and a value shorter than 8
characters (GitHubTokenDetector reports only "ghp") is widened over the token it starts.

For every system, overlapping spans of the same label in a field are merged (two plugins on one value are
one finding), and a span's surrounding quotes are trimmed. "union" is Presidio's spans plus
detect-secrets' spans (merged the same way). The labels the baselines cover are EMAIL, PHONE, PAN, SSN
(Presidio) and SECRET_KEY, DB_URI (detect-secrets); "micro (covered)" scores every system on those six.

Latency: wall time per document on one thread (Presidio: all fields; detect-secrets: writing the files and
scanning them; ours: `Scanner.scan`), after one warm-up document; p50 / p95 over the test set.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chinwag.dlp.labels import Span

COVERED = ("EMAIL", "PHONE", "PAN", "SSN", "SECRET_KEY", "DB_URI")
PRESIDIO_MAP = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "PAN", "US_SSN": "SSN"}
DS_DROP = {"Public IP (ipv4)"}
DS_DB_URI = {"Basic Auth Credentials"}
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>{}\[\]]+")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)


# ----------------------------------------------------------------------------- span clean-up


def tidy(doc, spans: list[Span]) -> list[Span]:
    """Trim surrounding quotes, then merge overlapping same-label spans of a field into one."""
    out = []
    for s in spans:
        text = doc.field_text(s.field)
        a, b = s.start, s.end
        while b - a >= 2 and text[a] == text[b - 1] and text[a] in "'\"`":
            a, b = a + 1, b - 1
        if a < b:
            out.append(Span(s.field, a, b, s.label))
    out.sort(key=lambda s: (s.field, s.label, s.start, s.end))
    merged: list[Span] = []
    for s in out:
        m = merged[-1] if merged else None
        if m and m.field == s.field and m.label == s.label and s.start < m.end:
            merged[-1] = Span(m.field, m.start, max(m.end, s.end), m.label)
        else:
            merged.append(s)
    return merged


# ----------------------------------------------------------------------------- Presidio


class Presidio:
    name = "presidio"

    def __init__(self, threshold: float = 0.4):
        import tldextract
        import tldextract.tldextract as tx
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NoOpNlpEngine

        for log in ("presidio-analyzer", "tldextract"):
            logging.getLogger(log).setLevel(logging.ERROR)
        tx.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled snapshot only
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        self.engine = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
        self.threshold = threshold

    def spans(self, doc) -> list[Span]:
        out = []
        for path, text in doc.fields():
            if not text:
                continue
            for r in self.engine.analyze(text=text, language="en", score_threshold=self.threshold):
                if r.entity_type in PRESIDIO_MAP and r.start < r.end:
                    out.append(Span(path, r.start, r.end, PRESIDIO_MAP[r.entity_type]))
        return tidy(doc, out)


# ----------------------------------------------------------------------------- detect-secrets


def _safe_name(name: str, default: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(name or ""))
    return base if base.strip("._") else default


class DetectSecrets:
    name = "detect-secrets"

    def __init__(self):
        from detect_secrets.core.scan import scan_file
        from detect_secrets.settings import default_settings

        self._scan_file = scan_file
        self._settings = default_settings()
        self._settings.__enter__()  # all plugins and filters, for the life of the benchmark
        self.tmp = Path(tempfile.mkdtemp(prefix="dlp-ds-"))
        self.unlocated = 0

    def close(self):
        self._settings.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _files(self, doc):
        """(field path, file path) for each non-empty field, each in its own folder (names stay real)."""
        names = {f"attachments.{i}.text": a.name for i, a in enumerate(doc.attachments)}
        out = []
        for k, (path, text) in enumerate(doc.fields()):
            if not text:
                continue
            d = self.tmp / str(k)
            d.mkdir(exist_ok=True)
            f = d / _safe_name(names.get(path, ""), path.replace(".", "_") + ".txt")
            f.write_text(text, encoding="utf-8")
            out.append((path, f))
        return out

    def _locate(self, text: str, line_no: int, value: str) -> tuple[int, int] | None:
        lines = text.splitlines(keepends=True)
        if 1 <= line_no <= len(lines):
            base = sum(len(x) for x in lines[: line_no - 1])
            i = lines[line_no - 1].find(value)
            if i >= 0:
                return base + i, base + i + len(value)
        i = text.find(value)
        return (i, i + len(value)) if i >= 0 else None

    def spans(self, doc) -> list[Span]:
        out = []
        files = self._files(doc)
        try:
            for path, f in files:
                text = doc.field_text(path)
                for s in self._scan_file(str(f)):
                    if s.type in DS_DROP or not s.secret_value:
                        continue
                    loc = self._locate(text, s.line_number, s.secret_value)
                    if loc is None:
                        self.unlocated += 1
                        continue
                    a, b = loc
                    label = "DB_URI" if s.type in DS_DB_URI else "SECRET_KEY"
                    if label == "DB_URI":  # the password -> the URI around it
                        for m in _URI.finditer(text):
                            end = m.start() + len(m.group().rstrip(".,;:!?)"))  # prose punctuation
                            if m.start() <= a and b <= end:
                                a, b = m.start(), end
                                break
                    elif s.type == "Private Key":  # the BEGIN line -> the whole PEM block
                        for m in _PEM.finditer(text):
                            if m.start() <= a < m.end():
                                a, b = m.start(), m.end()
                                break
                    elif b - a < 8:  # e.g. GitHub's "ghp": the token it starts
                        while b < len(text) and (text[b].isalnum() or text[b] in "_-"):
                            b += 1
                    out.append(Span(path, a, b, label))
        finally:
            for _, f in files:
                f.unlink(missing_ok=True)
        return tidy(doc, out)


# ----------------------------------------------------------------------------- ours


class Ours:
    name = "chinwag"

    def __init__(self, model_dir: str):
        from chinwag.dlp.scan import Scanner

        self.scanner = Scanner.load(model_dir)

    def predict(self, doc):
        return self.scanner.predict([doc])[0]


# ----------------------------------------------------------------------------- running and scoring


def run_system(system, examples, progress: bool = True):
    """(predictions, latencies in ms). Baseline predictions carry spans only (no scores or decision)."""
    from chinwag.dlp.scan import DocPrediction

    first = examples[0].doc
    (system.predict(first) if hasattr(system, "predict") else system.spans(first))  # warm-up
    preds, lat = [], []
    for i, ex in enumerate(examples):
        t0 = time.perf_counter()
        if hasattr(system, "predict"):
            p = system.predict(ex.doc)
        else:
            p = DocPrediction(system.spans(ex.doc), dict.fromkeys(("sensitivity", "exposure", "context",
                                                                   "obfuscation"), 0.5), "ALLOW")  # fmt: skip
        lat.append((time.perf_counter() - t0) * 1000.0)
        preds.append(p)
        if progress and (i + 1) % 100 == 0:
            print(f"  {system.name}: {i + 1}/{len(examples)}", file=sys.stderr, flush=True)
    return preds, lat


def score(examples, preds) -> dict:
    from chinwag.dlp import metrics

    gold = [ex.spans for ex in examples]
    pred = [p.spans for p in preds]
    cov_forms = [{s: f for s, f in ex.forms.items() if s.label in COVERED} for ex in examples]
    return {
        "exact": metrics.span_prf(gold, pred, "exact", labels=None),
        "overlap": metrics.span_prf(gold, pred, "overlap", labels=None),
        "covered_exact": metrics.span_prf(gold, pred, "exact", labels=list(COVERED))["micro"],
        "covered_overlap": metrics.span_prf(gold, pred, "overlap", labels=list(COVERED))["micro"],
        "obfuscation_recall": metrics.recall_by_form([ex.forms for ex in examples], pred, "overlap"),
        "obfuscation_recall_covered": metrics.recall_by_form(cov_forms, pred, "overlap"),
        "hard_negatives": metrics.false_positives_per_100_hard_negatives(
            [ex.hard_negatives for ex in examples], pred
        ),
    }


def _f(x) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def report(results: dict, examples, console) -> None:
    from rich.table import Table

    from chinwag.dlp.labels import LABELS

    names = list(results)
    support = {lab: sum(s.label == lab for ex in examples for s in ex.spans) for lab in LABELS}
    for mode in ("exact", "overlap"):
        t = Table(title=f"Span P / R / F1, {mode} match ({len(examples)} documents)")
        t.add_column("label")
        t.add_column("gold", justify="right")
        for n in names:
            t.add_column(f"{n} P/R/F1", justify="right")
        for lab in LABELS:
            cells = []
            for n in names:
                r = results[n]["scores"][mode]["per_label"].get(lab)
                cells.append("-" if r is None else f"{_f(r['precision'])} {_f(r['recall'])} {_f(r['f1'])}")
            t.add_row(lab + ("" if lab in COVERED else " *"), str(support[lab]), *cells)
        for key, title in (
            ("micro", "micro (all)"),
            (f"covered_{mode}", "micro (covered)"),
            ("macro", "macro"),
        ):
            cells = []
            for n in names:
                sc = results[n]["scores"]
                r = sc[key] if key.startswith("covered") else sc[mode][key]
                cells.append(f"{_f(r['precision'])} {_f(r['recall'])} {_f(r['f1'])}")
            t.add_row(title, "", *cells, style="bold")
        t.caption = "* not covered by either baseline; covered = " + ", ".join(COVERED)
        console.print(t)

    t = Table(title="Recall on obfuscated values (overlap), per form: all labels | covered labels")
    t.add_column("form")
    for n in names:
        t.add_column(n, justify="right")
    forms = sorted({f for n in names for f in results[n]["scores"]["obfuscation_recall"]} - {"all"}) + ["all"]
    for form in forms:
        cells = []
        for n in names:
            sc = results[n]["scores"]
            cells.append(
                f"{_f(sc['obfuscation_recall'].get(form))} | {_f(sc['obfuscation_recall_covered'].get(form))}"
            )
        t.add_row(form, *cells)
    console.print(t)

    t = Table(title="False positives per 100 hard negatives")
    t.add_column("kind")
    t.add_column("n", justify="right")
    for n in names:
        t.add_column(n, justify="right")
    hn0 = results[names[0]]["scores"]["hard_negatives"]
    for kind in list(hn0["per_kind"]) + ["overall"]:
        cnt = hn0["n"] if kind == "overall" else hn0["n_per_kind"][kind]
        vals = [results[n]["scores"]["hard_negatives"] for n in names]
        t.add_row(kind, str(cnt), *(f"{v['overall'] if kind == 'overall' else v['per_kind'][kind]:.1f}"
                                    for v in vals))  # fmt: skip
    console.print(t)

    t = Table(title="Latency per document, ms (1 thread)")
    for c in ("system", "p50", "p95", "mean"):
        t.add_column(c, justify="left" if c == "system" else "right")
    for n in names:
        lat = results[n].get("latency_ms")
        if lat:
            t.add_row(n, f"{lat['p50']:.1f}", f"{lat['p95']:.1f}", f"{lat['mean']:.1f}")
        else:
            t.add_row(n, "both tools in turn", "", "")
    console.print(t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="labelled JSONL from `chinwag dlp synth` (default: generate --n docs)")
    ap.add_argument("--n", type=int, default=1000, help="documents to generate when --data is not given")
    ap.add_argument("--seed", type=int, default=0, help="synth seed when --data is not given")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    ap.add_argument("--model", help="our run folder (optional: without it only the baselines run)")
    ap.add_argument("--threshold", type=float, default=0.4, help="Presidio score threshold")
    ap.add_argument("--json", help="write every table as JSON here (atomic)")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console

    from chinwag.dlp.evaluate import jsonable, read_examples
    from chinwag.utils import write_json

    torch.set_num_threads(1)
    console = Console(width=None if sys.stdout.isatty() else 150)  # wide tables stay readable in logs
    systems = []
    try:
        systems.append(Presidio(args.threshold))
    except ImportError as e:
        console.print(
            f"skipping Presidio: {e.name or e} is not installed (pip install 'chinwag[dlp-baselines]')"
        )
    try:
        systems.append(DetectSecrets())
    except ImportError as e:
        console.print(f"skipping detect-secrets: {e.name or e} is not installed "
                      "(pip install 'chinwag[dlp-baselines]')")  # fmt: skip
    if not systems:
        console.print("no baseline installed: nothing to compare; exiting")
        return 0
    if args.data:
        examples = read_examples(args.data, args.limit)
        source = args.data
    else:
        from chinwag.dlp import synth

        examples = synth.generate(args.limit or args.n, seed=args.seed, split="test")
        source = f"synth test split, n={len(examples)}, seed={args.seed}"
    if args.model:
        systems.append(Ours(args.model))

    results: dict = {}
    base_preds = {}
    for sys_ in systems:
        t0 = time.perf_counter()
        preds, lat = run_system(sys_, examples)
        base_preds[sys_.name] = preds
        results[sys_.name] = {
            "scores": score(examples, preds),
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)),
                "p95": float(np.percentile(lat, 95)),
                "mean": float(np.mean(lat)),
            },  # fmt: skip
            "seconds": time.perf_counter() - t0,
        }
        if isinstance(sys_, DetectSecrets):
            results[sys_.name]["unlocated_findings"] = sys_.unlocated
            sys_.close()
    if "presidio" in base_preds and "detect-secrets" in base_preds:  # the union, after both ran
        from chinwag.dlp.scan import DocPrediction

        union = [
            DocPrediction(tidy(ex.doc, a.spans + b.spans), a.scores, a.decision)
            for ex, a, b in zip(examples, base_preds["presidio"], base_preds["detect-secrets"], strict=True)
        ]
        ours = {k: v for k, v in results.items() if k not in ("presidio", "detect-secrets")}
        results = {"presidio": results["presidio"], "detect-secrets": results["detect-secrets"],
                   "union": {"scores": score(examples, union)}, **ours}  # fmt: skip
    report(results, examples, console)
    load = os.getloadavg()
    console.print(f"data: {source}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", highlight=False)
    if args.json:
        out = {"data": source, "n_docs": len(examples), "covered": list(COVERED), "load_avg": list(load),
               "results": results}  # fmt: skip
        write_json(args.json, jsonable(out))
        console.print(f"tables -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
