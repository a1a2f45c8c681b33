"""Tiny random models and a reference greedy decoder shared by the decoding-strategy tests."""

from __future__ import annotations

import string

import torch

from chinwag.model.model import ChinwagLM
from chinwag.model.presets import get_config


class CharTok:
    """One ASCII letter per id: readable outputs for scorer tests, without training a tokenizer."""

    eos_id = None

    def __init__(self, end_id: int | None = None):
        self.end_id = end_id

    def decode(self, ids):
        return "".join(string.ascii_letters[i] for i in ids)


def tiny(seed: int = 0, vocab: int = 32, d_model: int = 32, std: float = 0.3) -> ChinwagLM:
    """A 2-layer GQA model with a large init, so its greedy choices are far from ties."""
    torch.manual_seed(seed)
    cfg = get_config("tiny", vocab_size=vocab, d_model=d_model, n_layers=2, n_heads=2, n_kv_heads=1,
                     ffn_hidden=2 * d_model, max_seq_len=64, init_std=std)  # fmt: skip
    return ChinwagLM(cfg).eval()


@torch.inference_mode()
def greedy(model, prompt, n, stop=()):
    """Reference greedy decoding by full forwards (no cache): what every strategy must reproduce."""
    ids = list(prompt)
    for _ in range(n):
        t = int(model(torch.tensor([ids]))[0][0, -1].argmax())
        if t in stop:
            break
        ids.append(t)
    return ids[len(prompt) :]
