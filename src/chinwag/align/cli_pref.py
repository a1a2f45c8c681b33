"""`chinwag align rm | dpo | constitutional`: preference training and critique–revise data.

Heavy imports (torch, the model) happen inside the commands so `chinwag --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _fail(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(1)


def _echo(rec: dict) -> None:
    from rich.console import Console

    Console(stderr=True).print(
        "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
        highlight=False,
    )


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name}: expected comma-separated numbers, got {text!r}") from None


def _load_run(path: Path, what: str):
    """(model, tokenizer) from a run folder, or a clean error."""
    from chinwag.model.io import ModelFileError, load_model
    from chinwag.tokenizer import Tokenizer, TokenizerFileError

    try:
        model = load_model(path)
        tok = Tokenizer.from_spec(path)
    except (ModelFileError, TokenizerFileError, ValueError, FileNotFoundError) as e:
        _fail(f"{what}: {e}")
    return model, tok


def _read_prompts(path: Path) -> list[str]:
    """Prompts from .txt (one per line) or .jsonl ({"prompt": ...} per line); the reader RL uses too."""
    from chinwag.align.cli_rl import read_prompts

    out = read_prompts(path)
    for n, p in enumerate(out, 1):
        if not isinstance(p, str):
            _fail(f"{path}: prompt {n} is a 'messages' list; this command takes plain 'prompt' strings")
    return out


def register(app: typer.Typer) -> None:
    """Add rm, dpo and constitutional to `chinwag align`."""

    @app.command("rm")
    def rm_cmd(
        data: Path = typer.Option(
            ...,
            "--data",
            help="preference JSONL: {prompt, chosen, rejected[, margin]} or the messages layout",
        ),
        out: Path = typer.Option(..., "--out", help="reward-model folder to write"),
        base: Path | None = typer.Option(None, "--base", help="start from this run's backbone (recommended)"),
        tokenizer: str | None = typer.Option(
            None, help="tokenizer for a from-scratch RM (path or cl100k_base)"
        ),
        d_model: int = typer.Option(64, help="from scratch: width"),
        n_layers: int = typer.Option(2, help="from scratch: layers"),
        n_heads: int = typer.Option(4, help="from scratch: heads"),
        val: Path | None = typer.Option(None, help="held-out preference JSONL for pairwise accuracy"),
        steps: int = typer.Option(400, min=1),
        batch_size: int = typer.Option(64, min=1, help="pairs per step"),
        lr: float = typer.Option(1e-3),
        center: float | None = typer.Option(None, help="reward centering coefficient λ (TRL suggests 0.01)"),
        no_margin: bool = typer.Option(False, help="ignore per-pair 'margin' fields"),
        max_len: int | None = typer.Option(None, help="drop pairs longer than this many tokens"),
        template: str = typer.Option(
            "chat", help="chat (chat template) or raw (<|bos|>prompt completion<|eos|>)"
        ),
        seed: int = typer.Option(0, help="seed for init and batch order"),
    ) -> None:
        """Train a Bradley–Terry reward model (score read at the last real token)."""
        import torch

        from chinwag.align.rm import (
            PreferenceFileError,
            RewardModel,
            RMConfig,
            pairwise_accuracy,
            read_preferences,
            train_reward_model,
        )
        from chinwag.utils import seed_everything

        if template not in ("chat", "raw"):
            raise typer.BadParameter(f"--template must be chat or raw, got {template!r}")
        seed_everything(seed)
        if base is not None:
            lm, tok = _load_run(base, "--base")
            rm = RewardModel.from_lm(lm, tok, template)
        else:
            if tokenizer is None:
                raise typer.BadParameter(
                    "give --base RUN or --tokenizer SPEC for a from-scratch reward model"
                )
            from chinwag.model import ModelConfig
            from chinwag.tokenizer import Tokenizer, TokenizerFileError

            try:
                tok = Tokenizer.from_spec(tokenizer)
                cfg = ModelConfig(
                    vocab_size=tok.vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads
                )
            except (TokenizerFileError, ValueError) as e:
                _fail(str(e))
            rm = RewardModel(cfg, tok=tok, template=template)
        try:
            pairs = read_preferences(data, tok, template)
            val_pairs = read_preferences(val, tok, template) if val else None
        except PreferenceFileError as e:
            _fail(str(e))
        torch.manual_seed(seed)
        cfg = RMConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            center_coef=center,
            use_margin=not no_margin,
            max_len=max_len,
            seed=seed,
        )
        try:
            hist = train_reward_model(rm, pairs, cfg, log=_echo, progress=True)
        except ValueError as e:
            _fail(str(e))
        meta = {"train": hist[-1], "data": str(data)}
        if val_pairs:
            meta["val_accuracy"] = pairwise_accuracy(rm, val_pairs)
            _echo({"val_accuracy": meta["val_accuracy"]})
        rm.save(out, meta)
        typer.echo(f"reward model saved to {out}")

    @app.command("dpo")
    def dpo_cmd(
        policy: Path = typer.Option(
            ..., "--policy", help="run folder of the SFT policy (also the reference)"
        ),
        data: Path = typer.Option(..., "--data", help="preference JSONL"),
        out: Path = typer.Option(..., "--out", help="run folder to write"),
        ref: Path | None = typer.Option(None, help="reference run (default: the policy before training)"),
        loss_type: str = typer.Option("sigmoid,sft", help="comma list of sigmoid|robust|hinge|ipo|sft"),
        loss_weights: str | None = typer.Option(None, help="comma list of weights (default 1 each)"),
        beta: float = typer.Option(0.1, help="KL strength β"),
        label_smoothing: float = typer.Option(0.0, help="ε for cDPO (sigmoid) / robust DPO"),
        lr: float = typer.Option(1e-5),
        steps: int = typer.Option(200, min=1),
        batch_size: int = typer.Option(32, min=1, help="pairs per step"),
        template: str = typer.Option("chat", help="chat or raw prompt encoding"),
        seed: int = typer.Option(0, help="seed for batch order"),
    ) -> None:
        """DPO-family training with precomputed reference log-probs (no second model kept)."""
        import torch

        from chinwag.align.dpo import (
            DPOConfig,
            dpo_train,
            precompute_ref_logps,
            preference_accuracy,
            save_dpo_run,
        )
        from chinwag.align.rm import PreferenceFileError, read_preferences
        from chinwag.utils import seed_everything

        seed_everything(seed)
        model, tok = _load_run(policy, "--policy")
        cfg = DPOConfig(
            beta=beta,
            loss_types=[s.strip() for s in loss_type.split(",") if s.strip()],
            loss_weights=_floats(loss_weights, "--loss-weights"),
            label_smoothing=label_smoothing,
            lr=lr,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
        )
        try:
            cfg.validate()
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        try:
            pairs = read_preferences(data, tok, template)
        except PreferenceFileError as e:
            _fail(str(e))
        ref_logps = None
        if ref is not None:
            ref_model, _ = _load_run(ref, "--ref")
            ref_logps = precompute_ref_logps(ref_model, tok, pairs)
            del ref_model  # only its log-probs are needed
        before = preference_accuracy(model, tok, pairs)
        torch.manual_seed(seed)
        hist = dpo_train(model, tok, pairs, cfg, ref_logps=ref_logps, log=_echo, progress=True)
        after = preference_accuracy(model, tok, pairs)
        save_dpo_run(
            model,
            tok,
            out,
            cfg,
            hist,
            {
                "policy": str(policy),
                "data": str(data),
                "pref_accuracy_before": before,
                "pref_accuracy_after": after,
            },
        )
        typer.echo(f"preference accuracy {before:.3f} -> {after:.3f}; saved to {out}")

    @app.command("constitutional")
    def constitutional_cmd(
        principles: Path = typer.Option(
            ..., "--principles", help="YAML/JSON list of {name, critique, revision, rule?}"
        ),
        prompts: Path | None = typer.Option(
            None, "--prompts", help=".txt (one per line) or .jsonl with 'prompt' (answered by --policy)"
        ),
        out: Path = typer.Option(..., "--out", help="folder for sft.jsonl, pairs.jsonl, traces.jsonl"),
        policy: Path | None = typer.Option(
            None, help="run that answers the prompts (and critiques with --critic model)"
        ),
        responses: Path | None = typer.Option(
            None, help="JSONL {prompt, response} instead of sampling --policy"
        ),
        critic: str = typer.Option(
            "rules", help="rules (each principle's rule) or model (the policy itself)"
        ),
        temperature: float = typer.Option(1.0, help="sampling temperature for the policy's answers"),
        max_new_tokens: int = typer.Option(64, min=1),
        seed: int = typer.Option(0, help="seed for sampling and rule fillers"),
    ) -> None:
        """Critique each answer against each principle, revise it, and write the revisions as SFT targets
        and (revision ≻ original) preference pairs."""
        import json

        from chinwag.align.constitutional import (
            ModelCritic,
            PrincipleFileError,
            RuleCritic,
            build_examples,
            load_principles,
            violation_rate,
            write_examples,
        )

        try:
            ps = load_principles(principles)
        except PrincipleFileError as e:
            _fail(str(e))
        if critic not in ("rules", "model"):
            raise typer.BadParameter(f"--critic must be rules or model, got {critic!r}")
        if critic == "rules":
            missing = [p.name for p in ps if not p.rule]
            if missing:
                _fail(f"{principles}: --critic rules needs a 'rule' on every principle (missing: {missing})")
        model = tok = None
        if policy is not None:
            model, tok = _load_run(policy, "--policy")
        if responses is not None:
            ps_texts, answers = [], []
            for n, line in enumerate(responses.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    _fail(f"{responses}:{n}: invalid JSON ({e.msg})")
                if not (
                    isinstance(rec, dict)
                    and isinstance(rec.get("prompt"), str)
                    and isinstance(rec.get("response"), str)
                ):
                    _fail(f"{responses}:{n}: need string fields 'prompt' and 'response'")
                ps_texts.append(rec["prompt"])
                answers.append(rec["response"])
        else:
            if model is None or prompts is None:
                raise typer.BadParameter("give --policy RUN and --prompts FILE, or --responses FILE")
            from tqdm import tqdm

            from chinwag.align.common import chat_prompt_ids, decode_completion, rollout
            from chinwag.generate.sampling import SamplingParams

            ps_texts = _read_prompts(prompts)
            params = SamplingParams(
                temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens
            )
            answers = []
            for i in tqdm(range(0, len(ps_texts), 64), desc="answer", unit="batch"):
                chunk = ps_texts[i : i + 64]
                comps = rollout(model, tok, [chat_prompt_ids(tok, p) for p in chunk], params, seed=seed + i)
                answers += [decode_completion(tok, c) for c in comps]
        if critic == "model":
            if model is None:
                raise typer.BadParameter("--critic model needs --policy RUN")
            crit = ModelCritic(model, tok, max_new_tokens=max_new_tokens, seed=seed)
        else:
            crit = RuleCritic(seed=seed)
        sft, pairs, traces = build_examples(ps_texts, answers, ps, crit)
        report = {"principles": str(principles), "critic": critic, "n_prompts": len(ps_texts)}
        if any(p.rule for p in ps):
            rules = [p for p in ps if p.rule]
            report["violation_rate_before"] = violation_rate(answers, rules)
            report["violation_rate_after_revision"] = violation_rate([t["revision"] for t in traces], rules)
        write_examples(out, sft, pairs, traces, report)
        typer.echo(
            f"{len(sft)} SFT targets, {len(pairs)} pairs written to {out} "
            f"(train with: chinwag align dpo --data {out / 'pairs.jsonl'} ...)"
        )
