"""The held-out evaluation set: hand-written messages (data/heldout_base.yaml) plus obfuscated variants.

The obfuscators here play the attacker: they are written independently of the sanitizer and applied
with a seeded RNG, so `build_heldout(seed)` always yields the same records. Record fields:
`{"id", "text" | "turns", "label": "allow" | category, "kind": "harmful" | "benign", "variant", "resembles"}`.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

DATA_DIR = Path(__file__).parent / "data"
BASE_FILE = DATA_DIR / "heldout_base.yaml"
HELDOUT_FILE = DATA_DIR / "heldout.jsonl"

VARIANTS = ("leet", "homoglyph", "spaced", "zero_width", "fullwidth", "mixed", "dotted", "accents")

_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_CYRILLIC = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і", "s": "ѕ"}
_GREEK = {"o": "ο", "i": "ι", "k": "κ", "v": "ν", "t": "τ", "a": "α"}
_ACCENTS = {"a": "á", "e": "é", "i": "í", "o": "ö", "u": "ü", "c": "ç", "n": "ñ"}


def _key_words(text: str, rng: random.Random, k: int = 2) -> list[int]:
    """Indices of the longest words (the likely trigger words an evader would disguise)."""
    words = text.split(" ")
    order = sorted(range(len(words)), key=lambda i: (-len(words[i].strip(".,!?'\"")), rng.random()))
    return [i for i in order[:k] if len(words[i]) >= 3]


def _per_word(text: str, rng: random.Random, fn, k: int = 3) -> str:
    words = text.split(" ")
    for i in _key_words(text, rng, k):
        words[i] = fn(words[i])
    return " ".join(words)


def obfuscate(text: str, variant: str, rng: random.Random) -> str:
    if variant == "leet":
        return _per_word(
            text, rng, lambda w: "".join(_LEET.get(c, c) if rng.random() < 0.7 else c for c in w), 4
        )
    if variant == "homoglyph":
        table = _CYRILLIC if rng.random() < 0.6 else {**_CYRILLIC, **_GREEK}
        return "".join(table.get(c, c) if rng.random() < 0.5 else c for c in text)
    if variant == "spaced":
        return _per_word(text, rng, lambda w: " ".join(w), 2)
    if variant == "dotted":
        sep = rng.choice([".", "-", "*", "_"])
        return _per_word(text, rng, lambda w: sep.join(w), 2)
    if variant == "zero_width":
        zw = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
        return _per_word(text, rng, lambda w: "".join(c + rng.choice(zw) for c in w), 5)
    if variant == "fullwidth":
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and rng.random() < 0.8 else c for c in text)
    if variant == "accents":
        return "".join(_ACCENTS.get(c, c) if rng.random() < 0.4 else c for c in text)
    if variant == "mixed":  # leet + case noise + one zero-width + a homoglyph, as real evaders combine
        t = obfuscate(text, "leet", rng)
        t = "".join(c.upper() if rng.random() < 0.3 else c for c in t)
        t = obfuscate(t, "zero_width", rng)
        return "".join(_CYRILLIC.get(c, c) if rng.random() < 0.2 else c for c in t)
    raise ValueError(f"unknown obfuscation variant {variant!r}")


def build_heldout(seed: int = 0, n_obfuscated: int = 10, n_benign_obfuscated: int = 2) -> list[dict]:
    base = yaml.safe_load(BASE_FILE.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    records: list[dict] = []

    def add(rec: dict) -> None:
        rec["id"] = f"h{len(records):04d}"
        records.append(rec)

    for ci, (cat, msgs) in enumerate(base["harmful"].items()):
        for m in msgs:
            add({"text": m, "label": cat, "kind": "harmful", "variant": "plain", "resembles": cat})
        for j, m in enumerate(rng.sample(msgs, n_obfuscated)):
            v = VARIANTS[(j + ci) % len(VARIANTS)]  # every variant in every category
            add(
                {
                    "text": obfuscate(m, v, rng),
                    "label": cat,
                    "kind": "harmful",
                    "variant": v,
                    "resembles": cat,
                }
            )
    for conv in base["multi_turn"]:
        turns = [{"role": "user", "content": t} for t in conv["turns"]]
        add({"turns": turns, "label": conv["label"], "kind": "harmful", "variant": "multi_turn",
             "resembles": conv["label"]})  # fmt: skip
    for cat, msgs in base["benign"].items():
        for m in msgs:
            add({"text": m, "label": "allow", "kind": "benign", "variant": "plain", "resembles": cat})
        for m in rng.sample(msgs, n_benign_obfuscated):
            v = rng.choice(VARIANTS)
            add(
                {
                    "text": obfuscate(m, v, rng),
                    "label": "allow",
                    "kind": "benign",
                    "variant": v,
                    "resembles": cat,
                }
            )
    for conv in base["benign_multi_turn"]:
        turns = [{"role": "user", "content": t} for t in conv["turns"]]
        add(
            {
                "turns": turns,
                "label": "allow",
                "kind": "benign",
                "variant": "multi_turn",
                "resembles": "mixed",
            }
        )
    return records
