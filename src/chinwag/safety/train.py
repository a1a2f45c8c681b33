"""Train the guard classifier on the template-generated set (plus, optionally, real chit-chat negatives)."""

from __future__ import annotations

import zlib
from pathlib import Path

from chinwag.safety.classifier import Classifier, train
from chinwag.safety.datagen import generate
from chinwag.safety.sanitize import sanitize


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


def build_training_set(seed: int = 0, per_category: int = 900, chitchat: int = 6000) -> list[tuple[str, str]]:
    data = generate(seed=seed, per_category=per_category)
    if chitchat:
        data += [(t, "allow") for t in chitchat_messages("train", chitchat)]
    return [(sanitize(t).text, lab) for t, lab in data]


def train_default(out: str | Path, seed: int = 0, per_category: int = 900, chitchat: int = 6000,
                  epochs: int = 6, progress: bool = False) -> Classifier:  # fmt: skip
    data = build_training_set(seed, per_category, chitchat)
    clf = train(data, seed=seed, epochs=epochs, progress=progress)
    clf.save(out, {"per_category": per_category, "chitchat": chitchat, "source": "chinwag.safety.datagen"})
    return clf
