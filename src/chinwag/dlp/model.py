"""DLPModel: the scanner's hierarchical fast/slow encoder (issue 8), adapted from HRM (sapientinc/HRM).

Fast tier: a bidirectional transformer (pre-norm RMSNorm, RoPE, SwiGLU; the decoder layers of
`chinwag.model` run with a key-padding mask instead of a causal one) over the tokens of one segment.

Slow tier: a hierarchy over *positions*. Every `pool_every` tokens the fast features of that chunk are pooled
(masked mean ‖ max ‖ first real token -> projection) and a slow state [B, slow_dim] takes one tick:
`slow_blocks` GRU cells applied in turn to the same state, each re-reading the pooled chunk (input
injection, as HRM re-injects x at every cycle). A chunk holding only padding leaves the state unchanged,
so padding never moves the slow state or the document scores.

How the slow state enters the token features: each token sees `s`, the state right after its own chunk's
tick (it has read the chunk and everything before it, plus the seed). The issue's gate fuses input x
(the token embedding), fast output h and s:  g = σ(W[x‖h‖s]),  h' = g⊙Ux + (1−g)⊙Uh.  So s enters the
span features only through the gate (it decides, per channel, how much to trust the raw input over the
contextual features); it enters the document heads directly. With `gates=False`, h' = h (the ablation).

Segments: a long input is cut into fixed segments of `segment_len` tokens; the slow state (and the running
pooled sum the document heads read) are carried from one segment to the next, detached by default: HRM's
one-step gradient, i.e. the streaming analogue of k=1 truncated BPTT. Each segment gets its own document
logits (deep supervision on the prefix seen so far); the final document logits are the last segment's.

Training-only pieces (used by `chinwag.dlp.train`'s auxiliary losses, ignored at inference, a few thousand
parameters): a learned [MASK] vector that replaces the embedding of the positions in `mask_positions`; a
denoise head tied to the embedding (`denoise_logits`: RMSNorm then the embedding matrix transposed, so it
costs no vocab-sized weight of its own); and a section-shuffle logit read from the document summary (the
slow state and the pooled features), because "are these sections in order" is a question about the whole
document, which is what the slow tier exists to hold.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from chinwag.model.config import ModelConfig
from chinwag.model.model import DecoderLayer, RMSNorm, Rotary
from chinwag.utils import read_json, write_json

DOC_HEADS = ("sensitivity", "exposure", "context", "obfuscation")
FLAGS = ("has_pan", "has_ssn", "has_secret", "has_db_uri", "has_nda", "has_matter", "has_pii")


class DLPConfigError(ValueError):
    """A DLP model config that cannot describe a working model (the message names the field)."""


@dataclass
class DLPConfig:
    vocab_size: int = 16000  # the DSL SentencePiece vocabulary (16k)
    d: int = 384
    n_layers: int = 8  # fast tier
    n_heads: int = 6
    ffn_hidden: int | None = None  # None = 8/3 d for SwiGLU (1024 at d=384), 4 d otherwise
    glu: bool = True  # SwiGLU MLP; False = GELU
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    pool_every: int = 64  # slow tier ticks once per this many tokens
    slow_blocks: int = 2  # GRU cells per tick
    slow_dim: int = 384
    n_doc_heads: int = 4
    n_bio_tags: int = 21
    memory_dim: int = 256
    flags: list[str] = field(default_factory=lambda: list(FLAGS))
    gates: bool = True  # False: the gate ablation, h' = h
    n_hints: int = 0  # > 0: token ids carry a lexical hint (chinwag.dlp.hints), embedded and added
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (preset name); unused by code

    def __post_init__(self):
        self.flags = list(self.flags)
        self.validate()

    @property
    def n_flags(self) -> int:
        return len(self.flags)

    def validate(self) -> None:
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise DLPConfigError(f"dlp config field {name!r}: {msg} (got {getattr(self, name)!r})")

        for name in ("vocab_size", "d", "n_layers", "n_heads", "pool_every", "slow_blocks", "slow_dim"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "must be a positive integer")
        for name in ("n_doc_heads", "n_bio_tags", "memory_dim"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "must be a positive integer")
        need(
            self.d % self.n_heads == 0 and (self.d // self.n_heads) % 2 == 0, "d", "d / n_heads must be even"
        )
        ffn_ok = self.ffn_hidden is None or (isinstance(self.ffn_hidden, int) and self.ffn_hidden > 0)
        need(ffn_ok, "ffn_hidden", "must be None or a positive integer")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(all(isinstance(f, str) and f for f in self.flags), "flags", "must be a list of names")

    def fast_config(self) -> ModelConfig:
        """The `chinwag.model` config whose decoder layers make up the fast tier."""
        return ModelConfig(
            vocab_size=self.vocab_size,
            d_model=self.d,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            ffn_hidden=self.ffn_hidden,
            rope_theta=self.rope_theta,
            norm_eps=self.norm_eps,
            dropout=self.dropout,
            activation="swiglu" if self.glu else "gelu",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        write_json(path, self.to_dict())  # atomic
        return Path(path)

    @classmethod
    def from_dict(cls, d: Any, where: str = "<dict>") -> DLPConfig:
        if not isinstance(d, dict):
            raise DLPConfigError(f"{where}: a dlp config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DLPConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except DLPConfigError as e:
            raise DLPConfigError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> DLPConfig:
        return cls.from_dict(read_json(path), where=str(path))


DLP_PRESETS: dict[str, dict] = {
    "dlp-base": {},  # the design config (the dataclass defaults): too slow to train on this CPU
    # sizes that train on one CPU thread in ~35 minutes (pilot table in docs/dlp.md)
    "dlp-small": dict(d=128, n_layers=4, n_heads=4, slow_dim=128),
    # dlp-small reading the lexical hints (chinwag.dlp.hints) as well as the tokens: the shipped scanner
    "dlp-small-hints": dict(d=128, n_layers=4, n_heads=4, slow_dim=128, n_hints=14),
    "dlp-medium": dict(d=256, n_layers=4, n_heads=4, slow_dim=256),
    "dlp-tiny": dict(
        vocab_size=64, d=32, n_layers=2, n_heads=2, pool_every=8, slow_blocks=2, slow_dim=24, memory_dim=16
    ),
}


def get_dlp_config(name: str, **overrides) -> DLPConfig:
    if name not in DLP_PRESETS:
        raise DLPConfigError(f"unknown dlp preset {name!r} (choose from {', '.join(DLP_PRESETS)})")
    return DLPConfig(**{**DLP_PRESETS[name], **overrides, "extra": {"preset": name}})


@dataclass
class DLPOutput:
    doc_logits: torch.Tensor  # [B, n_doc_heads]; the last segment's
    bio_logits: torch.Tensor  # [B, T, n_bio_tags]
    memory: torch.Tensor  # [B, memory_dim]
    flag_logits: torch.Tensor  # [B, n_flags]
    slow_state: torch.Tensor  # [B, slow_dim], after the last real chunk
    per_segment_doc_logits: list[torch.Tensor]  # one [B, n_doc_heads] per segment (deep supervision)
    hidden: torch.Tensor | None = None  # [B, T, d] fused token features h' (the BIO head's input)
    shuffle_logits: torch.Tensor | None = None  # [B] "sections were swapped" (training-only aux head)


class SlowTier(nn.Module):
    """Pools a chunk of fast features and ticks the slow state with `slow_blocks` GRU cells."""

    def __init__(self, cfg: DLPConfig):
        super().__init__()
        self.pool_norm = RMSNorm(3 * cfg.d, cfg.norm_eps)
        self.pool_proj = nn.Linear(3 * cfg.d, cfg.slow_dim)
        self.cells = nn.ModuleList(nn.GRUCell(cfg.slow_dim, cfg.slow_dim) for _ in range(cfg.slow_blocks))

    def pool(self, h, mask):
        """h [B, L, d], mask [B, L] bool -> [B, slow_dim]: masked mean ‖ max ‖ first real token."""
        m = mask[..., None].to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        mx = h.masked_fill(~mask[..., None], float("-inf")).amax(1)
        mx = torch.where(mask.any(1, keepdim=True), mx, torch.zeros_like(mx))  # an all-pad chunk: no -inf
        first_idx = mask.int().argmax(1)  # index of the first True (0 if none)
        first = h[torch.arange(h.shape[0], device=h.device), first_idx]
        return self.pool_proj(self.pool_norm(torch.cat([mean, mx, first], dim=-1)))

    def forward(self, h, mask, s, pool_every):
        """One segment: h [B, S, d], mask [B, S] -> per-token state [B, S, slow_dim] and the new state."""
        per_chunk = []
        for start in range(0, h.shape[1], pool_every):
            hc, mc = h[:, start : start + pool_every], mask[:, start : start + pool_every]
            u = self.pool(hc, mc)
            new = s
            for cell in self.cells:  # input injection: every cell re-reads the pooled chunk
                new = cell(u, new)
            s = torch.where(mc.any(1, keepdim=True), new, s)  # padding-only chunk: state unchanged
            per_chunk.append(s[:, None].expand(-1, hc.shape[1], -1))
        return torch.cat(per_chunk, dim=1), s


class DLPModel(nn.Module):
    def __init__(self, cfg: DLPConfig):
        super().__init__()
        self.config = cfg
        fcfg = cfg.fast_config()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d)
        self.hint_embed = nn.Embedding(cfg.n_hints, cfg.d) if cfg.n_hints else None
        self.rotary = Rotary(fcfg)
        self.layers = nn.ModuleList(DecoderLayer(fcfg, i) for i in range(cfg.n_layers))
        self.fast_norm = RMSNorm(cfg.d, cfg.norm_eps)
        self.slow = SlowTier(cfg)
        self.slow_seed = nn.Parameter(torch.zeros(cfg.slow_dim))  # learned s0
        self.seed_from_memory = nn.Linear(cfg.memory_dim, cfg.slow_dim)  # thread memory -> slow seed
        if cfg.gates:
            self.gate = nn.Linear(2 * cfg.d + cfg.slow_dim, cfg.d)  # W
            self.u_x = nn.Linear(cfg.d, cfg.d, bias=False)  # U for the input
            self.u_h = nn.Linear(cfg.d, cfg.d, bias=False)  # U for the fast features
        self.out_norm = RMSNorm(cfg.d, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.bio_head = nn.Linear(cfg.d, cfg.n_bio_tags)
        summary = cfg.slow_dim + cfg.d  # [final slow state ‖ masked mean of h' so far]
        self.summary_norm = RMSNorm(summary, cfg.norm_eps)
        self.doc_head = nn.Linear(summary, cfg.n_doc_heads)
        self.memory_head = nn.Linear(summary, cfg.memory_dim)
        self.flag_head = nn.Linear(summary, cfg.n_flags)
        # training-only auxiliary pieces (see the module docstring)
        self.mask_embed = nn.Parameter(torch.zeros(cfg.d))  # initialised with the embeddings below
        self.denoise_norm = RMSNorm(cfg.d, cfg.norm_eps)
        self.shuffle_head = nn.Linear(summary, 1)
        self.apply(self._init_weights)
        nn.init.normal_(self.mask_embed, std=0.02)  # like a token embedding, not a zero vector

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; with hints, ids are `token + vocab_size * hint` (see hints.with_hints)."""
        if self.hint_embed is None:
            return self.embed(ids)
        V = self.config.vocab_size
        return self.embed(ids % V) + self.hint_embed(ids // V)

    def denoise_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Fused features h' [..., d] -> logits over the vocabulary [..., vocab_size] (tied to the embedding).
        Call it on the masked positions only: a full [B, T, vocab] would cost more than the encoder."""
        return F.linear(self.denoise_norm(h), self.embed.weight)

    def memory_to_seed(self, memory: torch.Tensor) -> torch.Tensor:
        """A previous document's memory summary [B, memory_dim] -> a slow seed [B, slow_dim]."""
        return self.seed_from_memory(memory)

    def _fast(self, x, mask):
        """Bidirectional fast tier over one segment; x [B, S, d], mask [B, S] (True = real)."""
        B, S, _ = x.shape
        # a row with no real token would give SDPA an all-masked row (NaN); let it attend anywhere, its
        # outputs are never read
        keys = mask | ~mask.any(1, keepdim=True)
        attn_mask = keys[:, None, None, :]  # [B, 1, 1, S]: padding keys hidden, never causal
        pos = torch.arange(S, device=x.device)[None].expand(B, S)  # segment-local positions
        rope = self.rotary(pos, x.dtype)
        h = x
        for layer in self.layers:
            h = layer(h, rope, attn_mask)
        return self.fast_norm(h)

    def _fuse(self, x, h, s_tok):
        if not self.config.gates:
            return h
        g = torch.sigmoid(self.gate(torch.cat([x, h, s_tok], dim=-1)))
        return g * self.u_x(x) + (1 - g) * self.u_h(h)

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        slow_seed: torch.Tensor | None = None,
        segment_len: int | None = None,
        detach_between_segments: bool = True,
        mask_positions: torch.Tensor | None = None,
    ) -> DLPOutput:
        """ids [B, T]; attention_mask [B, T] (True/1 = real token); slow_seed [B, slow_dim] thread memory
        (added to the learned seed; see `memory_to_seed`); segment_len a multiple of pool_every (None = the
        whole input is one segment); mask_positions [B, T] bool: embed these as the learned [MASK] vector
        (the mask-denoise auxiliary task; training only)."""
        cfg = self.config
        B, T = ids.shape
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        seg = T if segment_len is None else int(segment_len)
        if seg <= 0 or (segment_len is not None and seg % cfg.pool_every):
            raise ValueError(
                f"segment_len must be a positive multiple of pool_every={cfg.pool_every}, got {seg}"
            )
        s = self.slow_seed[None].expand(B, -1)
        if slow_seed is not None:
            s = s + slow_seed
        x_all = self.embed_ids(ids)
        if mask_positions is not None:
            x_all = torch.where(mask_positions[..., None], self.mask_embed.to(x_all.dtype), x_all)
        pooled_sum = x_all.new_zeros(B, cfg.d)  # running sum of h' over real tokens (doc heads read its mean)
        count = x_all.new_zeros(B, 1)
        bio, hidden, per_segment, summary = [], [], [], None
        for start in range(0, T, seg):
            if start > 0 and detach_between_segments:  # one-step gradient: the carry is a constant
                s, pooled_sum = s.detach(), pooled_sum.detach()
            x, m = x_all[:, start : start + seg], mask[:, start : start + seg]
            h = self._fast(x, m)
            s_tok, s = self.slow(h, m, s, cfg.pool_every)
            hp = self.out_norm(self._fuse(x, h, s_tok))
            hidden.append(hp)
            bio.append(self.bio_head(self.drop(hp)))
            mf = m[..., None].to(hp.dtype)
            pooled_sum = pooled_sum + (hp * mf).sum(1)
            count = count + mf.sum(1)
            summary = self.summary_norm(torch.cat([s, pooled_sum / count.clamp(min=1.0)], dim=-1))
            per_segment.append(self.doc_head(summary))
        return DLPOutput(
            doc_logits=per_segment[-1],
            bio_logits=torch.cat(bio, dim=1),
            memory=self.memory_head(summary),
            flag_logits=self.flag_head(summary),
            slow_state=s,
            per_segment_doc_logits=per_segment,
            hidden=torch.cat(hidden, dim=1),
            shuffle_logits=self.shuffle_head(summary)[:, 0],
        )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_param_count(cfg: DLPConfig) -> int:
    """Parameter count without allocating weights (built on the meta device)."""
    with torch.device("meta"):
        return count_params(DLPModel(cfg))
