"""`WS /v1/ws/chat`: a chat session over one WebSocket; the server keeps the history.

Client -> server (JSON text frames):
    {"type": "message", "content": "hi", "system": "...", "temperature": 0.7, "max_tokens": 64, ...}
    {"type": "cancel"}       stop the current generation (its partial reply stays in the history)
    {"type": "reset"}        cancel, forget the history, start a new conversation
    {"type": "ping"}
Server -> client:
    {"type": "delta", "content": "..."} ...
    {"type": "done", "finish_reason": "stop|length|cancelled|content_filter", "usage": {...},
     "conversation_id": ...}
    {"type": "reset"} / {"type": "pong"}
    {"type": "error", "error": {"message", "type", "param", "code"}}   (the session stays open)

Sampling fields are the chat endpoint's (temperature, top_p, top_k, min_p, max_tokens, stop, seed,
penalties). One generation at a time: a message sent while one runs gets an error, not a queue.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import WebSocket
from pydantic import ValidationError

from chinwag.serve.schemas import APIError, ChatCompletionRequest, error_body

_CONTROL = {"type", "content", "system", "messages", "stream", "n", "logprobs", "top_logprobs"}


async def chat_session(srv, ws: WebSocket) -> None:
    from chinwag.serve import app as A

    await ws.accept()
    history: list[dict] = []
    # one guard session per socket: the guard's conversation risk accumulates across turns
    guard_session = srv.guard.session() if srv.guard is not None and hasattr(srv.guard, "session") else None
    state = {"conversation_id": None, "system": None, "gen": None}
    inbox: asyncio.Queue = asyncio.Queue()
    turn: asyncio.Task | None = None

    async def send(obj) -> None:
        try:
            await ws.send_text(json.dumps(obj, ensure_ascii=False))
        except Exception:  # the client is gone; the reader will notice and end the session
            pass

    async def send_error(e: APIError) -> None:
        await send({"type": "error", **e.body()})

    async def reader() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                inbox.put_nowait(None)
                return
            inbox.put_nowait(msg.get("text") if msg.get("text") is not None else msg.get("bytes", b""))

    async def run_turn(msg: dict) -> None:
        content = msg.get("content")
        if not isinstance(content, str) or not content:
            return await send_error(APIError(400, "'content' must be a non-empty string", param="content"))
        if "system" in msg:
            if msg["system"] is not None and not isinstance(msg["system"], str):
                return await send_error(APIError(400, "'system' must be a string", param="system"))
            state["system"] = msg["system"] or None
        params = {k: v for k, v in msg.items() if k not in _CONTROL}
        system = [{"role": "system", "content": state["system"]}] if state["system"] else []
        messages = system + history + [{"role": "user", "content": content}]
        try:
            body = ChatCompletionRequest.model_validate({"messages": messages, **params})
        except ValidationError as e:
            err = e.errors()[0]
            param = A._param_of(err.get("loc", ()))
            return await send_error(APIError(400, f"{param}: {err.get('msg')}", param=param))
        t0 = time.perf_counter()
        try:
            from chinwag.tokenizer.chat import render

            try:
                ids = render(messages, srv.tok, add_generation_prompt=True).ids
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None
            A._check_context(srv, len(ids))
            max_tokens = body.max_completion_tokens or body.max_tokens
            (sp,) = A._sampling(srv, body.model_copy(update={"n": 1}), len(ids), max_tokens, False, 0)
            refusal = A._check_guard(srv, content, history, session=guard_session)
            reply, reason = "", None
            if refusal is not None:
                reply = getattr(refusal, "refusal", None) or "I can't help with that."
                await send({"type": "delta", "content": reply})
                reason = A.FINISH_GUARD
                usage = {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
            else:
                gen = A.Generation(srv, [ids], [sp], "/v1/ws/chat", guard_session=guard_session)
                state["gen"] = gen
                try:
                    async for _, d, r in gen.events():
                        if d is not None and d.text:
                            reply += d.text
                            await send({"type": "delta", "content": d.text})
                        reason = r or reason
                finally:
                    state["gen"] = None
                usage = gen.usage(len(ids))
        except APIError as e:
            return await send_error(e)
        history.extend([{"role": "user", "content": content}, {"role": "assistant", "content": reply}])
        rec = body.model_dump(
            exclude={"messages", "stream", "stream_options", "conversation_id"}, exclude_none=True
        )
        latency = (time.perf_counter() - t0) * 1000
        state["conversation_id"] = A._record(
            srv, state["conversation_id"], messages, reply, rec, usage, latency
        )
        await send(
            {
                "type": "done",
                "finish_reason": reason,
                "usage": usage,
                "conversation_id": state["conversation_id"],
            }
        )

    async def cancel_turn() -> None:
        if turn is not None and not turn.done():
            if state["gen"] is not None:
                state["gen"].cancel()  # ends with a "done" carrying finish_reason "cancelled"
            await asyncio.wait({turn}, timeout=5)

    read_task = asyncio.create_task(reader())
    try:
        while True:
            raw = await inbox.get()
            if raw is None:
                break
            try:
                msg = json.loads(raw)
            except (ValueError, TypeError):
                await send_error(APIError(400, "each frame must be a JSON object"))
                continue
            typ = msg.get("type") if isinstance(msg, dict) else None
            if typ == "message":
                if turn is not None and not turn.done():
                    await send_error(APIError(409, "a reply is still being generated; send cancel first"))
                else:
                    turn = asyncio.create_task(run_turn(msg))
            elif typ == "cancel":
                await cancel_turn()
            elif typ == "reset":
                await cancel_turn()
                history.clear()
                state["conversation_id"] = None
                if guard_session is not None and hasattr(guard_session, "reset"):
                    guard_session.reset()
                await send({"type": "reset"})
            elif typ == "ping":
                await send({"type": "pong"})
            else:
                await send({"type": "error", **error_body(f"unknown message type {typ!r}", param="type")})
    finally:
        read_task.cancel()
        if turn is not None and not turn.done():
            turn.cancel()  # Generation.events' finally aborts the engine request
