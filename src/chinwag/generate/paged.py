"""A paged KV cache: fixed-size blocks from one shared pool, a block table per sequence.

Memory is the pool `[n_layers, num_blocks * block_size, n_kv, hd]` (keys and values). A sequence owns the
blocks listed in its table; token t lives in slot `table[t // block_size] * block_size + t % block_size`.
Blocks are taken from the free list as a sequence grows and returned when it finishes, so sequences of
mixed lengths share memory without each reserving the whole context (vLLM's PagedAttention idea, in plain
PyTorch: decode gathers each sequence's slots into a dense [B, n_kv, T, hd] and runs the same attention as
the contiguous cache, so outputs are identical).

Admission reserves a request's worst case (prompt + max_new_tokens) up front, so a running sequence never
runs out of blocks mid-generation: a request that does not fit now waits in the engine's queue, and one
that could never fit (more blocks than the pool) is refused with `OutOfBlocks` at `add_request`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from chinwag.generate.engine import StepContext, decode_attention, prefill_attention


class OutOfBlocks(ValueError):
    """A request needs more KV blocks than the pool holds (or a sequence grew past its reservation)."""


class PagedKVCache:
    kind = "paged"

    def __init__(
        self, cfg, num_blocks: int, block_size: int = 16, max_batch: int = 32, device=None, dtype=None
    ):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1 (got {num_blocks}, {block_size})")
        self.cfg, self.num_blocks, self.block_size, self.max_batch = cfg, num_blocks, block_size, max_batch
        self.device = device
        shape = (cfg.n_layers, num_blocks * block_size, cfg.n_kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        self.v = torch.zeros_like(self.k)
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))  # a stack: lowest id first
        self.tables: dict[int, list[int]] = {}
        self.lens: dict[int, int] = {}
        self.reserved: dict[int, int] = {}  # blocks promised to each sequence (its worst case)

    def __repr__(self) -> str:
        return (
            f"PagedKVCache({self.num_blocks} blocks x {self.block_size} tokens, "
            f"{len(self.free_blocks)} free, {len(self.tables)} sequences)"
        )

    # ---- bookkeeping -------------------------------------------------------------------------------------
    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def num_free_unreserved(self) -> int:
        promised = sum(self.reserved[s] - len(t) for s, t in self.tables.items())
        return len(self.free_blocks) - promised

    def check_fits(self, max_total: int) -> None:
        if self.blocks_for(max_total) > self.num_blocks:
            raise OutOfBlocks(
                f"request needs {self.blocks_for(max_total)} KV blocks of {self.block_size} tokens; "
                f"the pool has {self.num_blocks} (raise num_blocks or lower max_new_tokens)"
            )

    def can_admit(self, max_total: int) -> bool:
        return len(self.tables) < self.max_batch and self.blocks_for(max_total) <= self.num_free_unreserved()

    def add(self, seq_id: int, max_total: int) -> None:
        self.check_fits(max_total)
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id} is already in the cache")
        self.tables[seq_id], self.lens[seq_id] = [], 0
        self.reserved[seq_id] = self.blocks_for(max_total)

    def free(self, seq_id: int) -> None:
        self.free_blocks.extend(reversed(self.tables.pop(seq_id)))
        del self.lens[seq_id], self.reserved[seq_id]

    def num_seqs(self) -> int:
        return len(self.tables)

    def order(self, seq_ids: Sequence[int]) -> list[int]:
        return list(seq_ids)

    def _ensure(self, seq_id: int, n_tokens: int) -> list[int]:
        table = self.tables[seq_id]
        while len(table) * self.block_size < n_tokens:
            if not self.free_blocks:
                raise OutOfBlocks(f"KV pool exhausted while growing sequence {seq_id} ({self!r})")
            table.append(self.free_blocks.pop())
        return table

    def _slots(self, table: list[int], start: int, end: int) -> torch.Tensor:
        t = torch.arange(start, end, device=self.device)
        blocks = torch.tensor(table, device=self.device)
        return blocks[t // self.block_size] * self.block_size + t % self.block_size

    # ---- the cache protocol the engine drives ------------------------------------------------------------
    def begin(self, seq_ids: list[int], n_new: int) -> StepContext:
        dev, bs = self.device, self.block_size
        if n_new > 1 or self.lens[seq_ids[0]] == 0:  # prefill of one fresh sequence
            (sid,) = seq_ids
            table = self._ensure(sid, n_new)
            pos = torch.arange(n_new, device=dev)[None]
            return StepContext(seq_ids, True, pos, extra={"write": self._slots(table, 0, n_new)})
        lens = [self.lens[s] for s in seq_ids]
        tables = [self._ensure(s, n + 1) for s, n in zip(seq_ids, lens, strict=True)]
        B, T = len(seq_ids), max(lens) + 1
        width = max(len(t) for t in tables)
        tbl = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev)  # [B, blocks]
        lens_t = torch.tensor(lens, device=dev)
        ar = torch.arange(T, device=dev)
        gather = tbl[:, ar // bs] * bs + ar % bs  # [B, T] pool slot of every key position
        write = gather[torch.arange(B, device=dev), lens_t]  # where this step's token goes
        bias = None
        if min(lens) != max(lens):
            bias = torch.zeros(B, 1, 1, T, device=dev, dtype=self.k.dtype)
            bias.masked_fill_(~(ar[None] <= lens_t[:, None])[:, None, None], float("-inf"))
        return StepContext(seq_ids, False, lens_t[:, None], bias, {"write": write, "gather": gather})

    def attend(self, layer: int, q, k, v, ctx: StepContext):
        kp, vp = self.k[layer], self.v[layer]
        write = ctx.extra["write"]
        if ctx.prefill:
            kp.index_copy_(0, write, k[0].transpose(0, 1))  # [T, n_kv, hd]
            vp.index_copy_(0, write, v[0].transpose(0, 1))
            return prefill_attention(q, k, v)
        kp.index_copy_(0, write, k[:, :, 0])
        vp.index_copy_(0, write, v[:, :, 0])
        g = ctx.extra["gather"]
        keys = kp[g].permute(0, 2, 1, 3)  # [B, T, n_kv, hd] -> [B, n_kv, T, hd]
        vals = vp[g].permute(0, 2, 1, 3)
        return decode_attention(q, keys, vals, ctx.bias)

    def commit(self, ctx: StepContext) -> None:
        n = ctx.positions.shape[1]
        for s in ctx.seq_ids:
            self.lens[s] += n
