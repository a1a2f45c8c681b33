"""`chinwag model ...`: list presets, show parameter counts, FLOPs and memory estimates."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


def _fail(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(1)


@app.command("list")
def list_presets() -> None:
    """List the model presets with their shapes and parameter counts."""
    from rich.console import Console
    from rich.table import Table

    from chinwag.model.info import human_count, param_breakdown
    from chinwag.model.presets import DESCRIPTIONS, PRESETS

    t = Table(title="chinwag model presets")
    for col in (
        "name",
        "params",
        "d_model",
        "layers",
        "heads (q/kv)",
        "ffn",
        "context",
        "mlp",
        "pos",
        "vocab",
    ):
        t.add_column(col, justify="left" if col in ("name", "mlp", "pos") else "right")
    for name, c in PRESETS.items():
        n = param_breakdown(c)["total"]
        t.add_row(
            name,
            human_count(n),
            str(c.d_model),
            str(c.n_layers),
            f"{c.n_heads}/{c.n_kv_heads}",
            str(c.ffn_hidden),
            str(c.max_seq_len),
            c.activation,
            c.position,
            str(c.vocab_size),
        )
    con = Console()
    con.print(t)
    for name, desc in DESCRIPTIONS.items():
        con.print(f"  [bold]{name}[/bold]: {desc}", highlight=False)


@app.command()
def info(
    target: str = typer.Argument(
        ..., help="A preset name (see `chinwag model list`) or a run / model folder."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Batch size for the training-memory estimate."),
    seq: int = typer.Option(1024, "--seq", min=1, help="Sequence length for FLOPs and activation memory."),
    dtype: str = typer.Option("bf16", "--dtype", help="Activation / KV-cache dtype: bf16, fp16 or fp32."),
    vocab_size: int = typer.Option(None, "--vocab-size", help="Override the vocabulary size (presets only)."),
) -> None:
    """Parameters by component, FLOPs per token, training and inference memory for a model.

    Built on the meta device: no weights are allocated, so even the 3.9 B `aeron` preset is instant.
    """
    from rich.console import Console
    from rich.table import Table

    from chinwag.model.config import ConfigError
    from chinwag.model.info import human_bytes, human_count, model_info, resolve_config
    from chinwag.model.presets import PRESETS, get_config

    try:
        if vocab_size is not None and target in PRESETS:
            cfg = get_config(target, vocab_size=vocab_size)
        else:
            cfg = resolve_config(target)
        r = model_info(cfg, batch=batch, seq=seq, dtype=dtype)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    con = Console()
    con.print(
        f"[bold]{target}[/bold]: d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads "
        f"({cfg.n_kv_heads} KV, head_dim {cfg.head_dim}), ffn {cfg.ffn_hidden} {cfg.activation}, "
        f"{cfg.position} positions, context {cfg.max_seq_len}, vocab {cfg.vocab_size}, "
        f"tied embeddings: {cfg.tie_embeddings}",
        highlight=False,
    )
    p = r["params"]
    t = Table(title="Parameters")
    t.add_column("component")
    t.add_column("params", justify="right")
    t.add_column("share", justify="right")
    for k in ("embeddings", "attention", "mlp", "norms", "lm_head", "other"):
        if k == "other" and not p[k]:
            continue
        label = "lm_head (tied to embeddings)" if k == "lm_head" and cfg.tie_embeddings else k
        t.add_row(label, f"{p[k]:,}", f"{100 * p[k] / p['total']:.1f}%")
    t.add_row("[bold]total[/bold]", f"[bold]{p['total']:,}[/bold]", f"({human_count(p['total'])})")
    t.add_row("non-embedding", f"{r['params_non_embedding']:,}", "")
    con.print(t)
    f = r["flops_per_token"]
    con.print(
        f"FLOPs per token at seq {seq}: {human_count(f)}FLOP train (fwd+bwd, 6N + 12·L·H·hd·T), "
        f"{human_count(f / 3)}FLOP forward",
        highlight=False,
    )
    m = r["memory"]
    t = Table(
        title=f"Training memory (AdamW, fp32 master weights, {dtype} activations, batch {batch} x seq {seq})"
    )
    t.add_column("item")
    t.add_column("no checkpointing", justify="right")
    t.add_column("gradient checkpointing", justify="right")
    for label, key in (
        ("weights (fp32)", "weights_fp32"),
        ("grads (fp32)", "grads_fp32"),
        ("AdamW m+v", "adamw_state"),
    ):
        t.add_row(label, human_bytes(m[key]), human_bytes(m[key]))
    t.add_row("activations (incl. logits)", human_bytes(m["activations"]), human_bytes(m["activations_ckpt"]))
    t.add_row("[bold]total[/bold]", human_bytes(m["train_total"]), human_bytes(m["train_total_ckpt"]))
    con.print(t)
    t = Table(title="Inference memory")
    t.add_column("item")
    t.add_column("bytes", justify="right")
    for label, key in (
        ("weights fp32", "infer_fp32"),
        ("weights bf16", "infer_bf16"),
        ("weights int8", "infer_int8"),
    ):
        t.add_row(label, human_bytes(m[key]))
    t.add_row(f"KV cache per token ({dtype})", human_bytes(m["kv_per_token"]))
    t.add_row(
        f"KV cache, full {cfg.max_seq_len}-token context, 1 sequence", human_bytes(m["kv_full_context"])
    )
    con.print(t)
