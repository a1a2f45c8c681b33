"""`chinwag chat RUN` (interactive or one shot) and `chinwag generate RUN` (batch JSONL in, JSONL out)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import typer

STRATEGIES = ("sample", "beam", "best-of-n", "tree", "speculative")


def _load_run(run: str | Path):
    from chinwag.model.io import load_model
    from chinwag.tokenizer import Tokenizer

    run = Path(run)
    if not (run / "tokenizer.json").exists():
        raise FileNotFoundError(f"{run}: not a chinwag run (no tokenizer.json)")
    return load_model(run).eval(), Tokenizer.load(run / "tokenizer.json")


def parse_field(name: str, raw: str):
    """Parse `/set NAME VALUE` against SamplingParams' fields: JSON when it parses, else the bare string."""
    from chinwag.generate.sampling import SamplingParams

    names = [f.name for f in fields(SamplingParams)]
    if name not in names:
        raise ValueError(f"unknown sampling field {name!r} (one of: {', '.join(names)})")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if name == "logit_bias" and isinstance(value, dict):  # JSON keys are strings; ids are ints
        value = {int(k): v for k, v in value.items()}
    if name == "stop" and isinstance(value, str):
        value = [value]
    return value


class ChatSession:
    """Multi-turn history in the chat template, truncated to fit the context, streamed by the engine."""

    def __init__(
        self,
        run,
        system: str | None = None,
        params=None,
        cache: str = "contiguous",
        dtype: str | None = None,
        compile: bool = False,
        threads: int | None = None,
        quantize: str | None = None,
        guard: str | None = None,
    ):
        import torch

        from chinwag.generate.engine import Engine
        from chinwag.generate.sampling import SamplingParams

        if threads:
            torch.set_num_threads(threads)
        self.model, self.tok = _load_run(run)
        self.engine = Engine(
            self.model, self.tok, cache=cache, max_batch=1, dtype=dtype, compile=compile, quantize=quantize
        )
        self.params = params or SamplingParams()
        self.system = system
        self.stats: dict = {}
        self.guard = None  # a GuardSession: checks each user turn and watches each reply as it streams
        self.guard_log: list[dict] = []  # every verdict that was not a plain allow
        if guard:
            from chinwag.safety import Guard, GuardSession

            self.guard = GuardSession(Guard.load(None if guard == "default" else guard))
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        if self.guard is not None:
            self.guard.reset()  # a terminated session stays terminated until the user resets

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        rest = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": self.system}] if self.system else []) + rest

    def set(self, name: str, raw: str) -> None:
        """Change one sampling field; a bad value raises ValueError and leaves the old params in place."""
        new = replace(self.params, **{name: parse_field(name, raw)})
        new.validate()
        self.params = new

    def prompt_ids(self) -> list[int]:
        from chinwag.tokenizer.chat import render

        # leave room for the reply; render() drops the oldest whole turns first and keeps the system prompt
        budget = max(1, self.model.config.max_seq_len - self.params.max_new_tokens)
        return render(self.messages, self.tok, add_generation_prompt=True, max_tokens=budget).ids

    def stream_reply(self, user_text: str):
        """Append the user's turn, yield the reply's text deltas, then keep the reply in the history.

        With a guard, a refused turn gets the policy's refusal instead of a reply, and the reply is shown
        only as far as the stream monitor has checked it: when the monitor cuts the stream, generation
        stops and the refusal replaces the rest (finish_reason "content_filter")."""
        self.messages.append({"role": "user", "content": user_text})
        if self.guard is not None:
            v = self.guard.check_input(user_text)
            self._log_verdict("input", v)
            if v.blocked:
                yield from self._refuse(v, prompt_tokens=0, t0=time.perf_counter())
                return
        prompt = self.prompt_ids()
        mon = self.guard.monitor() if self.guard is not None else None
        t0, ttft, shown, text, finish, n = time.perf_counter(), None, 0, "", None, 0
        for d in self.engine.stream(prompt, self.params):  # leaving the loop early aborts the request
            n += len(d.token_ids)
            finish = d.finish_reason or finish
            text += d.text
            if mon is not None and d.text:
                v = mon.feed(d.text)
                if v is not None:
                    self._log_verdict("output", v)
                    yield from self._refuse(v, prompt_tokens=len(prompt), t0=t0, n=n, cut_after=text[:shown])
                    return
            safe = len(text) if mon is None else mon.checked_upto  # never show unchecked text
            if safe > shown:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                yield text[shown:safe]
                shown = safe
        if mon is not None:
            v = mon.finish()
            if v.blocked:
                self._log_verdict("output", v)
                yield from self._refuse(v, prompt_tokens=len(prompt), t0=t0, n=n, cut_after=text[:shown])
                return
            if len(text) > shown:
                yield text[shown:]
        self.messages.append({"role": "assistant", "content": text.strip()})
        self._set_stats(finish, len(prompt), n, t0, ttft)

    def _refuse(self, v, prompt_tokens: int, t0: float, n: int = 0, cut_after: str = ""):
        """Yield the refusal (after whatever was already shown) and record it as the assistant's turn."""
        refusal = v.refusal or "I can't help with that."
        yield ("\n" if cut_after else "") + refusal
        self.messages.append({"role": "assistant", "content": refusal})
        self._set_stats("content_filter", prompt_tokens, n, t0, None)
        self.stats["guard"] = v.to_dict()

    def _log_verdict(self, side: str, v) -> None:
        if v.action != "allow":
            self.guard_log.append({"side": side, **v.to_dict()})

    def _set_stats(self, finish, prompt_tokens: int, n: int, t0: float, ttft) -> None:
        dt = time.perf_counter() - t0
        ctx = self.model.config.max_seq_len
        self.stats = {
            "finish_reason": finish,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n,
            "seconds": round(dt, 3),
            "tokens_per_s": round(n / dt, 1) if dt > 0 else None,
            "ttft_ms": round(1000 * (ttft if ttft is not None else dt), 1),
            "context_used": f"{prompt_tokens + n}/{ctx}",
        }

    def reply(self, user_text: str) -> str:
        return "".join(self.stream_reply(user_text))

    def save(self, path: str | Path) -> None:
        """The conversation as one JSONL line in the `messages` format (chinwag data reads it back)."""
        from chinwag.utils import atomic_write_text

        atomic_write_text(path, json.dumps({"messages": self.messages}, ensure_ascii=False) + "\n")

    def load(self, path: str | Path) -> None:
        """Load the last conversation of a `messages` JSONL file (the format /save writes)."""
        from chinwag.tokenizer.chat import validate_messages

        lines = [
            (i, ln)
            for i, ln in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1)
            if ln.strip()
        ]
        if not lines:
            raise ValueError(f"{path}: no conversation in the file")
        i, line = lines[-1]
        try:
            msgs = json.loads(line)["messages"]
            validate_messages(msgs)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{path}:{i}: not a {{"messages": [...]}} record ({e})') from None
        self.messages = list(msgs)
        self.system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", err=True, fg="red")
    raise typer.Exit(1)


