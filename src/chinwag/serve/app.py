"""The OpenAI-compatible server: `create_app(run_or_engine, ...)` -> a FastAPI app.

    app = create_app("runs/chat", api_keys=["sk-local"])      # or create_app(engine)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Shapes follow llama.cpp's server (docs/serving.md, /work reference interop.md §1): the role-first SSE
chunk, content chunks, a finish chunk with an empty delta, an optional usage chunk with `choices: []`,
then `data: [DONE]`. Every error is `{"error": {message, type, param, code}}`; bad input is always a
4xx, never a 500 or a traceback.

Request flow: validate -> render the chat template -> check the context -> `EngineRunner.submit` (one
engine sequence per choice; 429 if the queue is full) -> deltas arrive on a per-request asyncio.Queue
(the engine thread calls `loop.call_soon_threadsafe`) -> JSON or SSE. A watcher task turns the client's
disconnect into an abort, so a closed tab frees its cache rows at the next engine step.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chinwag.serve.auth import is_public, key_ok, presented_key
from chinwag.serve.metrics import Metrics
from chinwag.serve.runner import EngineError, EngineRunner, QueueFull
from chinwag.serve.schemas import APIError, ChatCompletionRequest, CompletionRequest, error_body

log = logging.getLogger("chinwag.serve")

STATIC_DIR = Path(__file__).parent / "static"
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/v1/ws/chat",
    "/",
)
FINISH_GUARD = "content_filter"
_DISCONNECTED, _CANCELLED = object(), object()


# ---- the server state ------------------------------------------------------------------------------------


class Server:
    """Everything a handler needs: the engine (through its runner), tokenizer, limits and hooks."""

    def __init__(self, engine, model_name, api_keys, max_queue, store, guard, max_body_bytes):
        self.engine, self.tok = engine, engine.tok
        self.model_name = model_name
        self.api_keys = list(api_keys or [])
        self.runner = EngineRunner(engine, max_queue=max_queue)
        self.metrics = Metrics()
        self.store, self.guard = store, guard
        self.max_body_bytes = max_body_bytes
        self.max_len = engine.max_len
        self.created = int(time.time())
        self.fingerprint = f"chinwag-{model_name}"[:64]

    def token_info(self, tid: int) -> dict:
        return {"id": tid, "token": self.tok.decode([tid]), "bytes": list(self.tok.token_bytes(tid))}


def _load_engine(run, max_batch, cache, dtype, threads):
    import torch

    from chinwag.generate.engine import Engine
    from chinwag.model.io import load_model
    from chinwag.tokenizer import Tokenizer

    run = Path(run)
    if not (run / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{run}: no tokenizer.json (is this a run folder?)")
    tok = Tokenizer.load(run / "tokenizer.json")
    model = load_model(run)
    if threads:
        torch.set_num_threads(threads)
    return Engine(model, tok, cache=cache, max_batch=max_batch, dtype=dtype)


def create_app(
    run_or_engine,
    *,
    model_name: str | None = None,
    api_keys: list[str] | None = None,
    max_queue: int = 64,
    max_batch: int = 16,
    cache: str = "contiguous",
    dtype: str | None = None,
    threads: int | None = None,
    cors: bool | list[str] = False,
    max_body_bytes: int = 1 << 20,
    store=None,
    guard=None,
    static_dir: str | Path | None = STATIC_DIR,
) -> FastAPI:
    """Build the app around a run folder (loaded here) or a ready `Engine` (tests, embedding).

    cors: False (default: same-origin only), True (any origin) or a list of allowed origins.
    store: an object with `record(conversation_id, messages, reply, model, params, usage, latency_ms) -> id`.
    guard: an object with `check(text) -> verdict` (verdict.action, verdict.refusal) and optionally
    `monitor() -> session` with `session.feed(delta) -> verdict` for the output stream.
    """
    if isinstance(run_or_engine, (str, Path)):
        engine = _load_engine(run_or_engine, max_batch, cache, dtype, threads)
        model_name = model_name or Path(run_or_engine).resolve().name
    else:
        engine = run_or_engine
        if engine.tok is None:
            raise ValueError("the engine needs a tokenizer to serve text")
    srv = Server(engine, model_name or "chinwag", api_keys, max_queue, store, guard, max_body_bytes)
    srv.runner.start()

    @asynccontextmanager
    async def lifespan(app):
        srv.runner.start()
        yield
        srv.runner.stop()

    app = FastAPI(title="chinwag", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = srv
    _install_errors(app)
    _routes(app, srv, Path(static_dir) if static_dir else None)
    app.add_middleware(Gate, srv=srv)
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        origins = ["*"] if cors is True else list(cors)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Api-Key"],
        )
    return app


# ---- errors ----------------------------------------------------------------------------------------------


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            msg = f"malformed JSON in the request body: {first.get('ctx', {}).get('error', 'parse error')}"
            return JSONResponse(error_body(msg), status_code=400)
        params = list(dict.fromkeys(_param_of(err.get("loc", ())) for err in errs))
        param = params[0] if params else None
        msg = first.get("msg", "invalid request")
        if param:
            msg = f"{param}: {msg}"
        elif first.get("type") in ("missing", "model_attributes_type", "dict_type"):
            msg = "the request body must be a JSON object"
        if len(params) > 1:
            msg += f" (and {len(params) - 1} more field{'s' if len(params) > 2 else ''})"
        return JSONResponse(error_body(msg, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        msg = (
            str(e.detail)
            if e.status_code != 404
            else f"no such endpoint: {request.method} {request.url.path}"
        )
        from chinwag.serve.schemas import ERROR_TYPES

        typ = ERROR_TYPES.get(e.status_code, "invalid_request_error")
        return JSONResponse(error_body(msg, typ, e.status_code), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", "server_error", 500), status_code=500)


def _param_of(loc) -> str | None:
    """pydantic's error location -> the request field: ("body", "messages", 0, "role") -> "messages.0.role";
    union members' tags (("body", "temperature", "int")) are not fields and are dropped."""
    out = []
    for x in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(x, int) or (isinstance(x, str) and x.isidentifier() and x not in _TYPE_TAGS):
            out.append(str(x))
        else:
            break
    return ".".join(out) or None


