"""Task A end to end (slow): each RL algorithm removes the SFT bias; shuffled rewards do not.

The time budget is 5 minutes per demo including SFT on a quiet CPU with one torch thread; on a shared
machine set CHINWAG_DEMO_BUDGET_S to something larger.
"""

import json
import os

import pytest

from chinwag.align import demos, tasks

BUDGET_S = float(os.environ.get("CHINWAG_DEMO_BUDGET_S", "300"))


def test_task_a_configs_are_valid():
    for algo in demos.ALGOS:
        cfg = demos.task_a_config(algo)
        cfg.validate()
        assert cfg.max_new_tokens >= 3  # two digits + <|end|>
    with pytest.raises(ValueError, match="unknown algorithm"):
        demos.task_a_config("dpo")


@pytest.mark.slow
@pytest.mark.parametrize("algo", demos.ALGOS)
def test_task_a_rl_removes_the_bias(algo):
    res = demos.run_task_a(algo, seed=0)
    print(json.dumps(res))
    assert res["after"] >= 0.75, res
    assert res["after"] - res["before"] >= 0.30, res
    assert res["kl"] <= 3.0, res
    assert res["seconds"] <= BUDGET_S, res


@pytest.mark.slow
def test_task_a_negative_control_shuffled_rewards_gain_nothing():
    res = demos.run_task_a("grpo", seed=0, shuffle_rewards=True)
    print(json.dumps(res))
    assert res["after"] - res["before"] <= 0.05, res


@pytest.mark.slow
def test_sft_model_is_biased_as_designed():
    model, tok = tasks.sft_arith(0)
    test = tasks.arith_prompts(500, 1, "test")
    acc = tasks.sampled_accuracy(model, tok, test, 1.0, seed=2)
    assert 0.15 <= acc <= 0.45  # the biased SFT: mostly a+b+1


def test_cli_grpo_trains_a_run_folder_and_reports_bad_input(tmp_path):
    import torch
    from typer.testing import CliRunner

    from chinwag.align.cli import app
    from chinwag.model import ChinwagLM, save_model

    tok = tasks.byte_tokenizer()
    torch.manual_seed(0)
    run = tmp_path / "sft"
    save_model(ChinwagLM(tasks.tiny_config(tok.vocab_size, d_model=32, n_layers=1, n_heads=2)), run)
    tok.save(run / "tokenizer.json")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "07+32="}\n{"messages": [{"role": "user", "content": "01+02="}]}\n')
    out = tmp_path / "rl"
    args = ["grpo", "--policy", str(run), "--prompts", str(prompts), "--out", str(out), "--steps", "2",
            "--batch", "2", "--group-size", "2", "--max-new-tokens", "3", "--lr", "1e-3"]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--reward", "chinwag.align.tasks:arith_reward"])
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "rewards/arith_reward/mean" in json.loads(lines[-1])
    res = CliRunner().invoke(app, [*args, "--reward", "nosuchmodule:fn"])
    assert res.exit_code == 1 and "nosuchmodule" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{"nope": 1}\n')
    args[args.index(str(prompts))] = str(bad)
    res = CliRunner().invoke(app, [*args, "--reward", "chinwag.align.tasks:arith_reward"])
    assert res.exit_code == 1 and "bad.jsonl:2" in res.output
