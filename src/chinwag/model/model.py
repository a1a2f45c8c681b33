"""ChinwagLM: a Llama-layout decoder (pre-norm RMSNorm, RoPE, GQA attention, SwiGLU) in one file.

Parameter names are exactly Hugging Face `LlamaForCausalLM`'s, and RoPE uses HF's `rotate_half` layout
(dims i and i + head_dim/2 form a pair), so exporting to HF is a plain safetensors save. Options HF Llama
lacks (learned positions, qk-norm, non-gated MLPs, learnable RoPE frequencies) add their own names.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from chinwag.model.config import ModelConfig

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class RMSNorm(nn.Module):
    """HF's LlamaRMSNorm, op for op: normalise in fp32, cast back, then scale."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# ---- RoPE ------------------------------------------------------------------------------------------------


def rope_inv_freq(cfg: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the cos/sin scale, as HF's `modeling_rope_utils` computes them.

    linear: every frequency / factor (positions squeezed into the trained range).
    dynamic: NTK-aware base growth once the sequence passes `original_max_seq_len` (depends on seq_len).
    yarn: per-frequency blend of interpolation (low freqs) and extrapolation (high freqs), plus an
          attention temperature (0.1 ln(factor) + 1) applied to cos and sin.
    """
    dim, base = cfg.head_dim, float(cfg.rope_theta)
    rs = cfg.rope_scaling or {}
    kind, factor = rs.get("type"), float(rs.get("factor", 1.0))
    if kind == "dynamic":
        orig = rs["original_max_seq_len"]
        seq_len = max(seq_len or orig, orig)
        base = base * ((factor * seq_len / orig) - (factor - 1)) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (base**exponents)
    if kind == "linear":
        inv_freq = inv_freq / factor
    scale = 1.0
    if kind == "yarn":
        inv_freq, scale = _yarn(inv_freq, base, dim, factor, rs)
    return inv_freq, scale


def _yarn(inv_freq, base, dim, factor, rs):
    orig = rs["original_max_seq_len"]
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
    scale = rs.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

    def corr_dim(n_rot):  # the dimension whose wavelength fits n_rot times into the original context
        return (dim * math.log(orig / (n_rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1 = keep the original frequency (high-frequency dims)
    return (inv_freq / factor) * (1 - extrapolate) + inv_freq * extrapolate, float(scale)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x [B, H, T, hd]; cos/sin [B, 1, T, hd]."""
    return x * cos + rotate_half(x) * sin


class Rotary(nn.Module):
    """Computes cos/sin for given positions. Frequencies are recomputed from the config in fp32 on every call
    (cheap: hd/2 numbers) so casting the model to bf16 never degrades them; only the learnable variant stores
    them, as the parameter `model.rotary_emb.inv_freq`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.learnable_rope_freqs:
            self.inv_freq = nn.Parameter(rope_inv_freq(cfg)[0])

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions [B, T] (long) -> cos, sin [B, 1, T, hd] in `dtype`."""
        if self.cfg.learnable_rope_freqs:
            inv_freq, scale = self.inv_freq.float(), rope_inv_freq(self.cfg)[1]
        else:
            dynamic = (self.cfg.rope_scaling or {}).get("type") == "dynamic"
            seq_len = int(positions.max()) + 1 if dynamic and positions.device.type != "meta" else None
            inv_freq, scale = rope_inv_freq(self.cfg, seq_len)
            inv_freq = inv_freq.to(positions.device)
        freqs = positions[:, :, None].float() * inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scale).to(dtype)[:, None], (emb.sin() * scale).to(dtype)[:, None]


# ---- KV cache --------------------------------------------------------------------------------------------