_TYPE_TAGS = {"int", "float", "str", "bool", "list", "dict", "none", "literal"}


# ---- the gate: auth, body cap, metrics (plain ASGI so streaming and disconnects pass untouched) ----------


class Gate:
    def __init__(self, app, srv: Server):
        self.app, self.srv = app, srv

    async def _reply(self, send, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        srv, path = self.srv, scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        t0 = time.perf_counter()
        status = [0]

        def done():
            srv.metrics.request(endpoint, status[0], time.perf_counter() - t0)

        authorized = not srv.api_keys or is_public(path) or key_ok(presented_key(scope), srv.api_keys)
        if scope["type"] == "websocket":
            if not authorized:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
                status[0] = 401
                return done()
            status[0] = 101
            try:
                return await self.app(scope, receive, send)
            finally:
                done()
        if not authorized:
            status[0] = 401
            body = error_body("Invalid API Key", "authentication_error", 401)
            await self._reply(send, 401, body, {"WWW-Authenticate": "Bearer"})
            return done()
        if scope["method"] in ("POST", "PUT", "PATCH"):
            if path.startswith("/v1/"):  # every /v1 body is JSON, whatever `curl -d` says it is
                hdrs = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
                scope = dict(scope, headers=hdrs + [(b"content-type", b"application/json")])
            receive = await self._read_capped(scope, receive)
            if receive is None:
                status[0] = 413
                msg = f"request body exceeds the {srv.max_body_bytes}-byte limit"
                await self._reply(send, 413, error_body(msg, code=413))
                return done()

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_)
        finally:
            done()

    async def _read_capped(self, scope, receive):
        """Buffer the body up to the cap (None if over it) and return a receive that replays it, then
        passes through to the client's (so a handler still sees http.disconnect)."""
        cap = self.srv.max_body_bytes
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    if int(v) > cap:
                        return None
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client left mid-body
                chunks = None
                first = msg
                break
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > cap:
                return None
            if not msg.get("more_body", False):
                break
        replay = [first] if chunks is None else [{"type": "http.request", "body": b"".join(chunks)}]

        async def receive_():
            return replay.pop() if replay else await receive()

        return receive_


