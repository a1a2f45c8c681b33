"""`chinwag guard check | eval | train`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

POLICY_HELP = "Policy YAML path or shipped name (default: the shipped default policy)."
CLF_HELP = "Classifier weights (.safetensors from `chinwag guard train`); default: the policy's."


def _fail(msg: str) -> None:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text("error: ", style="bold red") + Text(msg), highlight=False)
    raise typer.Exit(1)


def _load_guard(policy: str | None, classifier: str | None):
    from chinwag.safety.guard import Guard
    from chinwag.safety.policy import PolicyError

    try:
        return Guard.load(policy, classifier)
    except (PolicyError, FileNotFoundError, ValueError) as e:
        _fail(str(e))


def _iter_jsonl(path: Path, need_label: bool = False):
    """Yield (line_no, record), validated; bad input -> one-line error naming file, line and field."""
    if not path.is_file():
        _fail(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                _fail(f"{path}:{n}: invalid JSON ({e.msg})")
            if not isinstance(rec, dict):
                _fail(f"{path}:{n}: record must be a JSON object")
            if "text" in rec:
                if not isinstance(rec["text"], str):
                    _fail(f"{path}:{n}: field 'text' must be a string")
            elif "turns" in rec:
                turns = rec["turns"]
                if not isinstance(turns, list) or not turns:
                    _fail(f"{path}:{n}: field 'turns' must be a non-empty list")
                for i, t in enumerate(turns):
                    if not isinstance(t, dict) or not isinstance(t.get("content"), str):
                        _fail(f'{path}:{n}: field \'turns[{i}]\' must be {{"role", "content": str}}')
                if not any(t.get("role", "user") == "user" for t in turns):
                    _fail(f"{path}:{n}: field 'turns' has no user turn to judge")
            else:
                _fail(f"{path}:{n}: record needs a 'text' or a 'turns' field")
            if need_label:
                from chinwag.safety.policy import CATEGORIES

                lab = rec.get("label")
                if lab != "allow" and lab not in CATEGORIES:
                    _fail(f"{path}:{n}: field 'label' must be 'allow' or a category, got {lab!r}")
            rec.setdefault("id", str(n))
            yield n, rec


@app.command(
    help="Judge one MESSAGE, or every record of --input FILE.jsonl ({id, text} or {id, turns}); "
    "writes one JSON verdict per line."
)
def check(
    message: str = typer.Argument(None, help="A single user message to judge."),
    input: Path = typer.Option(
        None, "--input", "-i", help="JSONL of {id, text} or {id, turns: [{role, content}]}."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Write verdicts here (JSONL) instead of stdout."
    ),
    policy: str = typer.Option(None, "--policy", "-p", help=POLICY_HELP),
    classifier: str = typer.Option(None, "--classifier", help=CLF_HELP),
    output_side: bool = typer.Option(
        False, "--as-output", help="Judge the text as model output, not user input."
    ),
) -> None:
    from chinwag.safety.evaluate import judge_record

    if (message is None) == (input is None):
        raise typer.BadParameter("give exactly one of MESSAGE or --input FILE.jsonl")
    guard = _load_guard(policy, classifier)

    def write_all(out) -> None:
        if message is not None:
            v = guard.check_output(message) if output_side else guard.check(message)
            out.write(json.dumps({"id": None, **v.to_dict()}, ensure_ascii=False) + "\n")
            return
        for _, rec in _iter_jsonl(input):  # streamed: one record in memory at a time
            if output_side and "text" in rec:
                v = guard.check_output(rec["text"])
            else:
                v, _ = judge_record(guard, rec)
            out.write(json.dumps({"id": rec["id"], **v.to_dict()}, ensure_ascii=False) + "\n")
            out.flush()

    if output is None:
        write_all(sys.stdout)
        return
    from chinwag.utils import atomic_path

    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        write_all(f)


@app.command(
    name="eval",
    help="Measure the guard on a labelled JSONL set (default: the shipped held-out set): "
    "recall per category / obfuscation variant, category accuracy, FPR, multi-turn recall, latency.",
)
def eval_(
    set_path: Path = typer.Argument(
        None, metavar="SET.jsonl", help="Records {id, text|turns, label[, variant]}."
    ),
    policy: str = typer.Option(None, "--policy", "-p", help=POLICY_HELP),
    classifier: str = typer.Option(None, "--classifier", help=CLF_HELP),
    chitchat: int = typer.Option(
        1000, help="Plain chit-chat messages (held-out half of chitchat-dataset) for FPR."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the full report (with misses) as JSON."),
    show_errors: bool = typer.Option(
        False, "--show-errors", help="List missed harmful and false-positive ids."
    ),
) -> None:
    from rich.console import Console

    from chinwag.safety.evalset import HELDOUT_FILE
    from chinwag.safety.evaluate import evaluate, format_report

    path = set_path or HELDOUT_FILE
    records = [rec for _, rec in _iter_jsonl(path, need_label=True)]
    guard = _load_guard(policy, classifier)
    chit = []
    if chitchat > 0:
        from chinwag.safety.train import chitchat_messages

        chit = chitchat_messages("eval", chitchat)
    report = evaluate(guard, records, chit, progress=True)
    con = Console()
    con.print(
        f"[bold]{path}[/]: {report['n_harmful']} harmful, {report['n_benign']} benign, "
        f"{report['n_chitchat']} chit-chat",
        highlight=False,
    )
    print(format_report(report))
    if show_errors:
        for m in report["misses"]:
            print(f"missed   {m['id']} ({m['label']}, score {m['score']})")
        for m in report["false_positives"]:
            print(f"false+   {m['id']} (as {m['label']}, score {m['score']})")
        for m in report["chitchat_false_positives"]:
            print(f"false+   chitchat (as {m['label']}, score {m['score']}): {m['text']!r}")
    if json_out:
        from chinwag.utils import write_json

        write_json(json_out, report)


@app.command(
    help="Train the guard classifier on the template set, the hand-written files (data/written) and real "
    "chit-chat negatives, and save it (.safetensors)."
)
def train(
    out: Path = typer.Option(
        Path("guard_classifier.safetensors"), "--out", "-o", help="Where to write weights."
    ),
    seed: int = typer.Option(0, help="Seeds data generation, shuffling and init."),
    per_category: int = typer.Option(900, help="Generated harmful examples per category."),
    chitchat: int = typer.Option(
        20000, help="Real chit-chat negatives (train half of chitchat-dataset); 0: none."
    ),
    epochs: int = typer.Option(6, help="Passes over the data."),
    threads: int = typer.Option(1, min=1, help="torch threads (1 is fastest for this small model)."),
) -> None:
    import torch
    from rich.console import Console

    from chinwag.safety.train import train_default

    if per_category < 1 or epochs < 1 or chitchat < 0:
        raise typer.BadParameter("--per-category and --epochs must be >= 1, --chitchat >= 0")
    torch.set_num_threads(threads)  # on a busy 2-core box, 2 threads run this tiny model ~20x slower
    train_default(out, seed=seed, per_category=per_category, chitchat=chitchat, epochs=epochs, progress=True)
    Console().print(f"wrote {out} (use it with --classifier {out}, or `classifier.weights` in a policy)")
