"""chinwag.model: the Llama-layout decoder, its config and presets, save/load.

torch-dependent names (ChinwagLM, KVCache, save_model, load_model) load lazily so that importing
`chinwag.model.cli` (and `chinwag --help`) stays instant.
"""

from chinwag.model.config import ConfigError, ModelConfig
from chinwag.model.presets import PRESETS, get_config

_LAZY = {
    "ChinwagLM": "chinwag.model.model",
    "KVCache": "chinwag.model.model",
    "save_model": "chinwag.model.io",
    "load_model": "chinwag.model.io",
    "ModelFileError": "chinwag.model.io",
}

__all__ = ["PRESETS", "ConfigError", "ModelConfig", "get_config", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chinwag.model' has no attribute {name!r}")