# ---- running a request on the engine ---------------------------------------------------------------------


class Generation:
    """n engine sequences for one request; `events()` yields (choice, Delta | None, finish_reason)."""

    def __init__(
        self, srv: Server, prompts: list[list[int]], params: list, endpoint: str, guard_session=None
    ):
        self.srv, self.endpoint = srv, endpoint
        self.q: asyncio.Queue = asyncio.Queue()
        self.t0 = time.perf_counter()
        loop = asyncio.get_running_loop()

        def sink(rid, item):
            loop.call_soon_threadsafe(self.q.put_nowait, (rid, item))

        try:
            self.rids = srv.runner.submit(prompts, params, sink)
        except QueueFull:
            raise APIError(
                429,
                "the server is busy (request queue full); retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        self.index = {rid: i for i, rid in enumerate(self.rids)}
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.completion_tokens = [0] * len(prompts)
        self.monitors = [_monitor(srv.guard, guard_session) for _ in prompts]
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        self.q.put_nowait((None, _CANCELLED))

    async def events(self, request: Request | None = None) -> AsyncIterator[tuple]:
        pending = set(self.rids)
        watcher = asyncio.create_task(self._watch(request)) if request is not None else None
        try:
            while pending:
                rid, item = await self.q.get()
                if item is _DISCONNECTED or item is _CANCELLED:
                    if item is _CANCELLED:  # the caller still wants a finish event per choice
                        for r in sorted(pending, key=self.index.get):
                            yield self.index[r], None, "cancelled"
                    return
                if rid not in pending:
                    continue
                i = self.index[rid]
                if isinstance(item, EngineError):
                    pending.discard(rid)
                    raise APIError(500 if "internal" in str(item) else 400, str(item))
                if item.token_ids and self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                    self.srv.metrics.first_token(self.endpoint, self.first_token_at - self.t0)
                self.completion_tokens[i] += len(item.token_ids)
                mon = self.monitors[i]
                if mon is not None and item.text:
                    verdict = mon.feed(item.text)
                    if _blocks(verdict):  # cut: the refusal replaces the rest of the reply
                        pending.discard(rid)
                        self.srv.runner.abort([rid])
                        yield i, _Cut(getattr(verdict, "refusal", None) or ""), FINISH_GUARD
                        continue
                if item.finished:
                    pending.discard(rid)
                yield i, item, item.finish_reason
        finally:
            if watcher is not None:
                watcher.cancel()
            self.srv.runner.abort(list(pending))
            self.srv.metrics.tokens(self.prompt_tokens, sum(self.completion_tokens))

    async def collect(self, request: Request) -> tuple[list[str], list[list], list[str]] | None:
        """Run every choice to the end (non-streaming): (texts, logprobs, finish reasons), or None when the
        client went away before all choices finished."""
        k = len(self.rids)
        texts, lps, reasons = [""] * k, [[] for _ in range(k)], [None] * k
        async for i, d, reason in self.events(request):
            if d is not None:
                texts[i] += d.text
                lps[i] += d.logprobs or []
            if reason is not None:
                reasons[i] = reason
        return None if any(r is None for r in reasons) else (texts, lps, reasons)

    async def _watch(self, request: Request) -> None:
        try:
            while True:
                msg = await request.receive()
                if msg["type"] == "http.disconnect":
                    self.q.put_nowait((None, _DISCONNECTED))
                    return
        except Exception:  # the server is shutting the connection down; nothing to watch
            return

    def usage(self, prompt_tokens: int) -> dict:
        n = sum(self.completion_tokens)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n,
            "total_tokens": prompt_tokens + n,
            "prompt_tokens_details": {"cached_tokens": 0},
        }


