"""WS /v1/ws/chat: streamed deltas, history across turns, cancel, reset, errors, auth."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chinwag.serve.app import create_app
from tests.serve.conftest import live, make_engine, wait_idle
from tests.serve.test_errors import SlowEngine


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/ws/chat"


def recv(ws) -> dict:
    return json.loads(ws.recv(timeout=30))


def until_done(ws) -> tuple[str, dict]:
    text = ""
    while True:
        m = recv(ws)
        if m["type"] == "delta":
            text += m["content"]
        elif m["type"] == "done":
            return text, m
        else:
            raise AssertionError(m)


def test_message_streams_deltas_and_keeps_history(base_url):
    with connect(ws_url(base_url)) as ws:
        ws.send(json.dumps({"type": "message", "content": "hello there", "temperature": 0, "max_tokens": 6}))
        text, done = until_done(ws)
        assert done["finish_reason"] in ("stop", "length")
        u = done["usage"]
        assert (
            0 < u["completion_tokens"] <= 6
            and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        )
        ws.send(json.dumps({"type": "message", "content": "and then?", "temperature": 0, "max_tokens": 3}))
        _, done2 = until_done(ws)
        # the second prompt holds the first turn (user + reply) too
        assert done2["usage"]["prompt_tokens"] > u["prompt_tokens"] + u["completion_tokens"]
        ws.send(json.dumps({"type": "reset"}))
        assert recv(ws) == {"type": "reset"}
        ws.send(json.dumps({"type": "message", "content": "hello there", "temperature": 0, "max_tokens": 6}))
        again, done3 = until_done(ws)
        assert again == text and done3["usage"]["prompt_tokens"] == u["prompt_tokens"]  # history cleared


def test_errors_keep_the_session_open(base_url):
    with connect(ws_url(base_url)) as ws:
        for frame, param in [
            ("not json", None),
            (json.dumps({"type": "dance"}), "type"),
            (json.dumps({"type": "message", "content": ""}), "content"),
            (json.dumps({"type": "message", "content": "hi", "temperature": "hot"}), "temperature"),
            (json.dumps({"type": "message", "content": "hi", "top_p": 0}), "top_p"),
            (json.dumps({"type": "message", "content": "hello " * 300}), None),
        ]:
            ws.send(frame)
            m = recv(ws)
            assert m["type"] == "error" and m["error"]["code"] == 400 and m["error"]["message"], m
            if param:
                assert m["error"]["param"] == param
        ws.send(json.dumps({"type": "ping"}))
        assert recv(ws) == {"type": "pong"}


def test_cancel_stops_generation(run_dir):
    engine = SlowEngine(make_engine(run_dir, max_batch=2))
    app = create_app(engine)
    tok = app.state.server.tok
    bias = {str(tok.end_id): -100, str(tok.eos_id): -100}
    with live(app) as url, connect(ws_url(url)) as ws:
        ws.send(json.dumps({"type": "message", "content": "hi", "max_tokens": 100, "logit_bias": bias}))
        assert recv(ws)["type"] == "delta"
        ws.send(json.dumps({"type": "message", "content": "again"}))  # one generation at a time
        while (m := recv(ws))["type"] == "delta":
            pass
        assert m["type"] == "error" and m["error"]["code"] == 409
        ws.send(json.dumps({"type": "cancel"}))
        _, done = until_done(ws)
        assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] < 100
        assert wait_idle(app, 5) and engine.running == {}
        # the session goes on after a cancel
        ws.send(json.dumps({"type": "message", "content": "hi", "max_tokens": 2}))
        assert until_done(ws)[1]["usage"]["completion_tokens"] <= 2


def test_closing_the_socket_aborts(run_dir):
    engine = SlowEngine(make_engine(run_dir, max_batch=2))
    app = create_app(engine)
    tok = app.state.server.tok
    bias = {str(tok.end_id): -100, str(tok.eos_id): -100}
    with live(app) as url:
        with connect(ws_url(url)) as ws:
            ws.send(json.dumps({"type": "message", "content": "hi", "max_tokens": 100, "logit_bias": bias}))
            assert recv(ws)["type"] == "delta"
        assert wait_idle(app, 5) and engine.running == {} and engine.stats["decode_tokens"] < 60


def test_ws_needs_the_key(run_dir):
    app = create_app(run_dir, api_keys=["sk-ws"])
    with live(app) as url:
        with pytest.raises(InvalidStatus):
            with connect(ws_url(url)) as ws:
                ws.recv(timeout=5)
        with connect(ws_url(url) + "?api_key=sk-ws") as ws:  # browsers cannot set headers on a WebSocket
            ws.send(json.dumps({"type": "ping"}))
            assert recv(ws) == {"type": "pong"}
        with connect(ws_url(url), additional_headers={"Authorization": "Bearer sk-ws"}) as ws:
            ws.send(json.dumps({"type": "ping"}))
            assert recv(ws) == {"type": "pong"}
