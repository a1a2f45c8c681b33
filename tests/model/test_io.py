"""save_model / load_model round trip and clear errors on broken folders."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from chinwag.model.config import ModelConfig
from chinwag.model.io import ModelFileError, load_model, save_model
from chinwag.model.model import ChinwagLM


def small(**kw):
    torch.manual_seed(0)
    c = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, **kw)
    return ChinwagLM(c).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip(tmp_path, tied):
    m = small(tie_embeddings=tied)
    save_model(m, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert ("lm_head.weight" in set(f.keys())) == (not tied)  # shared tensor stored once
    back = load_model(tmp_path)
    assert back.config == m.config
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(back(ids)[0], m(ids)[0])
    if tied:
        assert back.lm_head.weight is back.model.embed_tokens.weight
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_with_dtype(tmp_path):
    save_model(small(), tmp_path)
    m = load_model(tmp_path, dtype=torch.bfloat16)
    assert next(m.parameters()).dtype == torch.bfloat16
    assert m.lm_head.weight is m.model.embed_tokens.weight


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    save_model(small(), tmp_path)
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=r"model\.safetensors.*truncated or corrupt"):
        load_model(tmp_path)
    w.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_model(tmp_path)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match="model folder not found"):
        load_model(tmp_path / "nope")
    save_model(small(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="weights file not found"):
        load_model(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelFileError, match="config file not found"):
        load_model(tmp_path)


def test_config_weights_mismatch_is_a_clear_error(tmp_path):
    save_model(small(), tmp_path)
    small(qk_norm=True).config.save(tmp_path / "config.json")
    with pytest.raises(ModelFileError, match="missing.*q_norm"):
        load_model(tmp_path)
    c = small().config.replace(ffn_hidden=96)
    c.save(tmp_path / "config.json")
    with pytest.raises(ModelFileError, match="shape"):
        load_model(tmp_path)
