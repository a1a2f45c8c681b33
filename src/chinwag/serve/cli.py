"""`chinwag serve RUN`: an OpenAI-compatible HTTP API, a WebSocket chat and the web page for one run."""

from __future__ import annotations

from pathlib import Path

import typer


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(1)


def serve(
    run: Path = typer.Argument(..., help="Run folder (model.safetensors, config.json, tokenizer.json)."),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind. 0.0.0.0 exposes the server: set an API key."
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    api_key: list[str] = typer.Option(
        None, "--api-key", help="Accepted API key (repeatable). Default: none."
    ),
    api_keys_file: Path = typer.Option(None, help="File with one API key per line (# comments allowed)."),
    max_batch: int = typer.Option(16, min=1, help="Sequences decoded together (continuous batching)."),
    max_queue: int = typer.Option(64, min=0, help="Sequences that may wait beyond the batch before 429."),
    cache: str = typer.Option("contiguous", help="KV cache: contiguous | paged."),
    dtype: str = typer.Option("float32", help="Weights/cache dtype: float32 | bfloat16."),
    threads: int = typer.Option(None, min=1, help="torch threads (default: torch's choice)."),
    db: Path = typer.Option(None, help="Conversation store (SQLite). Default: RUN/conversations.sqlite."),
    no_db: bool = typer.Option(False, "--no-db", help="Do not store conversations."),
    guard: str = typer.Option(None, help="Safety policy (name or YAML path) to screen input and output."),
    alias: str = typer.Option(None, help="Model id reported by /v1/models (default: the run folder's name)."),
    cors_origin: list[str] = typer.Option(
        None, "--cors-origin", help="Allowed CORS origin (repeatable; * = any)."
    ),
    max_body_bytes: int = typer.Option(1 << 20, min=1024, help="Largest request body accepted (413 beyond)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    seed: int = typer.Option(0, help="Global seed: unseeded requests are reproducible from server start."),
) -> None:
    """Serve RUN over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models),
    WebSocket chat (/v1/ws/chat), /health, /metrics and the web chat page at /."""
    if not run.is_dir():
        _fail(f"{run}: not a folder")
    for name in ("config.json", "tokenizer.json"):
        if not (run / name).is_file():
            _fail(f"{run}: no {name} (is this a run folder?)")
    if cache not in ("contiguous", "paged"):
        raise typer.BadParameter(f"{cache!r}: expected contiguous or paged", param_hint="--cache")
    if dtype not in ("float32", "bfloat16", "bf16"):
        raise typer.BadParameter(f"{dtype!r}: expected float32 or bfloat16", param_hint="--dtype")

    from chinwag.serve.auth import load_keys

    try:
        keys = load_keys(api_key, api_keys_file)
    except ValueError as e:
        _fail(str(e))
    if host not in ("127.0.0.1", "localhost", "::1") and not keys:
        typer.secho(
            f"warning: binding {host} without an API key: anyone who can reach it can use it", fg="yellow"
        )

    import uvicorn

    from chinwag.utils import seed_everything

    seed_everything(seed)
    store = None
    if not no_db:
        try:
            from chinwag.serve.store import ConversationStore
        except ImportError:
            typer.secho("warning: the conversation store is not available; not recording", fg="yellow")
        else:
            store = ConversationStore(db or run / "conversations.sqlite")
    guard_obj = None
    if guard:
        try:
            from chinwag.safety import Guard
        except ImportError:
            _fail("--guard needs chinwag.safety.Guard, which this install does not have")
        try:
            guard_obj = Guard.load(guard)
        except (OSError, ValueError) as e:
            _fail(f"--guard {guard}: {e}")

    from chinwag.serve.app import create_app

    with typer.progressbar(length=1, label=f"loading {run}") as bar:
        try:
            app = create_app(
                run,
                model_name=alias,
                api_keys=keys,
                max_queue=max_queue,
                max_batch=max_batch,
                cache=cache,
                dtype=None if dtype == "float32" else "bfloat16",
                threads=threads,
                cors=(True if "*" in cors_origin else list(cors_origin)) if cors_origin else False,
                max_body_bytes=max_body_bytes,
                store=store,
                guard=guard_obj,
            )
        except (OSError, ValueError, KeyError) as e:
            _fail(f"{run}: cannot load the run ({e})")
        bar.update(1)
    srv = app.state.server
    where = getattr(store, "path", None) or "off"
    typer.echo(
        f"serving {srv.model_name} (context {srv.max_len}, batch {max_batch}, queue {max_queue}) "
        f"on http://{host}:{port}  keys: {len(keys) or 'none'}  store: {where}"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