# ---- request -> engine inputs ----------------------------------------------------------------------------

_FIELD_RE = re.compile(r"sampling field '(\w+)'")
_PARAM_NAMES = {"max_new_tokens": "max_tokens"}


def _messages(body: ChatCompletionRequest) -> list[dict]:
    if not body.messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    out = []
    for i, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):  # content parts: only text is understood by a text model
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    msg = f"messages[{i}].content[{j}]: only text parts are supported (got {part.type!r})"
                    raise APIError(400, msg, param=f"messages.{i}.content")
                texts.append(part.text)
            content = "".join(texts)
        if content is None:
            if m.role != "assistant":
                raise APIError(400, f"messages[{i}]: 'content' is required", param=f"messages.{i}.content")
            content = ""
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": content})
    return out


def _check_context(srv: Server, n_prompt: int) -> None:
    if n_prompt >= srv.max_len:
        msg = (
            f"the request exceeds the available context size: the prompt has {n_prompt} tokens and the "
            f"model's context is {srv.max_len} (at least one must be left to generate)"
        )
        raise APIError(
            400, msg, type="exceed_context_size_error", n_prompt_tokens=n_prompt, n_ctx=srv.max_len
        )


def _sampling(srv: Server, body, n_prompt: int, max_tokens: int | None, logprobs: bool, top_logprobs: int):
    """The request's fields -> n validated SamplingParams (one per choice, seeds offset per choice)."""
    from chinwag.generate.sampling import SamplingParams

    kw = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        v = getattr(body, name)
        if v is not None:
            kw[name] = v
    if 0 < kw.get("temperature", 1) < 1e-6:  # logits / 1e-30 overflow float32: that close to 0 is greedy
        kw["temperature"] = 0.0
    kw["presence_penalty"] = body.presence_penalty or 0.0
    kw["frequency_penalty"] = body.frequency_penalty or 0.0
    if body.logit_bias:
        bias = {}
        for k, v in body.logit_bias.items():
            if not (k.isascii() and k.isdigit()) or not 0 <= int(k) < srv.engine.cfg.vocab_size:
                raise APIError(400, f"logit_bias: {k!r} is not a token id of this model", param="logit_bias")
            bias[int(k)] = float(v)
        kw["logit_bias"] = bias
    stop = body.stop
    kw["stop"] = [stop] if isinstance(stop, str) else list(stop or [])
    if len(kw["stop"]) > 16:
        raise APIError(400, "stop: at most 16 stop sequences", param="stop")
    kw["max_new_tokens"] = min(max_tokens or srv.max_len, srv.max_len - n_prompt)
    kw["logprobs"], kw["top_logprobs"] = logprobs, top_logprobs
    n = body.n or 1
    if n > srv.runner.capacity:
        raise APIError(
            400, f"n={n} exceeds what this server holds at once ({srv.runner.capacity})", param="n"
        )
    out = []
    for i in range(n):
        seed = None if body.seed is None else (body.seed + i) % (1 << 63)
        sp = SamplingParams(seed=seed, **kw)
        try:
            sp.validate()
        except ValueError as e:
            m = _FIELD_RE.search(str(e))
            param = _PARAM_NAMES.get(m.group(1), m.group(1)) if m else None
            raise APIError(400, str(e), param=param) from None
        out.append(sp)
    return out


class _Cut:
    """Stands in for a Delta when the output guard cuts a reply: its text is the refusal."""

    def __init__(self, text: str):
        self.text, self.token_ids, self.logprobs = text, [], None