class KVCache:
    """Preallocated keys/values [n_layers, B, n_kv_heads, max_len, head_dim] plus a key padding mask.

    `model(ids, kv_cache=cache, start_pos=p)` writes positions p..p+T-1 and attends to 0..p+T-1, so
    prefill is `start_pos=0` and decode is one token at a time with `start_pos=cache.length`.
    Rewinding (start_pos < length) simply overwrites.
    """

    def __init__(
        self, cfg: ModelConfig, batch_size: int, max_len: int | None = None, device=None, dtype=None
    ):
        max_len = max_len or cfg.max_seq_len
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        self.v = torch.zeros_like(self.k)
        self.mask = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)  # True = real key
        self.length = 0
        self.batch_size, self.max_len = batch_size, max_len

    @classmethod
    def for_model(cls, model: ChinwagLM, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        p = next(model.parameters())
        return cls(model.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    def reset(self) -> None:
        self.length = 0
        self.mask.fill_(True)

    def __len__(self) -> int:
        return self.length

    def update(self, layer: int, start: int, k, v):
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# ---- blocks ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        self.q_proj = nn.Linear(cfg.d_model, nh * hd, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, nkv * hd, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, cfg.d_model, bias=False)
        if cfg.qk_norm:  # per-head RMSNorm on q and k (Qwen3/OLMo2 names); stabilises attention logits
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)

    def forward(self, x, rope, mask, layer, kv_cache, start_pos):
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, start_pos, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)  # no-op unless autocast computes in another dtype
        gqa = cfg.n_kv_heads != cfg.n_heads
        if gqa and not _SDPA_HAS_GQA:  # old torch: materialise the shared heads
            rep = cfg.n_heads // cfg.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        extra = {"enable_gqa": True} if gqa and _SDPA_HAS_GQA else {}
        p = cfg.dropout if self.training else 0.0
        if mask is None:  # plain causal, no cache offset: lets SDPA pick its fused kernels
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, **extra)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, **extra)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act, self.chunk = cfg.activation, cfg.ffn_chunk_size
        if self.act == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def _ffn(self, x):
        if self.act == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.act == "gelu":
            h = F.gelu(self.up_proj(x))
        elif self.act == "relu":
            h = F.relu(self.up_proj(x))
        else:  # relu2 (Primer): relu(x)^2
            h = F.relu(self.up_proj(x)).square()
        return self.down_proj(h)

    def forward(self, x):
        # the hidden activation is ffn_hidden wide (~2.7-4x d); chunking along T caps its peak memory
        if self.chunk is None or x.shape[1] <= self.chunk:
            return self._ffn(x)
        return torch.cat([self._ffn(c) for c in x.split(self.chunk, dim=1)], dim=1)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, idx: int):
        super().__init__()
        self.idx = idx
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, kv_cache=None, start_pos=0):
        x = x + self.drop(self.self_attn(self.input_layernorm(x), rope, mask, self.idx, kv_cache, start_pos))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class Backbone(nn.Module):
    """Named `model` inside ChinwagLM so parameter names match HF's `LlamaModel`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.position == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        else:
            self.rotary_emb = Rotary(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


# ---- the model -------------------------------------------------------------------------------------------


class ChinwagLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.drop = nn.Dropout(config.dropout)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter, two uses
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanoGPT/GPT-2 init: N(0, init_std) everywhere, residual projections scaled by 1/sqrt(2 n_layers)
        so the residual stream's variance does not grow with depth; norms start at 1."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("inv_freq"):
                p.copy_(rope_inv_freq(self.config)[0])
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                p.normal_(0.0, std)

    def new_kv_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        return KVCache.for_model(self, batch_size, max_len)

    def _mask_and_positions(self, B, T, device, attention_mask, kv_cache, start_pos):
        """Returns (attn_mask or None for plain causal, positions [B, T]).

        Positions count real tokens only, so a left-padded row sees positions 0, 1, ... like the unpadded
        sequence (matters for learned positions and dynamic RoPE; RoPE is relative anyway).
        """
        total = start_pos + T
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=device, dtype=torch.bool)
            if attention_mask.shape not in ((B, T), (B, total)):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(B, T)} "
                    f"(new tokens) or {(B, total)} (all keys)"
                )
        if kv_cache is not None:
            if total > kv_cache.max_len or B != kv_cache.batch_size:
                raise ValueError(
                    f"KV cache holds {kv_cache.batch_size} x {kv_cache.max_len}; got batch {B}, "
                    f"positions up to {total}"
                )
            if attention_mask is not None and attention_mask.shape[1] == total:
                kv_cache.mask[:, :total] = attention_mask
            else:
                kv_cache.mask[:, start_pos:total] = True if attention_mask is None else attention_mask
            key_mask = kv_cache.mask[:, :total]
            kv_cache.length = total
        else:
            if start_pos != 0:
                raise ValueError("start_pos > 0 needs a kv_cache")
            key_mask = attention_mask
        if key_mask is None or bool(key_mask.all()):
            positions = torch.arange(start_pos, total, device=device).expand(B, T)
            if start_pos == 0:
                return None, positions  # fast path: is_causal
        else:
            positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start_pos:]
        q_idx = torch.arange(start_pos, total, device=device)[:, None]
        k_idx = torch.arange(total, device=device)[None, :]
        causal = k_idx <= q_idx  # [T, total]
        mask = causal[None] if key_mask is None else causal[None] & key_mask[:, None, :]
        # a padding query whose only visible keys are padding would softmax over nothing (NaN): let every
        # query see itself. Real queries never see padding keys, so their outputs are unaffected.
        mask = mask | (k_idx == q_idx)[None]
        return mask[:, None], positions  # [B or 1, 1, T, total]

    def hidden(self, ids, attention_mask=None, kv_cache=None, start_pos: int = 0) -> torch.Tensor:
        """ids [B, T] -> the final normed hidden states [B, T, d]: everything but the lm_head.

        Reward models and value heads read these directly instead of re-implementing the forward."""
        cfg = self.config
        B, T = ids.shape
        if start_pos + T > cfg.max_seq_len and cfg.position == "learned":
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds max_seq_len={cfg.max_seq_len}")
        mask, positions = self._mask_and_positions(B, T, ids.device, attention_mask, kv_cache, start_pos)
        x = self.model.embed_tokens(ids)
        rope = None
        if cfg.position == "learned":
            x = x + self.model.embed_positions(positions)
        else:
            rope = self.model.rotary_emb(positions, x.dtype)
        x = self.drop(x)
        use_ckpt = (
            cfg.gradient_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        )
        for layer in self.model.layers:
            if use_ckpt:  # keep only block inputs; recompute the block in backward (saves ~all activations)
                x = checkpoint(layer, x, rope, mask, use_reentrant=False)
            else:
                x = layer(x, rope, mask, kv_cache, start_pos)
        return self.model.norm(x)

    def forward(self, ids, targets=None, attention_mask=None, kv_cache=None, start_pos: int = 0):
        """ids [B, T] -> (logits [B, T, V], loss or None). targets use -100 for positions without loss."""
        logits = self.lm_head(self.hidden(ids, attention_mask, kv_cache, start_pos))
        loss = None
        if targets is not None:
            # fp32 loss even under bf16 autocast; sum / count so an all-ignored batch gives 0, not NaN
            flat = targets.reshape(-1)
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), flat, ignore_index=-100, reduction="sum"
            )
            loss = loss / (flat != -100).sum().clamp(min=1)
        return logits, loss

    # ---- bookkeeping -------------------------------------------------------------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied lm_head counts once). exclude_embeddings drops the input lookup tables
        (token and learned position embeddings); an untied lm_head is a real matmul and stays."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            if not self.config.tie_embeddings:  # tied: the matrix is also lm_head, a real matmul; keep it
                n -= self.model.embed_tokens.weight.numel()
            if self.config.position == "learned":
                n -= self.model.embed_positions.weight.numel()
        return n

    def estimate_flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), nanoGPT/PaLM appendix B:
        6 * N_matmul + 12 * n_layers * n_heads * head_dim * seq_len, where N_matmul is every weight used in a
        matmul (all but the embedding lookups; the lm_head counts even when tied) and the second term is the
        attention score/value matmuls (counted as full, not causal-halved, as PaLM does)."""
        cfg = self.config
        T = seq_len or cfg.max_seq_len
        n = self.num_params(exclude_embeddings=True)
        return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: matrices (dim >= 2: linear and embedding weights) decay; norms, biases and
        learnable RoPE frequencies do not."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
