"""`chinwag model list|info` through typer's CliRunner."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from chinwag.model.cli import app
from chinwag.model.info import memory_estimate
from chinwag.model.io import save_model
from chinwag.model.model import ChinwagLM
from chinwag.model.presets import get_config

runner = CliRunner()


def test_info_aeron_on_meta_device():
    r = runner.invoke(
        app, ["info", "aeron", "--batch", "8", "--seq", "1024", "--dtype", "bf16"], terminal_width=200
    )
    assert r.exit_code == 0, r.output
    assert "3,873,335,296" in r.output
    for word in (
        "embeddings",
        "attention",
        "mlp",
        "norms",
        "lm_head",
        "FLOPs per token",
        "AdamW",
        "KV cache",
    ):
        assert word in r.output
    assert "gradient checkpointing" in r.output and "weights int8" in r.output


def test_info_on_a_run_folder(tmp_path):
    save_model(ChinwagLM(get_config("tiny")), tmp_path)
    r = runner.invoke(app, ["info", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "1,049,728" in r.output


def test_info_bad_target_and_dtype():
    r = runner.invoke(app, ["info", "no-such-preset"])
    assert r.exit_code == 1 and "neither a preset" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["info", "tiny", "--dtype", "fp8"])
    assert r.exit_code == 1 and "fp8" in r.output


def test_list():
    r = runner.invoke(app, ["list"], terminal_width=200)
    assert r.exit_code == 0
    for name in ("tiny", "small", "hrom", "neuraflux", "aeron-small", "aeron-medium", "aeron-large", "aeron"):
        assert name in r.output


def test_memory_formula():
    c = get_config("small")
    m = memory_estimate(c, batch=2, seq=64, dtype="fp32")
    n = 12_587_904
    assert m["weights_fp32"] == 4 * n and m["adamw_state"] == 8 * n and m["infer_int8"] == n
    assert m["kv_per_token"] == 2 * 6 * 2 * 64 * 4
    assert m["kv_full_context"] == m["kv_per_token"] * 512
    assert m["activations_ckpt"] < m["activations"]
    with torch.device("meta"):
        assert ChinwagLM(c).num_params() == n
