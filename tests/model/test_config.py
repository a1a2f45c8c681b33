"""ModelConfig validation and serialisation; preset sizes (counted on the meta device)."""

from __future__ import annotations

import json

import pytest

from chinwag.model.config import ConfigError, ModelConfig
from chinwag.model.info import param_breakdown
from chinwag.model.presets import PRESETS, get_config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(d_model=100, n_heads=6), "d_model"),
        (dict(n_heads=6, n_kv_heads=4), "n_kv_heads"),
        (dict(activation="tanh"), "activation"),
        (dict(position="alibi"), "position"),
        (dict(dropout=1.0), "dropout"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(ffn_chunk_size=0), "ffn_chunk_size"),
        (dict(rope_scaling={"type": "ntk", "factor": 2.0}), "rope_scaling"),
        (dict(rope_scaling={"type": "yarn", "factor": 2.0}), "rope_scaling"),  # needs original_max_seq_len
        (dict(rope_scaling={"type": "linear", "factor": 0.5}), "rope_scaling"),
        (dict(rope_scaling={"type": "linear", "factor": 2.0, "beta": 1}), "rope_scaling"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


def test_defaults_and_head_dim():
    c = ModelConfig(d_model=384, n_heads=6)
    assert c.n_kv_heads == 6 and c.head_dim == 64
    assert c.ffn_hidden == 1024  # 8/3 * 384, multiple of 64
    assert ModelConfig(d_model=384, n_heads=6, activation="gelu").ffn_hidden == 1536


def test_save_load_round_trip(tmp_path):
    c = ModelConfig(n_kv_heads=2, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_seq_len": 128})
    p = c.save(tmp_path / "config.json")
    assert ModelConfig.load(p) == c
    assert ModelConfig.load(tmp_path) == c  # a folder works too
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_load_unknown_key_is_a_clear_error(tmp_path):
    d = ModelConfig().to_dict() | {"n_layer": 3}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"config\.json.*unknown model config key\(s\): n_layer"):
        ModelConfig.load(tmp_path / "config.json")


def test_load_bad_value_names_file_and_field(tmp_path):
    d = ModelConfig().to_dict() | {"n_heads": 5}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"config\.json.*d_model"):
        ModelConfig.load(tmp_path / "config.json")


def test_get_config_overrides_and_unknown_preset():
    c = get_config("small", vocab_size=1000)
    assert c.vocab_size == 1000 and c.d_model == 384 and c.extra["preset"] == "small"
    assert PRESETS["small"].vocab_size == 8192  # presets are not mutated
    with pytest.raises(ConfigError, match="tiny, small"):
        get_config("huge")
    with pytest.raises(ConfigError, match="d_modle"):
        get_config("tiny", d_modle=3)


def _n(name):
    return param_breakdown(PRESETS[name])["total"]


def test_preset_parameter_counts():
    assert abs(_n("aeron") - 3.85e9) / 3.85e9 <= 0.02
    assert 10e6 <= _n("small") <= 20e6
    assert 0.8e6 <= _n("tiny") <= 1.3e6
    assert 100e6 <= _n("aeron-small") <= 150e6
    assert 400e6 <= _n("aeron-medium") <= 600e6
    assert abs(_n("aeron-large") - 1.5e9) / 1.5e9 <= 0.05
    a = PRESETS["aeron"]
    assert (a.d_model, a.n_heads, a.n_kv_heads, a.max_seq_len, a.rope_theta) == (2048, 32, 8, 32768, 500000.0)
    assert a.tie_embeddings and a.activation == "swiglu" and a.position == "rope"
    h, n = PRESETS["hrom"], PRESETS["neuraflux"]
    assert (h.n_layers, h.n_heads, h.max_seq_len, h.activation) == (6, 8, 1024, "swiglu")
    assert (n.n_layers, n.n_heads, n.d_model, n.activation, n.position, n.vocab_size) == (
        6,
        6,
        384,
        "gelu",
        "learned",
        10000,
    )


def test_breakdown_matches_model_count():
    import torch

    from chinwag.model.model import ChinwagLM

    for name in ("tiny", "neuraflux"):
        c = get_config(name, tie_embeddings=False)
        with torch.device("meta"):
            m = ChinwagLM(c)
        b = param_breakdown(c)
        assert b["total"] == m.num_params() and b["lm_head"] == c.vocab_size * c.d_model
