"""ModelConfig: every shape and option of a ChinwagLM, saved beside the weights as `config.json`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from chinwag.utils import atomic_write_text

ACTIVATIONS = ("swiglu", "gelu", "relu", "relu2")
POSITIONS = ("rope", "learned")
ROPE_SCALING_TYPES = ("linear", "dynamic", "yarn")
# keys each rope_scaling type accepts beyond "type" (HF names where they exist)
_ROPE_SCALING_KEYS = {
    "linear": {"factor"},
    "dynamic": {"factor", "original_max_seq_len"},
    "yarn": {"factor", "original_max_seq_len", "beta_fast", "beta_slow", "attention_factor", "truncate"},
}


class ConfigError(ValueError):
    """A model config that cannot describe a working model (the message names the field)."""


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int | None = None  # None = n_heads (MHA); fewer = GQA; 1 = MQA
    ffn_hidden: int | None = None  # None = 8/3 d (SwiGLU) or 4 d, rounded up to a multiple of 64
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"type": linear|dynamic|yarn, "factor", "original_max_seq_len", ...}
    learnable_rope_freqs: bool = False
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    activation: str = "swiglu"
    position: str = "rope"
    qk_norm: bool = False
    ffn_chunk_size: int | None = None  # compute the MLP over sequence chunks of this many tokens
    init_std: float = 0.02
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # free-form notes (e.g. preset name); not used by code

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden is None:
            self.ffn_hidden = default_ffn_hidden(self.d_model, self.activation)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ConfigError(f"model config field {name!r}: {msg} (got {getattr(self, name)!r})")

        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "ffn_hidden",
            "max_seq_len",
        ):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "must be a positive integer")
        need(self.d_model % self.n_heads == 0, "d_model", f"must be divisible by n_heads={self.n_heads}")
        need(self.n_heads % self.n_kv_heads == 0, "n_kv_heads", f"must divide n_heads={self.n_heads}")
        need(self.activation in ACTIVATIONS, "activation", f"must be one of {', '.join(ACTIVATIONS)}")
        need(self.position in POSITIONS, "position", f"must be one of {', '.join(POSITIONS)}")
        if self.position == "rope":
            need(self.head_dim % 2 == 0, "d_model", "d_model / n_heads must be even for RoPE")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.norm_eps > 0, "norm_eps", "must be > 0")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.init_std > 0, "init_std", "must be > 0")
        need(
            self.ffn_chunk_size is None or (isinstance(self.ffn_chunk_size, int) and self.ffn_chunk_size > 0),
            "ffn_chunk_size",
            "must be None or a positive integer",
        )
        need(isinstance(self.extra, dict), "extra", "must be a JSON object")
        self._validate_rope_scaling()

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        where = "model config field 'rope_scaling'"
        if not isinstance(rs, dict):
            raise ConfigError(f"{where}: must be null or an object (got {rs!r})")
        kind = rs.get("type")
        if kind not in ROPE_SCALING_TYPES:
            raise ConfigError(
                f"{where}: 'type' must be one of {', '.join(ROPE_SCALING_TYPES)} (got {kind!r})"
            )
        if self.position != "rope":
            raise ConfigError(f"{where}: only applies to position='rope' (got {self.position!r})")
        unknown = set(rs) - {"type"} - _ROPE_SCALING_KEYS[kind]
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) for type {kind!r}: {', '.join(sorted(unknown))}")
        f = rs.get("factor")
        if not isinstance(f, (int, float)) or isinstance(f, bool) or f < 1.0:
            raise ConfigError(f"{where}: 'factor' must be a number >= 1 (got {f!r})")
        if kind in ("dynamic", "yarn"):
            o = rs.get("original_max_seq_len")
            if not isinstance(o, int) or o <= 0:
                raise ConfigError(
                    f"{where}: {kind} needs 'original_max_seq_len', a positive integer (got {o!r})"
                )

    # ---- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def from_dict(cls, d: Any, where: str = "<dict>") -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown model config key(s): {', '.join(unknown)}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        except TypeError as e:  # e.g. a string where a number belongs
            raise ConfigError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        from chinwag.utils import read_json

        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_dict(read_json(path), where=str(path))

    def replace(self, **overrides) -> ModelConfig:
        d = self.to_dict()
        unknown = sorted(set(overrides) - set(d))
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(unknown)}")
        d.update(overrides)
        return ModelConfig(**d)


def default_ffn_hidden(d_model: int, activation: str) -> int:
    """SwiGLU has 3 matrices, so 8/3*d keeps the MLP at the same size as a 4*d two-matrix MLP."""
    h = 8 * d_model // 3 if activation == "swiglu" else 4 * d_model
    return (h + 63) // 64 * 64
