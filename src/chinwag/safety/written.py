"""Hand-written training data for the guard classifier (data/written/*.yaml).

The template generator (datagen.py) gives volume; these files give variety: several authors, each with a
different style brief (slang and typos; polished, indirect and "for a story"; non-native English and
venting), wrote harmful requests, benign look-alikes and whole conversations per category. They were
written without seeing the evaluation sets, and nothing in them is operational (asks, never answers).

File shape:
    harmful: {category: [text, ...]}          # all 12 categories
    benign: {category: [text, ...]}           # look-alikes that share the category's vocabulary
    multi_turn: [{label, turns: [user, assistant, user, ...], resembles?}]

A conversation becomes one training text the way GuardSession reads it at inference: the last
`window_turns` user turns joined by " \\n " (harm split across turns is learned on that exact view).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import yaml

from chinwag.safety.policy import CATEGORIES

WRITTEN_DIR = Path(__file__).parent / "data" / "written"
WINDOW_SEP = " \n "  # must match GuardSession.check_input


class WrittenDataError(ValueError):
    pass


def window_text(user_turns: list[str], window_turns: int = 3) -> str:
    return WINDOW_SEP.join(user_turns[-window_turns:])


def _strings(path: Path, where: str, v) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
        raise WrittenDataError(f"{path}: {where}: expected a list of non-empty strings")
    return v


def load_file(path: str | Path, window_turns: int = 3) -> list[tuple[str, str, str]]:
    """(text, label, kind) triples; kind is harmful | benign | multi_turn | multi_turn_part."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise WrittenDataError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(d, dict):
        raise WrittenDataError(f"{path}: expected a mapping with harmful/benign/multi_turn")
    out: list[tuple[str, str, str]] = []
    for section, kind in (("harmful", "harmful"), ("benign", "benign")):
        cats = d.get(section) or {}
        if not isinstance(cats, dict):
            raise WrittenDataError(f"{path}: {section}: expected a mapping of category -> list")
        for cat, msgs in cats.items():
            if cat not in CATEGORIES:
                raise WrittenDataError(f"{path}: {section}.{cat}: unknown category (one of {CATEGORIES})")
            label = cat if kind == "harmful" else "allow"
            out += [(m, label, kind) for m in _strings(path, f"{section}.{cat}", msgs)]
    for i, conv in enumerate(d.get("multi_turn") or []):
        where = f"multi_turn[{i}]"
        if not isinstance(conv, dict):
            raise WrittenDataError(f"{path}: {where}: expected a mapping with label and turns")
        label = conv.get("label")
        if label != "allow" and label not in CATEGORIES:
            raise WrittenDataError(f"{path}: {where}.label: {label!r} is not 'allow' or a category")
        turns = _strings(path, f"{where}.turns", conv.get("turns"))
        users = turns[0::2]  # turns alternate user, assistant, user, ...
        out.append((window_text(users, window_turns), label, "multi_turn"))
        if label == "allow":  # every turn of a benign conversation is benign on its own too; a harmful
            # conversation's openers are left out: some are harmless alone, some are not
            out += [(u, "allow", "multi_turn_part") for u in users[:-1]]
    return out


def normalize(text: str) -> str:
    """Case, punctuation and spacing folded: the key for spotting the same message in two files."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


@functools.cache  # read once per process: the loader and the template filter both ask
def eval_texts(folder: str | Path = WRITTEN_DIR.parent) -> frozenset[str]:
    """Every user message of the evaluation sets (heldout.jsonl, test_blind*.jsonl), normalized."""
    out: set[str] = set()
    for path in [Path(folder) / "heldout.jsonl", *sorted(Path(folder).glob("test_blind*.jsonl"))]:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                turns = rec.get("turns") or [{"role": "user", "content": rec.get("text", "")}]
                out |= {normalize(t["content"]) for t in turns if t.get("role", "user") == "user"}
    out.discard("")
    return frozenset(out)


def load_written(folder: str | Path = WRITTEN_DIR, window_turns: int = 3,
                 decontaminate: bool = True) -> list[tuple[str, str, str]]:  # fmt: skip
    """All hand-written files. With `decontaminate`, examples whose text (or any user turn of whose
    conversation) also occurs in an evaluation set are dropped: independent authors do converge on stock
    messages ("how did apartheid end"), and a test message seen in training measures nothing."""
    files = sorted(Path(folder).glob("*.yaml"))
    data = [t for f in files for t in load_file(f, window_turns)]
    if not decontaminate:
        return data
    seen = eval_texts()
    return [t for t in data if not any(normalize(p) in seen for p in t[0].split(WINDOW_SEP))]
