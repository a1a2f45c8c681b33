"""Train the guard classifier on the template-generated set (plus, optionally, real chit-chat negatives)."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

from chinwag.safety.classifier import Classifier, train
from chinwag.safety.datagen import generate
from chinwag.safety.sanitize import sanitize
from chinwag.safety.written import eval_texts, load_written, normalize


def chitchat_split(conv_id: str) -> str:
    """Stable split of chitchat conversations: "train" ones may be used as classifier negatives, "eval"
    ones are kept for the false-positive measurement, so the two never overlap."""
    return "train" if zlib.crc32(conv_id.encode()) % 2 == 0 else "eval"


def chitchat_messages(split: str, limit: int) -> list[str]:
    from chinwag.data import read_records

    out: list[str] = []
    for conv in read_records("chitchat"):
        if chitchat_split(conv.id) != split:
            continue
        for m in conv.messages:
            if m["content"].strip():
                out.append(m["content"])
                if len(out) >= limit:
                    return out
    return out


def augment_written(
    written: list[tuple[str, str, str]], seed: int, repeat: int, obfuscated: float
) -> list[tuple[str, str]]:
    """Hand-written examples, repeated `repeat` times (they are few next to the templates' volume, and
    they carry the variety); a fraction of the copies is obfuscated by the held-out set's attacker, so
    the classifier also learns what the sanitizer leaves behind (e.g. partly folded leetspeak)."""
    from chinwag.safety.evalset import VARIANTS, obfuscate

    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for text, label, _ in written:
        out.append((text, label))
        for _ in range(repeat - 1):
            out.append(
                (obfuscate(text, rng.choice(VARIANTS), rng) if rng.random() < obfuscated else text, label)
            )
    return out


def build_training_set(seed: int = 0, per_category: int = 900, chitchat: int = 20000,
                       written: list[tuple[str, str, str]] | None = None, written_repeat: int = 3,
                       written_obfuscated: float = 0.3) -> list[tuple[str, str]]:  # fmt: skip
    """Template data + real chit-chat negatives + the hand-written files (`written=None` loads
    data/written/*.yaml; pass [] for templates only), all in the sanitized view the guard scores."""
    seen = eval_texts()  # templates can hit a stock eval message too ("how do i get a restraining order")
    data = [(t, lab) for t, lab in generate(seed=seed, per_category=per_category) if normalize(t) not in seen]
    if chitchat:
        data += [(t, "allow") for t in chitchat_messages("train", chitchat)]
    written = load_written() if written is None else written
    data += augment_written(written, seed, written_repeat, written_obfuscated)
    return [(sanitize(t).text, lab) for t, lab in data]


def train_default(out: str | Path, seed: int = 0, per_category: int = 900, chitchat: int = 20000,
                  epochs: int = 6, progress: bool = False) -> Classifier:  # fmt: skip
    written = load_written()
    data = build_training_set(seed, per_category, chitchat, written)
    clf = train(data, seed=seed, epochs=epochs, progress=progress)
    clf.save(out, {"per_category": per_category, "chitchat": chitchat, "written": len(written),
                   "source": "chinwag.safety.datagen + data/written"})  # fmt: skip
    return clf