HELP = """commands:
  /reset               clear the history (keeps the system prompt)
  /system TEXT         set the system prompt (empty to clear)
  /set FIELD VALUE     change a sampling field, e.g. /set temperature 0.7, /set stop ["\\n"]
  /params              show the sampling fields
  /save FILE /load FILE   the conversation as JSONL ({"messages": [...]})
  /stats               speed and context use of the last reply
  /exit                quit"""


def _command(session: ChatSession, con, text: str) -> bool:
    """Run a /command; returns False when the user wants to quit."""
    cmd, _, arg = text.partition(" ")
    arg = arg.strip()
    try:
        if cmd in ("/exit", "/quit"):
            return False
        elif cmd == "/reset":
            session.reset()
            con.print("[dim](history cleared)[/dim]")
        elif cmd == "/system":
            session.set_system(arg)
            con.print(f"[dim](system prompt {'set' if arg else 'cleared'})[/dim]")
        elif cmd == "/set":
            name, _, value = arg.partition(" ")
            session.set(name, value.strip())
            con.print(f"[dim]{name} = {getattr(session.params, name)!r}[/dim]")
        elif cmd == "/params":
            con.print(session.params)
        elif cmd == "/save":
            session.save(arg)
            con.print(f"[dim](saved to {arg})[/dim]")
        elif cmd == "/load":
            session.load(arg)
            con.print(f"[dim](loaded {len(session.messages)} messages from {arg})[/dim]")
        elif cmd == "/stats":
            con.print(session.stats or "(no reply yet)")
        else:
            con.print(HELP)
    except (ValueError, OSError) as e:
        con.print(f"[red]{e}[/red]")
    return True


