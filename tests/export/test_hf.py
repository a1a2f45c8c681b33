"""HF export: config keys, refusals, and logits parity with transformers' LlamaForCausalLM."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from chinwag.export.cli import app
from chinwag.export.hf import ExportError, export_hf
from chinwag.model.config import ModelConfig
from chinwag.model.io import save_model
from chinwag.model.model import ChinwagLM
from chinwag.tokenizer import Tokenizer

VOCAB = 300


def make_tokenizer() -> Tokenizer:
    ranks = {bytes([i]): i for i in range(256)} | {b"he": 256, b"hel": 257, b"lo": 258}
    return Tokenizer.from_ranks(ranks)


def make_run(path, tokenizer=True, **kw):
    torch.manual_seed(0)
    base = dict(
        vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=128
    )
    model = ChinwagLM(ModelConfig(**(base | kw))).eval()
    save_model(model, path)
    if tokenizer:
        make_tokenizer().save(path / "tokenizer.json")
    return model


def test_config_json_has_v4_and_v5_keys(tmp_path):
    make_run(tmp_path / "run", rope_scaling={"type": "linear", "factor": 2.0})
    export_hf(tmp_path / "run", tmp_path / "hf")
    c = json.loads((tmp_path / "hf" / "config.json").read_text())
    tok = make_tokenizer()
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert c["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}
    assert c["rope_theta"] == 10000.0 and c["rope_scaling"]["type"] == "linear"
    assert c["dtype"] == c["torch_dtype"] == "float32"
    assert (c["head_dim"], c["num_key_value_heads"], c["tie_word_embeddings"]) == (16, 2, True)
    assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (tok.bos_id, tok.end_id, tok.pad_id)
    g = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert g["eos_token_id"] == [tok.end_id, tok.eos_id]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "field, kw",
    [
        ("activation", dict(activation="gelu")),
        ("activation", dict(activation="relu2")),
        ("position", dict(position="learned")),
        ("qk_norm", dict(qk_norm=True)),
        ("learnable_rope_freqs", dict(learnable_rope_freqs=True)),
    ],
)
def test_refuses_what_llama_cannot_represent(tmp_path, field, kw):
    make_run(tmp_path / "run", **kw)
    with pytest.raises(ExportError, match=field):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_errors_are_one_line(tmp_path):
    make_run(tmp_path / "run", activation="gelu")
    r = CliRunner().invoke(app, ["hf", str(tmp_path / "run"), str(tmp_path / "hf")])
    assert r.exit_code == 1 and "activation='gelu'" in r.output and "Traceback" not in r.output
    make_run(tmp_path / "run2", tokenizer=False)
    r = CliRunner().invoke(app, ["hf", str(tmp_path / "run2"), str(tmp_path / "hf")])
    assert r.exit_code == 1 and "tokenizer.json" in r.output
    r = CliRunner().invoke(app, ["hf", str(tmp_path / "run2"), str(tmp_path / "hf"), "--no-tokenizer"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["hf", str(tmp_path / "run2"), str(tmp_path / "hf"), "--no-tokenizer"])
    assert r.exit_code == 1 and "not empty" in r.output


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_kv_heads=2, tie_embeddings=True),
        dict(n_kv_heads=4, tie_embeddings=False),
        dict(n_kv_heads=1, rope_scaling={"type": "linear", "factor": 2.0}),
        dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_seq_len": 32}),
        dict(rope_scaling={"type": "dynamic", "factor": 2.0, "original_max_seq_len": 32}),
    ],
    ids=["gqa-tied", "mha-untied", "mqa-linear", "yarn", "dynamic"],
)
def test_logits_match_transformers(tmp_path, kw):
    transformers = pytest.importorskip("transformers")
    ours = make_run(tmp_path / "run", tokenizer=False, **kw)
    export_hf(tmp_path / "run", tmp_path / "hf", tokenizer=False)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.tie_word_embeddings == ours.config.tie_embeddings
    ids = torch.randint(0, VOCAB, (2, 80))  # longer than 32, so the scaled RoPE variants matter
    with torch.no_grad():
        want = hf(ids).logits
    got, _ = ours(ids)
    assert (got - want).abs().max() <= 1e-4


def test_bf16_export(tmp_path):
    pytest.importorskip("transformers")
    from transformers import LlamaForCausalLM

    make_run(tmp_path / "run", tokenizer=False)
    export_hf(tmp_path / "run", tmp_path / "hf", dtype="bfloat16", tokenizer=False)
    c = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert c["dtype"] == "bfloat16"
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def test_tokenizer_files_load_in_transformers(tmp_path):
    pytest.importorskip("transformers")
    try:
        from chinwag.tokenizer.hf import save_hf_tokenizer_files  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.skip("chinwag.tokenizer.hf.save_hf_tokenizer_files is not available yet")
    from transformers import PreTrainedTokenizerFast

    make_run(tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf_tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    tok = make_tokenizer()
    text = "hello, world! hello"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf_tok.convert_tokens_to_ids("<|end|>") == tok.end_id
