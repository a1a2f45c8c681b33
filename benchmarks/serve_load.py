"""Load test for `chinwag serve`: N concurrent streaming chat clients for a fixed time, per N.

Each client loops: POST /v1/chat/completions with `stream: true` and a fixed `max_tokens`, reads the SSE
stream to `data: [DONE]`, and records time to first content token (TTFT), total latency and the
completion tokens the server reports (`stream_options.include_usage`). A request counts if it
was started before the level's deadline (the level waits for those in flight, and its
wall time includes them); anything but a clean 200 stream ending in [DONE] is an error.

Without `--url` the script starts the server itself (`chinwag serve`, in a subprocess, on 127.0.0.1 and
a free port) on `--run`, or, when no run is given, on a throwaway run of the `small` preset with random
weights and a BPE tokenizer trained on the chitchat corpus (speed does not depend on the weights).
When it knows the tokenizer it biases `<|end|>`/`<|eos|>` away (`logit_bias`), so every request generates
exactly `max_tokens`. Everything is loopback, bounded in time (`--duration` per level) and in count
(`--max-requests` per level).

    python benchmarks/serve_load.py [--run runs/NAME | --url http://127.0.0.1:8000] [--clients 1,8,32]
                                    [--duration 20] [--max-tokens 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

PROMPT = "Tell me about your favourite place to go for a walk, and why you like it."


# ---------------------------------------------------------------------------- the server


def build_small_run(folder: Path, seed: int) -> Path:
    """A `small`-preset run folder with random weights and a BPE (8192 ids) trained on the chitchat corpus."""
    import torch

    from chinwag.data import iter_texts
    from chinwag.model.io import save_model
    from chinwag.model.model import ChinwagLM
    from chinwag.model.presets import get_config
    from chinwag.tokenizer.train import train_bpe

    tok = train_bpe(iter_texts("chitchat", on_error="skip"), vocab_size=8192, show_progress=False)
    torch.manual_seed(seed)
    model = ChinwagLM(get_config("small", vocab_size=tok.vocab_size)).eval()
    save_model(model, folder)
    tok.save(folder / "tokenizer.json")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, extra: list[str], log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "chinwag.cli", "serve", str(run), "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "w")
    return subprocess.Popen([*cmd, *extra], stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float, log_path: Path | None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text()[-2000:] if log_path else ""
            raise SystemExit(f"server exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server at {url} not healthy after {timeout:.0f} s")


def end_bias(run: Path | None) -> dict[str, int]:
    """logit_bias that forbids the stop tokens, so every request runs to max_tokens."""
    if run is None or not (run / "tokenizer.json").is_file():
        return {}
    from chinwag.tokenizer import Tokenizer

    tok = Tokenizer.load(run / "tokenizer.json")
    return {str(tok.end_id): -100, str(tok.eos_id): -100}


# ---------------------------------------------------------------------------- the clients


async def one_request(client, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    ttft, tokens, done, chunks = None, None, False, 0
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return {"error": f"HTTP {resp.status_code}: {resp.text[:200]}"}
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - any failure is an error to count, not a crash
        return {"error": f"{type(e).__name__}: {e}"}
    end = time.perf_counter()
    if not done:
        return {"error": "stream ended without [DONE]"}
    return {
        "ttft": ttft if ttft is not None else end - t0,
        "latency": end - t0,
        "tokens": tokens if tokens is not None else chunks,
    }


async def run_level(url: str, n_clients: int, duration: float, body: dict, headers: dict, max_requests: int):
    import httpx

    results: list[dict] = []
    started = 0
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)
    # Generous read timeout: at 32 clients on 2 cores a request can queue for a while; the deadline and
    # max_requests bound the level, the timeout only catches a hung server.
    timeout = httpx.Timeout(connect=10, read=max(60.0, 3 * duration), write=10, pool=10)

    async def client_loop(client):
        nonlocal started
        while time.monotonic() < deadline and started < max_requests:
            started += 1
            results.append(await one_request(client, url, body))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(n_clients)))
    wall = time.perf_counter() - t0
    return summarize(n_clients, results, wall)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summarize(n_clients: int, results: list[dict], wall: float) -> dict:
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = [r["ttft"] * 1000 for r in ok]
    lat = [r["latency"] * 1000 for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": n_clients,
        "requests": len(ok),
        "errors": len(errors),
        "first_errors": errors[:5],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "tokens_per_request": round(tokens / len(ok), 1) if ok else 0,
        "ttft_p50_ms": round(pct(ttft, 0.5), 1),
        "ttft_p95_ms": round(pct(ttft, 0.95), 1),
        "latency_p50_ms": round(pct(lat, 0.5), 1),
        "latency_p95_ms": round(pct(lat, 0.95), 1),
        "mean_latency_ms": round(statistics.fmean(lat), 1) if lat else float("nan"),
    }


def markdown(rows: list[dict]) -> str:
    cols = [
        ("clients", "clients"),
        ("requests", "requests"),
        ("requests_per_s", "req/s"),
        ("tokens_per_s", "tok/s"),
        ("ttft_p50_ms", "TTFT p50 ms"),
        ("ttft_p95_ms", "TTFT p95 ms"),
        ("latency_p50_ms", "latency p50 ms"),
        ("latency_p95_ms", "latency p95 ms"),
        ("errors", "errors"),
    ]
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---:" for _ in cols) + "|"
    body = ["| " + " | ".join(str(r[c[0]]) for c in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="run folder to serve (default: a random-weight `small` run)")
    ap.add_argument("--url", help="benchmark an already running server instead of starting one")
    ap.add_argument("--api-key", help="sent as Authorization: Bearer")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per request")
    ap.add_argument("--max-requests", type=int, default=10_000, help="cap on requests per level")
    ap.add_argument("--warmup", type=int, default=2, help="requests before measuring (not counted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `chinwag serve` argument")
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        ap.error("--clients must list positive integers")

    proc, tmp, run = None, None, args.run
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            ap.error(f"--url must be loopback (127.0.0.1/localhost), got {host}")
        url = args.url.rstrip("/")
    else:
        if run is None:
            tmp = tempfile.TemporaryDirectory(prefix="chinwag-load-")
            print("building a random-weight `small` run ...", flush=True)
            run = build_small_run(Path(tmp.name) / "run", args.seed)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_dir = Path(tmp.name if tmp else tempfile.gettempdir())
        log_path = log_dir / f"chinwag-serve-{port}.log"
        extra = ["--db", str(log_dir / f"load-{port}.db"), *args.server_arg]
        proc = start_server(run, port, extra, log_path)
    try:
        wait_healthy(url, proc, args.startup_timeout, None if proc is None else log_path)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        body = {
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": args.max_tokens,
            "temperature": 1.0,
            "seed": args.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        bias = end_bias(run)
        if bias:
            body["logit_bias"] = bias
        if args.warmup:
            asyncio.run(run_level(url, 1, 1e9, body, headers, args.warmup))
        rows = []
        for n in levels:
            print(f"{n} client(s) for {args.duration:g} s ...", flush=True)
            rows.append(asyncio.run(run_level(url, n, args.duration, body, headers, args.max_requests)))
            if rows[-1]["errors"]:
                print(f"  errors: {rows[-1]['first_errors']}", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()

    table = markdown(rows)
    print()
    print(
        f"`{'--run ' + str(args.run) if args.run else 'small preset, random weights'}`, "
        f"max_tokens={args.max_tokens}, {args.duration:g} s per level, {os.cpu_count()} CPU(s), "
        f"{platform.processor() or platform.machine()}"
    )
    print(table)
    if args.json:
        from chinwag.utils import write_json

        write_json(
            args.json,
            {
                "run": str(args.run) if args.run else "small (random weights)",
                "url": args.url,
                "max_tokens": args.max_tokens,
                "duration_s": args.duration,
                "cpus": os.cpu_count(),
                "results": rows,
            },
        )
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
