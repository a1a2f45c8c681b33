"""Every bad input is a 4xx in OpenAI's error shape (never a 500); limits, auth, 429 and disconnects."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from chinwag.serve.app import create_app
from tests.serve.conftest import live, make_engine, wait_idle

MSG = [{"role": "user", "content": "hello"}]


def post(url, body=None, content=None, **kw):
    if content is not None:
        kw["headers"] = {"content-type": "application/json", **kw.get("headers", {})}
        return httpx.post(url + "/v1/chat/completions", content=content, timeout=30, **kw)
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30, **kw)


def assert_error(r, status, typ="invalid_request_error", param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["type"] == typ and err["code"] == status and err["message"]
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    "content",
    ['{"messages": [', "not json", "", '{"messages": [{"role": "user", "content": "hi"}]', "\xff\xfe"],
)
def test_malformed_json_is_400(base_url, content):
    assert_error(post(base_url, content=content.encode("latin-1")), 400)


@pytest.mark.parametrize(
    "body, param",
    [
        ([], None),
        ("just a string", None),
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}], "max_tokens": 2}, "messages.0.content"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": MSG, "temperature": "hot"}, "temperature"),
        ({"messages": MSG, "max_tokens": "10"}, "max_tokens"),
        ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"messages": MSG, "stream": "yes"}, "stream"),
        ({"messages": MSG, "n": 0}, "n"),
        ({"messages": MSG, "stop": 5}, "stop"),
        ({"messages": MSG, "seed": 1.5}, "seed"),
        ({"messages": MSG, "logprobs": "true"}, "logprobs"),
        ({"messages": MSG, "stream_options": {"include_usage": "no"}}, "stream_options.include_usage"),
    ],
)
def test_wrong_types_are_400_not_422(base_url, body, param):
    assert_error(post(base_url, body), 400, param=param)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true (as llama.cpp and OpenAI)
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
        ({"stop": [""]}, "stop"),
        ({"n": 1000}, "n"),
    ],
)
def test_bad_sampling_values_are_400(base_url, extra, param):
    assert_error(post(base_url, {"messages": MSG, **extra}), 400, param=param)


def test_nan_and_infinity_are_400(base_url):
    body = '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    assert_error(post(base_url, content=body.encode()), 400)
    body = '{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}'
    assert_error(post(base_url, content=body.encode()), 400)


def test_empty_messages_and_bad_content(base_url):
    err = assert_error(post(base_url, {"messages": []}), 400, param="messages")
    assert "non-empty" in err["message"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert_error(post(base_url, {"messages": image}), 400, param="messages.0.content")
    late_system = MSG + [{"role": "system", "content": "x"}]
    assert_error(post(base_url, {"messages": late_system}), 400, param="messages")
    # text content parts are joined; developer is an alias of system; unknown fields are ignored
    parts = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]},
    ]
    r = post(base_url, {"messages": parts, "max_tokens": 2, "user": "me", "tools_whatever": 1})
    assert r.status_code == 200, r.text


def test_context_length_exceeded(base_url):
    long = [{"role": "user", "content": "hello there " * 200}]
    err = assert_error(post(base_url, {"messages": long}), 400, typ="exceed_context_size_error")
    assert err["n_ctx"] == 128 and err["n_prompt_tokens"] > 128
    r = httpx.post(base_url + "/v1/completions", json={"prompt": "hello " * 300}, timeout=30)
    assert_error(r, 400, typ="exceed_context_size_error")
    # a long max_tokens is clamped to the context (llama.cpp's behaviour), not an error
    r = post(base_url, {"messages": MSG, "max_tokens": 10_000, "temperature": 0, "stop": "e"})
    assert r.status_code == 200


def test_any_content_type_is_read_as_json(base_url):
    # `curl -d '{...}'` sends application/x-www-form-urlencoded; llama.cpp reads it as JSON, so do we
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    r = httpx.post(
        base_url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text


def test_completions_errors(base_url):
    url = base_url + "/v1/completions"
    assert_error(httpx.post(url, json={}), 400, param="prompt")
    assert_error(httpx.post(url, json={"prompt": []}), 400, param="prompt")
    assert_error(httpx.post(url, json={"prompt": "x", "logprobs": True}), 400, param="logprobs")


def test_unknown_paths_and_methods(base_url):
    assert_error(httpx.get(base_url + "/v1/nope"), 404, "not_found_error")
    assert_error(httpx.post(base_url + "/v2/chat/completions", json={}), 404, "not_found_error")
    r = httpx.get(base_url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_openai_client_sees_errors(base_url):
    c = openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="x", messages=[], max_tokens=2)
    assert e.value.status_code == 400


def test_body_size_cap(run_dir):
    app = create_app(run_dir, max_body_bytes=2000)
    with live(app) as url:
        big = [{"role": "user", "content": "x" * 5000}]
        assert_error(post(url, {"messages": big}), 413)

        def chunks():  # no Content-Length: the cap is enforced while reading
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        assert_error(httpx.post(url + "/v1/chat/completions", content=chunks(), timeout=30), 413)
        assert post(url, {"messages": MSG, "max_tokens": 2}).status_code == 200


def test_api_keys(run_dir):
    app = create_app(run_dir, api_keys=["sk-one", "sk-two"])
    with live(app) as url:
        body = {"messages": MSG, "max_tokens": 2}
        assert_error(post(url, body), 401, "authentication_error")
        assert_error(
            post(url, body, headers={"Authorization": "Bearer sk-wrong"}), 401, "authentication_error"
        )
        assert_error(httpx.get(url + "/v1/models"), 401, "authentication_error")
        assert_error(httpx.get(url + "/metrics"), 401, "authentication_error")
        assert post(url, body, headers={"Authorization": "Bearer sk-two"}).status_code == 200
        assert post(url, body, headers={"X-Api-Key": "sk-one"}).status_code == 200
        assert httpx.get(url + "/health").status_code == 200  # public, as in llama.cpp
        ok = openai.OpenAI(base_url=url + "/v1", api_key="sk-one", max_retries=0)
        assert ok.models.list().data[0].id == "tinychat"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="sk-nope", max_retries=0).models.list()


def test_load_keys_file(tmp_path):
    from chinwag.serve.auth import key_ok, load_keys

    f = tmp_path / "keys.txt"
    f.write_text("# team keys\nsk-a\n\n sk-b \n")
    keys = load_keys(["sk-c"], f)
    assert keys == ["sk-c", "sk-a", "sk-b"]
    assert key_ok("sk-b", keys) and not key_ok("sk-", keys) and not key_ok(None, keys)
    f.write_text("sk a\n")
    with pytest.raises(ValueError, match="keys.txt:1"):
        load_keys(None, f)


def test_cors_off_by_default_and_opt_in(base_url, run_dir):
    h = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(base_url + "/v1/chat/completions", headers=h)
    assert "access-control-allow-origin" not in r.headers
    app = create_app(run_dir, cors=["http://ok.example"], api_keys=["k"])
    with live(app) as url:
        h["Origin"] = "http://ok.example"
        r = httpx.options(url + "/v1/chat/completions", headers=h)  # preflight needs no key
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"


# ---- queueing and cancellation (a deliberately slow engine makes the timing deterministic) ---------------


class SlowEngine:
    """Wraps a real Engine; every step sleeps, so a request stays in flight long enough to poke at."""

    def __init__(self, engine, delay=0.02):
        self._e, self.delay = engine, delay

    def __getattr__(self, name):
        return getattr(self._e, name)

    def step(self):
        time.sleep(self.delay)
        return self._e.step()


@pytest.fixture()
def slow_app(run_dir):
    engine = SlowEngine(make_engine(run_dir, max_batch=1))
    app = create_app(engine, max_queue=0)
    yield app, engine


def long_body(app, **kw):
    tok = app.state.server.tok
    # ban the stop tokens: the request then always runs to max_tokens
    bias = {str(tok.end_id): -100, str(tok.eos_id): -100}
    return {"messages": MSG, "max_tokens": 100, "logit_bias": bias, **kw}


def test_queue_full_is_429_with_retry_after(slow_app):
    app, engine = slow_app
    with live(app) as url:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=long_body(app, stream=True), timeout=30
        ) as r:
            it = r.iter_lines()
            next(it)  # the role chunk: the request holds the only slot
            busy = post(url, {"messages": MSG, "max_tokens": 2})
            err = assert_error(busy, 429, "rate_limit_error")
            assert busy.headers["retry-after"] == "1" and "busy" in err["message"]
        # leaving the stream early cancels it, and the slot is free again
        assert wait_idle(app) and engine.running == {}
        assert post(url, {"messages": MSG, "max_tokens": 2}).status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert "chinwag_rejected_requests_total 1" in metrics


def test_disconnect_cancels_streaming(slow_app):
    app, engine = slow_app
    with live(app) as url:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=long_body(app, stream=True), timeout=30
        ) as r:
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
        assert wait_idle(app, 5)
        assert engine.running == {} and not engine.waiting and engine.cache.num_seqs() == 0
        assert engine.stats["decode_tokens"] < 60  # it stopped well before max_tokens=100


def test_disconnect_cancels_non_streaming(slow_app):
    app, engine = slow_app
    with live(app) as url:
        done = threading.Event()

        def impatient():
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(
                    url + "/v1/chat/completions", json=long_body(app), timeout=httpx.Timeout(30, read=0.4)
                )
            done.set()

        t = threading.Thread(target=impatient)
        t.start()
        t.join(10)
        assert done.is_set()
        assert wait_idle(app, 5)
        assert engine.running == {} and engine.cache.num_seqs() == 0
        assert engine.stats["decode_tokens"] < 60
