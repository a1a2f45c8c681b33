"""`chinwag chat RUN`: talk to a trained run in the terminal, or one shot with `--prompt`."""

from __future__ import annotations

from pathlib import Path

import typer


class ChatSession:
    """Multi-turn history rendered with the chat template and truncated to fit the context."""

    def __init__(self, run: str | Path, system: str | None = None, threads: int | None = None):
        import torch

        from chinwag.model.io import load_model
        from chinwag.tokenizer import Tokenizer

        if threads:
            torch.set_num_threads(threads)
        run = Path(run)
        if not (run / "tokenizer.json").exists():
            raise FileNotFoundError(f"{run}: not a chinwag run (no tokenizer.json)")
        self.tok = Tokenizer.load(run / "tokenizer.json")
        self.model = load_model(run).eval()
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_text: str, params) -> str:
        """Append the user's turn, stream the assistant's reply, keep both in the history."""
        return "".join(self.stream_reply(user_text, params))

    def stream_reply(self, user_text: str, params):
        from chinwag.generate.sample import generate, stream_text
        from chinwag.tokenizer.chat import render

        self.messages.append({"role": "user", "content": user_text})
        # leave room for the reply; render() drops the oldest whole turns first and keeps the system prompt
        budget = max(1, self.model.config.max_seq_len - params.max_new_tokens)
        prompt = render(self.messages, self.tok, add_generation_prompt=True, max_tokens=budget).ids
        stops = (self.tok.end_id, self.tok.eos_id)
        pieces = []
        for piece in stream_text(self.tok, generate(self.model, prompt, params, stop_ids=stops)):
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})


def chat(
    run: Path = typer.Argument(
        ..., help="Run folder (holds model.safetensors, config.json, tokenizer.json)."
    ),
    prompt: str = typer.Option(None, "--prompt", "-p", help="One shot: print only the reply and exit."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: int = typer.Option(50, help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass (1 = off)."),
    max_new_tokens: int = typer.Option(256, help="Longest reply in tokens."),
    seed: int = typer.Option(None, help="Seed for sampling (same seed, same reply)."),
    threads: int = typer.Option(None, help="torch threads (default: torch's choice)."),
) -> None:
    from rich.console import Console

    from chinwag.generate.sample import SamplingParams

    con = Console()
    params = SamplingParams(temperature, top_k, top_p, max_new_tokens, seed)
    try:
        params.validate()
        session = ChatSession(run, system=system, threads=threads)
    except (ValueError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        raise typer.Exit(1) from None
    if prompt is not None:
        print(session.reply(prompt, params))
        return
    con.print(f"[bold]chinwag chat[/bold] — {run}  (/reset clears the history, /exit quits)")
    while True:
        try:
            text = con.input("[bold cyan]you>[/bold cyan] ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        cmd = text.strip()
        if cmd in ("/exit", "/quit"):
            return
        if cmd == "/reset":
            session.reset()
            con.print("[dim](history cleared)[/dim]")
            continue
        if not cmd:
            continue
        con.print("[bold green]bot>[/bold green] ", end="")
        for piece in session.stream_reply(text, params):
            print(piece, end="", flush=True)
        print()
