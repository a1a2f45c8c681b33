"""`chinwag align ppo | grpo | rloo | reinforce | demo`: RL on a run folder, and the verifiable demos.

    chinwag align grpo --policy runs/sft --prompts prompts.jsonl --reward mypkg.rewards:score --out runs/rl
    chinwag align ppo  --policy runs/sft --prompts prompts.jsonl --reward rm:runs/rm --out runs/ppo
    chinwag align demo A --algo grpo          # prints {"task","algo","before","after","kl","seconds"}

Heavy imports (torch, the model) happen inside the commands so `chinwag --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

RL_ALGOS = ("ppo", "grpo", "rloo", "reinforce")


def _fail(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(1)


def read_prompts(path: Path) -> list:
    """Prompts from .jsonl ({"prompt": str} or {"messages": [...]} per line) or .txt (one per line)."""
    if not path.is_file():
        _fail(f"{path}: file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            out.append(line.strip())
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(f"{path}:{n}: invalid JSON ({e.msg})")
        if isinstance(rec, dict) and isinstance(rec.get("prompt"), str):
            out.append(rec["prompt"])
        elif isinstance(rec, dict) and isinstance(rec.get("messages"), list) and rec["messages"]:
            msgs = rec["messages"]
            if msgs[-1].get("role") == "assistant":  # a finished conversation: RL continues its prompt part
                msgs = msgs[:-1]
            if not msgs or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
                _fail(f"{path}:{n}: field 'messages' must be a list of {{role, content}} objects")
            out.append(msgs)
        else:
            _fail(f"{path}:{n}: expected a field 'prompt' (string) or 'messages' (list)")
    if not out:
        _fail(f"{path}: no prompts")
    return out


def _load_reward(spec: str, ref, tok):
    """--reward: 'module:function', 'rm:RUN' (a reward model folder) or a composite JSON/YAML file."""
    from chinwag.align import rewards

    if spec.startswith("rm:"):
        try:
            from chinwag.align.rm import RewardModel

            return rewards.as_reward(RewardModel.load(spec[3:]))
        except Exception as e:  # noqa: BLE001 - any load failure becomes one clean line
            _fail(f"--reward {spec}: cannot load the reward model ({e})")
    path = Path(spec)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        try:
            if path.suffix == ".json":
                cfg = json.loads(path.read_text(encoding="utf-8"))
            else:
                import yaml

                cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
            return rewards.from_config(cfg, ref_model=ref, tok=tok)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            _fail(f"--reward {path}: {e}")
        except Exception as e:  # noqa: BLE001 - yaml errors etc.
            _fail(f"--reward {path}: cannot parse ({e})")
    try:
        return rewards.as_reward(rewards.load_function(spec))
    except ValueError as e:
        _fail(f"--reward: {e} (or give rm:RUN, or a composite .json/.yaml)")


def _train(
    algo, policy_dir, prompts_file, reward_spec, out, steps, lr, beta, group_size, batch, max_new, seed, extra
):
    import torch

    from chinwag.align.common import clone_frozen
    from chinwag.model.io import ModelFileError, load_model, save_model
    from chinwag.tokenizer import Tokenizer, TokenizerFileError
    from chinwag.utils import seed_everything, write_json

    seed_everything(seed)
    try:
        policy = load_model(policy_dir)
        tok = Tokenizer.from_spec(policy_dir)
    except (ModelFileError, TokenizerFileError, ValueError, FileNotFoundError) as e:
        _fail(f"--policy {policy_dir}: {e}")
    prompts = read_prompts(prompts_file)
    ref = clone_frozen(policy)
    reward = _load_reward(reward_spec, ref, tok)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)

    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"{algo}", total=steps)

        def log(step, rec):
            r = rec.get("objective/scores", rec.get("reward", 0.0))
            kl = rec.get("objective/kl", rec.get("kl", 0.0))
            bar.update(task, advance=1, description=f"{algo} reward {r:.3f} kl {kl:.3f}")

        try:
            if algo == "ppo":
                from chinwag.align.ppo import PPOConfig, ppo_train

                cfg = PPOConfig(
                    steps=steps,
                    lr=lr,
                    init_kl_coef=beta,
                    batch_size=batch,
                    mini_batch_size=max(1, batch // 4),
                    max_new_tokens=max_new,
                    seed=seed,
                    **extra,
                )
                result = ppo_train(policy, ref, tok, prompts, reward, cfg, log=log, metrics_path=metrics)
            else:
                from chinwag.align.group import GroupConfig, group_train

                cfg = GroupConfig(
                    algo=algo,
                    steps=steps,
                    lr=lr,
                    beta=beta,
                    group_size=group_size,
                    prompts_per_step=batch,
                    max_new_tokens=max_new,
                    seed=seed,
                    **extra,
                )
                result = group_train(policy, ref, tok, prompts, reward, cfg, log=log, metrics_path=metrics)
        except ValueError as e:
            _fail(str(e))
    save_model(policy, out)
    tok.save(out / "tokenizer.json")
    write_json(
        out / "train_config.json",
        {
            "stage": algo,
            "policy": str(policy_dir),
            "reward": reward_spec,
            "prompts": str(prompts_file),
            **result["config"],
        },
    )
    last = result["history"][-1] if result["history"] else {}
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "steps": steps,
                "seconds": round(result["seconds"], 1),
                **{k: v for k, v in last.items() if isinstance(v, (int, float))},
            }
        )
    )
    del torch


def register(app: typer.Typer) -> None:
    """Add ppo, grpo, rloo, reinforce and demo to `chinwag align`."""

    def make(algo: str, doc: str):
        def cmd(
            policy: Path = typer.Option(
                ..., "--policy", help="Run folder of the SFT policy (model + tokenizer)."
            ),
            prompts: Path = typer.Option(
                ..., "--prompts", help="Prompts: .jsonl {prompt} / {messages}, or .txt."
            ),
            reward: str = typer.Option(
                ...,
                "--reward",
                help="module:function f(prompt, completion), rm:RUN, or a composite .json/.yaml.",
            ),
            out: Path = typer.Option(
                ..., "--out", help="Output run folder (weights, tokenizer, metrics.jsonl)."
            ),
            steps: int = typer.Option(100, min=1, help="RL iterations (rollout + update)."),
            lr: float = typer.Option(1e-5, help="Learning rate."),
            beta: float = typer.Option(0.05, help="KL coefficient to the reference (initial, for PPO)."),
            group_size: int = typer.Option(8, min=1, help="Completions per prompt (grpo/rloo/reinforce)."),
            batch: int = typer.Option(32, min=1, help="Prompts per iteration."),
            max_new_tokens: int = typer.Option(64, min=1, help="Longest completion."),
            seed: int = typer.Option(0, help="Random seed."),
        ):
            _train(
                algo,
                policy,
                prompts,
                reward,
                out,
                steps,
                lr,
                beta,
                group_size,
                batch,
                max_new_tokens,
                seed,
                {},
            )

        cmd.__doc__ = doc
        return cmd

    app.command("ppo")(make("ppo", "PPO with a critic, GAE and a per-token KL penalty in the reward."))
    app.command("grpo")(make("grpo", "GRPO: group-normalised advantages, k3 KL in the loss."))
    app.command("rloo")(make("rloo", "RLOO: leave-one-out baseline over each prompt's group."))
    app.command("reinforce")(make("reinforce", "REINFORCE with a moving-average reward baseline."))

    @app.command("demo")
    def demo(
        task: str = typer.Argument(
            ..., help="A (RL removes a bias), B (DPO), C (reward model + PPO + constitutional)."
        ),
        algo: str = typer.Option(
            None, "--algo", help="A: ppo|grpo|rloo|reinforce (default grpo). B/C: see their docs."
        ),
        shuffle_rewards: bool = typer.Option(
            False, "--shuffle-rewards", help="A: negative control (rewards shuffled)."
        ),
        seed: int = typer.Option(0, help="Random seed."),
        metrics: Path = typer.Option(None, "--metrics", help="A: also write per-step metrics JSONL here."),
    ):
        """Run a verifiable alignment task; print one JSON line {task, algo, before, after, kl, seconds}."""
        import torch

        torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU
        task = task.upper()
        if task == "A":
            algo = algo or "grpo"
            if algo not in RL_ALGOS:
                raise typer.BadParameter(
                    f"--algo must be one of {', '.join(RL_ALGOS)} for task A (got {algo!r})"
                )
            from rich.progress import Progress

            from chinwag.align.demos import run_task_a, task_a_config

            if metrics is not None:
                metrics.unlink(missing_ok=True)
            steps = task_a_config(algo).steps
            with Progress(transient=True) as bar:
                t = bar.add_task(f"SFT + {algo}", total=steps)

                def log(step, rec):
                    r = rec.get("objective/scores", rec.get("reward", 0.0))
                    bar.update(t, advance=1, description=f"{algo} reward {r:.3f}")

                res = run_task_a(
                    algo, seed=seed, shuffle_rewards=shuffle_rewards, log=log, metrics_path=metrics
                )
        elif task in ("B", "C"):
            if shuffle_rewards:
                raise typer.BadParameter("--shuffle-rewards applies to task A only")
            try:
                from chinwag.align.demos_pref import run_task
            except ImportError as e:
                _fail(f"task {task} is not available ({e})")
            try:
                res = run_task(task, algo, seed)
            except ValueError as e:
                _fail(str(e))
        else:
            raise typer.BadParameter(f"unknown task {task!r} (choose A, B or C)")
        typer.echo(json.dumps(res))
