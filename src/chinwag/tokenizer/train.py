"""Train byte-level BPE ranks with HF `tokenizers`, then hand them to the tiktoken runtime.

Recipe (docs/tokenizer.md): BPE(ignore_merges=True); pre-tokenizer = Split(our regex, isolated) then
ByteLevel(add_prefix_space=False, use_regex=False); BpeTrainer seeded with all 256 byte symbols so every
byte is a token (no unknown tokens, ever). The trainer assigns ids in merge order, so its vocab *is* a
tiktoken rank table once the GPT-2 byte-to-unicode strings are mapped back to bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from chinwag.tokenizer.core import PATTERN, SPECIAL_TOKENS, Tokenizer, token_str_to_bytes


def _hf_bpe(pattern: str):
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE(ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    return hf


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8192,
    show_progress: bool = True,
    return_hf: bool = False,
    pattern: str = PATTERN,
    min_frequency: int = 2,
    name: str = "chinwag",
):
    """Train a tokenizer whose `vocab_size` counts every id (256 bytes + merges + 16 specials).

    A small corpus may run out of pairs worth merging; then the vocab is smaller than asked.
    With `return_hf=True` returns `(Tokenizer, hf_tokenizer)`, the trainer's own HF tokenizer with the
    specials added at the same ids, for parity checks.
    """
    from tokenizers import pre_tokenizers, trainers

    n_merge_vocab = vocab_size - len(SPECIAL_TOKENS)
    if n_merge_vocab < 256:
        raise ValueError(
            f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (256 bytes + specials), got {vocab_size}"
        )
    hf = _hf_bpe(pattern)
    trainer = trainers.BpeTrainer(
        vocab_size=n_merge_vocab,
        min_frequency=min_frequency,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    hf.train_from_iterator((t for t in texts if t), trainer=trainer)
    vocab = json.loads(hf.to_str())["model"]["vocab"]
    ranks = {token_str_to_bytes(s): i for s, i in vocab.items()}
    if sorted(ranks.values()) != list(range(len(ranks))):  # pragma: no cover - trainer invariant
        raise RuntimeError("BPE trainer produced non-contiguous ids")
    tok = Tokenizer.from_ranks(ranks, pattern=pattern, name=name)
    if not return_hf:
        return tok
    hf.add_special_tokens(list(SPECIAL_TOKENS))
    for s in SPECIAL_TOKENS:  # the trainer's ids must equal ours, or parity tests would be meaningless
        assert hf.token_to_id(s) == tok.special_tokens[s], s
    return tok, hf
