"""The blind held-out sets (data/test_blind.jsonl, data/test_blind2.jsonl): each written by an author who saw
neither the guard's rules, its training templates and hand-written training files, nor the other sets, so
they are fair tests. These checks keep their size and mix honest, and keep them out of training (issue 7)."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from chinwag.safety.policy import CATEGORIES

DATA = Path(__file__).resolve().parents[2] / "src" / "chinwag" / "safety" / "data"
SETS = [DATA / "test_blind.jsonl", DATA / "test_blind2.jsonl"]
VARIANTS = {"leet", "homoglyph", "fullwidth", "spaced", "dotted", "zero-width", "mixed"}
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060")


def _read(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            assert line.strip(), f"{path.name}:{n}: blank line"
            rec = json.loads(line)
            assert isinstance(rec, dict), f"{path.name}:{n}: not an object"
            out.append(rec)
    return out


@pytest.fixture(scope="module", params=SETS, ids=[p.stem for p in SETS])
def blind(request) -> tuple[Path, list[dict]]:
    return request.param, _read(request.param)


@pytest.fixture(scope="module")
def records(blind) -> list[dict]:
    return blind[1]


def test_every_record_parses_in_the_eval_format(records):
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for r in records:
        assert isinstance(r["id"], str) and r["id"]
        assert r["label"] == "allow" or r["label"] in CATEGORIES, r["id"]
        assert r["kind"] in ("plain", "obfuscated", "multi_turn"), r["id"]
        assert ("text" in r) != ("turns" in r), r["id"]
        if "text" in r:
            assert isinstance(r["text"], str) and r["text"].strip(), r["id"]
        else:
            turns = r["turns"]
            assert r["kind"] == "multi_turn" and len(turns) >= 3, r["id"]
            for i, t in enumerate(turns):
                assert t["role"] == ("user", "assistant")[i % 2], (r["id"], i)
                assert isinstance(t["content"], str) and t["content"].strip(), (r["id"], i)
            assert turns[-1]["role"] == "user", r["id"]  # the judged message is the last user turn
        if r["kind"] == "obfuscated":
            assert r["variant"] in VARIANTS, r["id"]
        else:
            assert "variant" not in r, r["id"]
        if r["label"] == "allow":
            assert r["resembles"] in CATEGORIES, r["id"]


def test_the_evaluator_cli_loader_accepts_the_set(blind):
    from chinwag.safety.cli import _iter_jsonl

    assert sum(1 for _ in _iter_jsonl(blind[0], need_label=True)) >= 500


def test_no_blind_message_is_in_the_training_data():
    """Neither blind set may leak into what the classifier trains on (templates + hand-written files, after
    decontamination; chit-chat negatives come from a disjoint half of chitchat-dataset)."""
    from chinwag.safety.train import build_training_set
    from chinwag.safety.written import WINDOW_SEP, normalize

    data = build_training_set(seed=0, chitchat=0, written_repeat=1)
    train = {normalize(p) for t, _ in data for p in t.split(WINDOW_SEP)}
    for path in SETS:
        texts = set()
        for r in _read(path):
            for t in (
                [r["text"]] if "text" in r else [x["content"] for x in r["turns"] if x["role"] == "user"]
            ):
                texts.add(normalize(t))
        leaked = (texts - {""}) & train
        assert not leaked, (path.name, sorted(leaked)[:5])


def test_decontamination_drops_what_the_eval_sets_contain(tmp_path):
    from chinwag.safety.written import load_written

    blind = _read(SETS[1])
    msg = next(r["text"] for r in blind if r.get("kind") == "plain" and r["label"] != "allow")
    (tmp_path / "w.yaml").write_text(
        yaml.safe_dump({"harmful": {"violence": [msg.upper() + "!!", "a message nobody wrote before 123"]}})
    )
    assert len(load_written(tmp_path, decontaminate=False)) == 2
    assert [t for t, _, _ in load_written(tmp_path)] == ["a message nobody wrote before 123"]


def test_size_and_mix_per_category(records):
    assert len(records) >= 500
    harmful = Counter(r["label"] for r in records if r["label"] != "allow")
    obf = Counter(r["label"] for r in records if r["label"] != "allow" and r["kind"] == "obfuscated")
    multi = Counter(r["label"] for r in records if r["label"] != "allow" and r["kind"] == "multi_turn")
    assert set(harmful) == set(CATEGORIES)
    for cat in CATEGORIES:
        assert harmful[cat] >= 25, cat
        assert obf[cat] >= 6, cat
        assert multi[cat] >= 3, cat


def test_benign_look_alikes_are_many_spread_and_varied(records):
    benign = [r for r in records if r["label"] == "allow"]
    assert len(benign) >= 250
    per_cat = Counter(r["resembles"] for r in benign)
    assert all(per_cat[c] >= 15 for c in CATEGORIES), per_cat
    kinds = Counter(r["kind"] for r in benign)
    assert kinds["obfuscated"] >= 12 and kinds["multi_turn"] >= 12, kinds


def test_obfuscated_records_really_are_obfuscated(records):
    """Each variant's text must carry its trick, otherwise the per-variant recall would measure nothing."""
    for r in records:
        if r.get("kind") != "obfuscated":
            continue
        text, v = r["text"], r["variant"]
        fullwidth = any("\uff01" <= c <= "\uff5e" for c in text)
        foreign = any(0x370 <= ord(c) <= 0x4FF for c in text)  # Greek + Cyrillic
        if v == "fullwidth":
            assert fullwidth, r["id"]
        elif v == "homoglyph":
            assert foreign, r["id"]
        elif v == "zero-width":
            assert any(z in text for z in ZERO_WIDTH), r["id"]
        elif v == "leet":
            assert any(any(c.isdigit() for c in w) and any(c.isalpha() for c in w) for w in text.split()), r[
                "id"
            ]
        elif v == "spaced":
            assert re.search(r"(?:\b\S (?=\S\b)){2,}", text), r["id"]  # >= 3 single letters in a row
        elif v == "dotted":
            assert re.search(r"\b(?:\w[.\-*_]){2,}\w", text), r["id"]  # g.u.n, b.o.m.b
