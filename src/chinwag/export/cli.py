"""`chinwag export ...`: write a run in another ecosystem's format."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Export a run to other ecosystems (keeps `hf` a subcommand even while it is the only one)."""


@app.command()
def hf(
    run: Path = typer.Argument(..., help="Run folder (config.json, model.safetensors, tokenizer.json)."),
    out: Path = typer.Argument(..., help="Output folder for the Hugging Face LlamaForCausalLM files."),
    dtype: str = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: as stored)."),
    tokenizer: bool = typer.Option(
        True, "--tokenizer/--no-tokenizer", help="Also write the tokenizer files."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty output folder."),
) -> None:
    """Export a run to a Hugging Face folder loadable with `LlamaForCausalLM.from_pretrained(OUT)`.

    Weights are copied as-is (our names and RoPE layout are HF Llama's); config.json carries both the
    transformers-5 keys (rope_parameters, dtype) and the older ones (rope_theta, rope_scaling, torch_dtype).
    Models HF Llama cannot represent (GELU/ReLU MLP, learned positions, qk-norm) are refused.
    """
    from rich.console import Console

    from chinwag.export.hf import export_hf

    con = Console(stderr=True)
    try:
        with con.status(f"exporting {run} -> {out}"):
            paths = export_hf(run, out, dtype=dtype, tokenizer=tokenizer, overwrite=overwrite)
    except (
        ValueError,
        FileNotFoundError,
        KeyError,
    ) as e:  # ConfigError/ExportError/ModelFileError are ValueErrors
        con.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    Console().print(
        f"wrote {len(paths)} files to {out}: " + ", ".join(p.name for p in paths), highlight=False
    )
