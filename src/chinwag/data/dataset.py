"""Loaders over the memmapped token files `prepare` writes.

Pretrain: the split is one flat token stream; row i is the window [i*T, i*T + T + 1) (stride T, no
overlap), input = window[:-1], targets = window[1:]. Documents are packed back to back, separated by
<|eos|>, which is how the model learns where a document ends.

SFT: one conversation per row. A conversation longer than T + 1 tokens is truncated from the right (the
start holds the system prompt and the first turns, which the rest depends on); shorter ones are
right-padded with <|pad|> (targets -100, attention_mask False). A conversation whose window holds no
supervised token would give a row with no loss (NaN mean), so it is dropped here and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IGNORE_INDEX = -100


def _memmap(path: Path, dtype, n: int) -> np.ndarray:
    if n == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


class TokenDataset:
    def __init__(self, folder, split: str, seq_len: int):
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path}: not found; run `chinwag data prepare --tokenizer ...` to write token files"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if split not in meta["splits"]:
            raise KeyError(f"{folder}: no split {split!r} (have {', '.join(meta['splits'])})")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.folder, self.split, self.seq_len = folder, split, int(seq_len)
        self.meta = meta
        self.mode: str = meta["mode"]
        self.vocab_size: int = int(meta["vocab_size"])
        self.pad_id: int = int(meta.get("pad_id", 0))
        self.dtype = np.dtype(meta["dtype"])
        self.offsets = np.load(folder / f"{split}.offsets.npy", mmap_mode="r")
        self.n_tokens = int(self.offsets[-1])
        self.tokens = _memmap(folder / f"{split}.tokens.bin", self.dtype, self.n_tokens)
        self.mask = _memmap(folder / f"{split}.mask.bin", np.uint8, self.n_tokens)
        self.n_examples = len(self.offsets) - 1
        self.n_dropped = 0
        if self.mode == "pretrain":
            self._rows = None
            self._len = max(0, (self.n_tokens - 1) // self.seq_len)
        else:
            self._rows = self._sft_rows()
            self._len = len(self._rows)

    def _sft_rows(self) -> np.ndarray:
        """Indices of the examples whose (truncated) window has at least one supervised target."""
        keep = []
        off, T = self.offsets, self.seq_len
        for i in range(self.n_examples):
            start, end = int(off[i]), int(off[i + 1])
            # targets are ids[1:] masked by mask[1:], within the first T + 1 tokens
            if self.mask[start + 1 : min(end, start + T + 1)].any():
                keep.append(i)
        self.n_dropped = self.n_examples - len(keep)
        return np.asarray(keep, dtype=np.int64)

    def __len__(self) -> int:
        return self._len

    def _window(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        if self._rows is None:
            start = row * self.seq_len
            end = start + self.seq_len + 1
        else:
            e = int(self._rows[row])
            start = int(self.offsets[e])
            end = min(int(self.offsets[e + 1]), start + self.seq_len + 1)
        return np.asarray(self.tokens[start:end], dtype=np.int64), np.asarray(
            self.mask[start:end], dtype=bool
        )

    def get_rows(self, indices) -> dict:
        """dict(input_ids LongTensor[B,T], targets LongTensor[B,T] (-100: no loss),
        attention_mask BoolTensor[B,T]) for the given row indices."""
        import torch

        indices = [int(i) for i in indices]
        B, T = len(indices), self.seq_len
        inputs = np.full((B, T), self.pad_id, dtype=np.int64)
        targets = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        attn = np.zeros((B, T), dtype=bool)
        for b, row in enumerate(indices):
            if not 0 <= row < self._len:
                raise IndexError(f"row {row} out of range for {self._len} rows")
            ids, mask = self._window(row)
            n = len(ids) - 1
            inputs[b, :n] = ids[:-1]
            targets[b, :n] = np.where(mask[1:], ids[1:], IGNORE_INDEX)
            attn[b, :n] = True
        return {
            "input_ids": torch.from_numpy(inputs),
            "targets": torch.from_numpy(targets),
            "attention_mask": torch.from_numpy(attn),
        }

    def __getitem__(self, row: int) -> dict:
        return {k: v[0] for k, v in self.get_rows([row]).items()}

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The full (untruncated) ids and mask of stored example i (not row i)."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.tokens[start:end]), np.asarray(self.mask[start:end])

    def __repr__(self) -> str:
        return (
            f"TokenDataset({self.folder}, split={self.split!r}, mode={self.mode!r}, seq_len={self.seq_len}, "
            f"rows={len(self)}, tokens={self.n_tokens}, dropped={self.n_dropped})"
        )


def load_split(folder, split: str, seq_len: int) -> TokenDataset:
    return TokenDataset(folder, split, seq_len)