def _blocks(verdict) -> bool:
    return verdict is not None and getattr(verdict, "action", "allow") in ("refuse", "terminate")


def _monitor(guard, session=None):
    """An output monitor (`feed(delta) -> verdict | None`): chinwag.safety's `GuardSession.monitor()`,
    or a plain `guard.monitor()` for simpler guards; None without a guard."""
    if guard is None:
        return None
    if session is None and hasattr(guard, "session"):
        session = guard.session()
    if session is not None and hasattr(session, "monitor"):
        return session.monitor()
    return guard.monitor() if hasattr(guard, "monitor") else None


def _check_guard(srv: Server, text: str, history: list[dict] | None = None, session=None):
    """The guard's verdict on the user's input if it refuses, else None. A WebSocket passes its
    GuardSession (risk accumulates over the conversation); HTTP requests replay `history`."""
    if srv.guard is None:
        return None
    if session is not None and hasattr(session, "check_input"):
        verdict = session.check_input(text)
    else:
        try:
            takes_history = "history" in inspect.signature(srv.guard.check).parameters
        except (TypeError, ValueError):
            takes_history = False
        verdict = srv.guard.check(text, history=history or []) if takes_history else srv.guard.check(text)
    return verdict if _blocks(verdict) else None


def _record(srv: Server, conversation_id, messages, reply, params: dict, usage, latency_ms) -> str | None:
    """Hand a finished chat to the store; a store failure is logged, never the client's problem."""
    if srv.store is None:
        return conversation_id
    try:
        return srv.store.record(conversation_id, messages, reply, srv.model_name, params, usage, latency_ms)
    except Exception:
        log.exception("conversation store failed; the reply was still sent")
        return conversation_id


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _chat_logprobs(srv: Server, lps) -> list[dict]:
    out = []
    for lp in lps or []:
        d = srv.token_info(lp.token_id) | {"logprob": lp.logprob}
        d["top_logprobs"] = [srv.token_info(t) | {"logprob": v} for t, v in lp.top]
        out.append(d)
    return out


# ---- routes ----------------------------------------------------------------------------------------------


def _routes(app: FastAPI, srv: Server, static_dir: Path | None) -> None:
    @app.get("/health", tags=["server"])
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models", tags=["openai"])
    async def models():
        cfg = srv.engine.cfg
        n_params = sum(p.numel() for p in srv.engine.model.parameters())
        card = {
            "id": srv.model_name,
            "object": "model",
            "created": srv.created,
            "owned_by": "chinwag",
            "meta": {
                "n_ctx": srv.max_len,
                "n_vocab": cfg.vocab_size,
                "n_embd": cfg.d_model,
                "n_params": n_params,
            },
        }
        return {"object": "list", "data": [card]}

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse)
    async def metrics():
        gauges = {
            "chinwag_queue_depth": ("Sequences waiting for a cache slot.", srv.runner.queue_depth()),
            "chinwag_active_sequences": ("Sequences in the running batch.", srv.runner.active()),
            "chinwag_inflight_sequences": (
                "Sequences admitted by the server, not yet done.",
                srv.runner.inflight,
            ),
            "chinwag_queue_capacity": (
                "Sequences the server admits before answering 429.",
                srv.runner.capacity,
            ),
            "chinwag_engine_steps": ("Engine steps run since start.", srv.runner.steps),
        }
        return PlainTextResponse(srv.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await _chat(srv, body, request)

    @app.post("/v1/completions", tags=["openai"])
    async def completions(body: CompletionRequest, request: Request):
        return await _complete(srv, body, request)

    @app.websocket("/v1/ws/chat")
    async def ws_chat(ws: WebSocket):
        from chinwag.serve.ws import chat_session

        await chat_session(srv, ws)

    @app.get("/", include_in_schema=False)
    async def index():
        page = static_dir / "index.html" if static_dir else None
        if page is None or not page.is_file():
            return JSONResponse(
                {"status": "ok", "message": "chinwag server; the API is under /v1 (web page not installed)"}
            )
        return FileResponse(page)

    if static_dir is not None:
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=static_dir, check_dir=False), name="static")


