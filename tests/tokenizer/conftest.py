"""One small tokenizer trained per test session on real text (~300 KB), shared by every tokenizer test."""

from __future__ import annotations

from pathlib import Path

import pytest

# The shared corpus lives beside the repo (../shared); fall back to text shipped in a pip package.
SHAKESPEARE = Path(__file__).parents[3] / "shared/data/tinyshakespeare.txt"


def corpus_texts(max_chars: int = 300_000) -> list[str]:
    if SHAKESPEARE.exists():
        text = SHAKESPEARE.read_text(encoding="utf-8")[:max_chars]
    else:  # pragma: no cover - depends on the checkout
        import chatterbot_corpus

        folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
        text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.yml")))[:max_chars]
    return [t for t in text.split("\n\n") if t.strip()]


@pytest.fixture(scope="session")
def trained():
    """(Tokenizer, the trainer's own HF tokenizer), vocab 1024."""
    from chinwag.tokenizer.train import train_bpe

    return train_bpe(corpus_texts(), vocab_size=1024, show_progress=False, return_hf=True)


@pytest.fixture(scope="session")
def tok(trained):
    return trained[0]


@pytest.fixture(scope="session")
def cl100k():
    from chinwag.tokenizer import Tokenizer

    return Tokenizer.from_pretrained("cl100k_base")