def chat(
    run: Path = typer.Argument(
        ..., help="Run folder (holds model.safetensors, config.json, tokenizer.json)."
    ),
    prompt: str = typer.Option(
        None, "--prompt", "-p", help="One shot: print only the reply ('-' reads stdin)."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="One shot: print a JSON object (reply, usage, speed)."
    ),
    system: str = typer.Option(None, "--system", help="System prompt."),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: int = typer.Option(50, help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass (1 = off)."),
    min_p: float = typer.Option(0.0, help="Drop tokens below min_p x the top token's probability."),
    repetition_penalty: float = typer.Option(1.0, help="CTRL-style penalty on generated tokens (1 = off)."),
    max_new_tokens: int = typer.Option(256, help="Longest reply in tokens."),
    seed: int = typer.Option(None, help="Seed for sampling (same seed, same reply)."),
    cache: str = typer.Option("contiguous", help="KV cache: contiguous | paged."),
    dtype: str = typer.Option(None, help="Run the model in this dtype (bf16 is faster on AVX-512 CPUs)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the decode step."),
    quantize: str = typer.Option(None, help="int8: int8 weights for decode (~2x faster on a CPU)."),
    guard: str = typer.Option(
        None, help="Safety guard policy: 'default' or a policy YAML (see docs/safety.md)."
    ),
    threads: int = typer.Option(None, help="torch threads (default: torch's choice)."),
) -> None:
    from rich.console import Console

    from chinwag.generate.sampling import SamplingParams

    con = Console()
    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    try:
        params.validate()
        session = ChatSession(
            run,
            system=system,
            params=params,
            cache=cache,
            dtype=dtype,
            compile=compile,
            threads=threads,
            quantize=quantize,
            guard=guard,
        )
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(str(e))
    if prompt is not None:
        text = sys.stdin.read() if prompt == "-" else prompt
        reply = session.reply(text)
        print(json.dumps({"reply": reply, **session.stats}, ensure_ascii=False) if json_out else reply)
        return
    try:
        import readline  # noqa: F401  (arrow-key history for input())
    except ImportError:  # pragma: no cover
        pass
    con.print(f"[bold]chinwag chat[/bold] — {run}  (/help for commands, /exit quits)")
    while True:
        try:
            text = con.input("[bold cyan]you>[/bold cyan] ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text.strip():
            continue
        if text.strip().startswith("/"):
            if not _command(session, con, text.strip()):
                return
            continue
        con.print("[bold green]bot>[/bold green] ", end="")
        try:
            for piece in session.stream_reply(text):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session
            con.print(" [dim](stopped)[/dim]", end="")
        print()
        g = session.stats.get("guard")
        if g:
            con.print(f"[dim](guard: {g['action']} — {g['label']} {g['score']:.2f})[/dim]")


def read_prompts(path: str) -> list[dict]:
    """JSONL records: {"prompt": str} | {"messages": [...]} | a bare JSON string; optional "id" and sampling
    fields per record. Errors name file:line."""
    from chinwag.tokenizer.chat import validate_messages

    src = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    out = []
    with src:
        for i, line in enumerate(src, 1):
            if not line.strip():
                continue
            where = f"{'<stdin>' if path == '-' else path}:{i}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
            rec = {"prompt": rec} if isinstance(rec, str) else rec
            if not isinstance(rec, dict) or ("prompt" in rec) == ("messages" in rec):
                raise ValueError(
                    f"{where}: expected a string or an object with exactly one of 'prompt'/'messages'"
                )
            if "prompt" in rec and not isinstance(rec["prompt"], str):
                raise ValueError(f"{where}: 'prompt' must be a string")
            if "messages" in rec:
                try:
                    validate_messages(rec["messages"])
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
            rec.setdefault("id", len(out))
            rec["_where"] = where
            out.append(rec)
    return out


def generate_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    input: str = typer.Option("-", "--input", "-i", help="JSONL prompts ('-' = stdin)."),
    output: str = typer.Option("-", "--output", "-o", help="JSONL results ('-' = stdout)."),
    strategy: str = typer.Option("sample", help=f"Decoding strategy: {' | '.join(STRATEGIES)}."),
    raw: bool = typer.Option(False, "--raw", help="Continue 'prompt' as plain text instead of a user turn."),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: int = typer.Option(50),
    top_p: float = typer.Option(0.95),
    max_new_tokens: int = typer.Option(128),
    seed: int = typer.Option(0, help="Base seed; record i uses seed + i unless it sets its own."),
    batch_size: int = typer.Option(16, help="Sequences decoded together (strategy 'sample')."),
    num_beams: int = typer.Option(4, help="Beam width (strategy 'beam')."),
    n: int = typer.Option(4, help="Samples per prompt (strategy 'best-of-n'; scored by mean log-prob)."),
    budget_nodes: int = typer.Option(32, help="Node budget (strategy 'tree'; scored by mean log-prob)."),
    draft: Path = typer.Option(None, help="Draft run sharing the tokenizer (strategy 'speculative')."),
    k: int = typer.Option(4, help="Draft tokens per round (strategy 'speculative')."),
    dtype: str = typer.Option(None, help="Run the model in this dtype (e.g. bf16)."),
    quantize: str = typer.Option(None, help="int8: int8 weights for decode (strategy 'sample')."),
    threads: int = typer.Option(None, help="torch threads."),
) -> None:
    """Generate for every prompt of a JSONL file, batched; writes one JSON result per line."""
    import torch
    from tqdm import tqdm

    from chinwag.generate.engine import Engine
    from chinwag.generate.sampling import SamplingParams
    from chinwag.tokenizer.chat import render

    if strategy not in STRATEGIES:
        _fail(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "speculative" and draft is None:
        _fail("--strategy speculative needs --draft RUN")
    if threads:
        torch.set_num_threads(threads)
    try:
        model, tok = _load_run(run)
        records = read_prompts(input)
        base = SamplingParams(
            temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens
        )
        names = {f.name for f in fields(SamplingParams)}
        plist = []
        for i, r in enumerate(records):
            p = replace(base, seed=seed + i, **{k_: v for k_, v in r.items() if k_ in names})
            try:
                p.validate()
            except ValueError as e:
                raise ValueError(f"{r['_where']}: {e}") from None
            plist.append(p)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(str(e))

    def prompt_ids(r, p):
        if raw and "prompt" in r:
            return tok.encode(r["prompt"])
        msgs = r.get("messages") or [{"role": "user", "content": r["prompt"]}]
        budget = max(1, model.config.max_seq_len - p.max_new_tokens)
        return render(msgs, tok, add_generation_prompt=True, max_tokens=budget).ids

    prompts = [prompt_ids(r, p) for r, p in zip(records, plist, strict=True)]
    if strategy == "sample":  # one engine, continuous batching over all prompts
        engine = Engine(model, tok, max_batch=batch_size, dtype=dtype, quantize=quantize)
        done = engine.generate(prompts, plist)
        results = [
            {"id": r["id"], "text": c.text, "finish_reason": c.finish_reason, "usage": c.usage}
            for c, r in zip(done, records, strict=True)
        ]
    else:
        run_one = _strategy(
            strategy, model, tok, num_beams=num_beams, n=n, budget_nodes=budget_nodes, draft=draft, k=k
        )
        results = [
            {"id": r["id"], **run_one(ids, p)}
            for ids, p, r in tqdm(
                list(zip(prompts, plist, records, strict=True)),
                unit="prompt",
                file=sys.stderr,
                disable=len(records) < 2,
            )
        ]
    lines = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in results)
    if output == "-":
        sys.stdout.write(lines)
    else:
        from chinwag.utils import atomic_write_text

        atomic_write_text(output, lines)
        typer.secho(f"wrote {len(results)} results to {output}", err=True)


def _strategy(name, model, tok, num_beams, n, budget_nodes, draft, k):
    """A function (prompt_ids, params) -> result dict for one of the search strategies."""
    from chinwag.generate.scorers import MeanLogProbScorer

    if name == "beam":
        from chinwag.generate.beam import beam_search

        def run(ids, p):
            res = beam_search(model, tok, ids, p, num_beams=num_beams)
            return {"text": res.text, "score": res.score}
    elif name == "best-of-n":
        from chinwag.generate.best_of_n import best_of_n

        def run(ids, p):
            res = best_of_n(model, tok, ids, MeanLogProbScorer(model), n, p)
            return {"text": res.text, "score": res.score, "scores": res.scores}
    elif name == "tree":
        from chinwag.generate.tree import tree_search

        def run(ids, p):
            res = tree_search(model, tok, ids, MeanLogProbScorer(model), budget_nodes=budget_nodes, params=p)
            return {"text": res.text, "score": res.score}
    else:
        from chinwag.generate.speculative import speculative_generate

        draft_model, draft_tok = _load_run(draft)
        if draft_tok != tok:
            _fail(f"{draft}: the draft run's tokenizer differs from the target's")

        def run(ids, p):
            res = speculative_generate(model, draft_model, tok, ids, p, k=k)
            return {
                "text": res.text,
                "finish_reason": res.finish_reason,
                "acceptance_rate": res.stats.acceptance_rate,
            }

    return run