async def _chat(srv: Server, body: ChatCompletionRequest, request: Request):
    from chinwag.tokenizer.chat import render

    messages = _messages(body)
    try:
        ids = render(messages, srv.tok, add_generation_prompt=True).ids
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    _check_context(srv, len(ids))
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = _sampling(srv, body, len(ids), max_tokens, bool(body.logprobs), body.top_logprobs or 0)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    env = {"id": cid, "created": created, "model": srv.model_name, "system_fingerprint": srv.fingerprint}
    n = len(params)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    rec_params = body.model_dump(
        exclude={"messages", "stream", "stream_options", "conversation_id", "model"}, exclude_none=True
    )
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    refusal = None
    if last_user is not None:
        refusal = _check_guard(srv, messages[last_user]["content"], messages[:last_user])
    t0 = time.perf_counter()

    if refusal is not None:  # a normal assistant turn carrying the refusal, finish_reason content_filter
        text = getattr(refusal, "refusal", None) or "I can't help with that."
        usage = {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
        conv = _record(srv, body.conversation_id, messages, text, rec_params, usage, 0.0)
        if not body.stream:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": FINISH_GUARD,
                }
                for i in range(n)
            ]
            return {
                "object": "chat.completion",
                **env,
                "choices": choices,
                "usage": usage,
                "conversation_id": conv,
            }

        async def refused():
            chunk = {"object": "chat.completion.chunk", **env}
            for i in range(n):
                yield _sse(
                    chunk
                    | {
                        "choices": [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": None},
                                "finish_reason": None,
                            }
                        ]
                    }
                )
                yield _sse(
                    chunk | {"choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}]}
                )
                yield _sse(
                    chunk
                    | {"choices": [{"index": i, "delta": {}, "finish_reason": FINISH_GUARD}]}
                    | {"conversation_id": conv}
                )
            if include_usage:
                yield _sse(chunk | {"choices": [], "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(refused(), media_type="text/event-stream")

    gen = Generation(srv, [ids] * n, params, "/v1/chat/completions")
    gen.prompt_tokens = len(ids)  # n choices share one prompt: OpenAI counts it once

    if not body.stream:
        done = await gen.collect(request)
        if done is None:  # the client went away: nobody reads this
            return Response(status_code=499)
        texts, lps, reasons = done
        usage = gen.usage(len(ids))
        conv = _record(
            srv,
            body.conversation_id,
            messages,
            texts[0],
            rec_params,
            usage,
            (time.perf_counter() - t0) * 1000,
        )
        choices = []
        for i in range(n):
            c = {
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "logprobs": None,
                "finish_reason": reasons[i],
            }
            if body.logprobs:
                c["logprobs"] = {"content": _chat_logprobs(srv, lps[i])}
            choices.append(c)
        out = {"object": "chat.completion", **env, "choices": choices, "usage": usage}
        if srv.store is not None:
            out["conversation_id"] = conv
        return out

    async def stream():
        chunk = {"object": "chat.completion.chunk", **env}
        texts, left = [""] * n, n
        for i in range(n):
            first = {"index": i, "delta": {"role": "assistant", "content": None}, "finish_reason": None}
            yield _sse(chunk | {"choices": [first]})
        try:
            async for i, d, reason in gen.events(request):
                if d is not None and (d.text or (body.logprobs and d.logprobs)):
                    texts[i] += d.text
                    c = {"index": i, "delta": {"content": d.text}, "finish_reason": None}
                    if body.logprobs:
                        c["logprobs"] = {"content": _chat_logprobs(srv, d.logprobs)}
                    yield _sse(chunk | {"choices": [c]})
                if reason is not None:
                    left -= 1
                    extra = {}
                    if left == 0 and srv.store is not None:
                        latency = (time.perf_counter() - t0) * 1000
                        usage = gen.usage(len(ids))
                        extra["conversation_id"] = _record(
                            srv, body.conversation_id, messages, texts[0], rec_params, usage, latency
                        )
                    yield _sse(
                        chunk | {"choices": [{"index": i, "delta": {}, "finish_reason": reason}]} | extra
                    )
        except APIError as e:  # after the headers went out, errors travel as an event (llama.cpp, vLLM)
            yield _sse(e.body())
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            yield _sse(chunk | {"choices": [], "usage": gen.usage(len(ids))})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _complete(srv: Server, body: CompletionRequest, request: Request):
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise APIError(400, "'prompt' must not be an empty list", param="prompt")
    if len(prompts) > 16:
        raise APIError(400, "at most 16 prompts per request", param="prompt")
    # a pretraining document starts after an <|eos|>: that is what the model saw before every document
    encoded = [[srv.tok.eos_id] + srv.tok.encode(p) for p in prompts]
    for ids in encoded:
        _check_context(srv, len(ids))
    logprobs = body.logprobs is not None
    per = [
        _sampling(srv, body, len(ids), body.max_tokens or 16, logprobs, body.logprobs or 0) for ids in encoded
    ]
    n = len(per[0])
    flat_prompts = [ids for ids in encoded for _ in range(n)]
    flat_params = [sp for ps in per for sp in ps]
    k = len(flat_prompts)
    cid = f"cmpl-{uuid.uuid4().hex[:24]}"
    env = {
        "id": cid,
        "created": int(time.time()),
        "model": srv.model_name,
        "system_fingerprint": srv.fingerprint,
    }
    prompt_tokens = sum(len(ids) for ids in encoded)
    gen = Generation(srv, flat_prompts, flat_params, "/v1/completions")
    gen.prompt_tokens = prompt_tokens
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def legacy_lps(lps, offset0: int) -> dict:
        toks = [srv.tok.decode([lp.token_id]) for lp in lps]
        offsets, pos = [], offset0
        for t in toks:
            offsets.append(pos)
            pos += len(t)
        tops = [{srv.tok.decode([t]): v for t, v in lp.top} for lp in lps]
        return {
            "tokens": toks,
            "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    if not body.stream:
        done = await gen.collect(request)
        if done is None:
            return Response(status_code=499)
        texts, lps, reasons = done
        choices = []
        for i in range(k):
            head = prompts[i // n] if body.echo else ""
            c = {"index": i, "text": head + texts[i], "logprobs": None, "finish_reason": reasons[i]}
            if logprobs:
                c["logprobs"] = legacy_lps(lps[i], len(head))
            choices.append(c)
        return {"object": "text_completion", **env, "choices": choices, "usage": gen.usage(prompt_tokens)}

    async def stream():
        chunk = {"object": "text_completion", **env}
        offsets = [len(prompts[i // n]) if body.echo else 0 for i in range(k)]
        if body.echo:
            for i in range(k):
                yield _sse(
                    chunk
                    | {
                        "choices": [
                            {"index": i, "text": prompts[i // n], "logprobs": None, "finish_reason": None}
                        ]
                    }
                )
        try:
            async for i, d, reason in gen.events(request):
                if d is not None and (d.text or (logprobs and d.logprobs)):
                    c = {"index": i, "text": d.text, "logprobs": None, "finish_reason": None}
                    if logprobs:
                        c["logprobs"] = legacy_lps(d.logprobs or [], offsets[i])
                    offsets[i] += len(d.text)
                    yield _sse(chunk | {"choices": [c]})
                if reason is not None:
                    yield _sse(
                        chunk
                        | {"choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": reason}]}
                    )
        except APIError as e:
            yield _sse(e.body())
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            yield _sse(chunk | {"choices": [], "usage": gen.usage(prompt_tokens)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
