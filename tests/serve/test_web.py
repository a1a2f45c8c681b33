"""The web chat page, end to end: the real server (create_app on a tiny random run, uvicorn in a thread on
127.0.0.1) and headless Chromium driven by Playwright. Load the page, send a message, watch text stream in,
continue the stored conversation, press stop mid-stream, start a new chat, persist settings, and prove
that HTML in a model reply renders as text.

Needs Debian's `chromium` at /usr/bin/chromium and the `playwright` Python package; nothing is installed
at run time, and the module skips (saying which is missing) without them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to run the web test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the `playwright` Python package is not installed"
)
pytest.importorskip("uvicorn", reason="uvicorn is not installed")

TEXT = (
    "Hello there! How are you today? I am fine, thanks for asking. "
    "What are you reading? A book about the sea, and the ships that sail on it. "
    "Do you like the sea? Yes, very much: the waves, the wind, the gulls. "
) * 4
MAX_LEN = 1024
TIMEOUT_MS = 30_000


# ----------------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder the way `chinwag serve` finds one: config.json, model.safetensors, tokenizer.json."""
    import torch

    from chinwag.model.io import save_model
    from chinwag.model.model import ChinwagLM
    from chinwag.model.presets import get_config
    from chinwag.tokenizer.train import train_bpe

    folder = tmp_path_factory.mktemp("web") / "tiny-run"
    tok = train_bpe([TEXT], vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    model = ChinwagLM(get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=MAX_LEN)).eval()
    save_model(model, folder)
    tok.save(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """The real app, served by uvicorn in a thread. Yields (base_url, app, store)."""
    import torch
    import uvicorn

    from chinwag.serve.app import create_app
    from chinwag.serve.store import ConversationStore

    store = ConversationStore(tmp_path_factory.mktemp("db") / "conversations.db")
    app = create_app(run_dir, store=store, threads=1)
    # A random model says <|end|> about once per 150 tokens; forbid it (and <|eos|>) at the lm_head so
    # a long reply really is long and "stop" has something to interrupt. Everything else is untouched.
    srv = app.state.server
    stop_ids = torch.tensor([srv.tok.end_id, srv.tok.eos_id])
    hook = srv.engine.model.lm_head.register_forward_hook(
        lambda m, i, out: out.index_fill(-1, stop_ids, -1e4)
    )
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app, store
    uv.should_exit = True
    thread.join(15)
    hook.remove()
    store.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data-dir: no state leaks in
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            # The page's CSP forbids eval, which Playwright's wait_for_function uses. Bypassing it here
            # also means the injection test proves the renderer itself safe, not merely the CSP.
            bypass_csp=True,
        )
        ctx.set_default_timeout(TIMEOUT_MS)
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context, server):
    url, _, _ = server
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(url + "/")
    page.evaluate("localStorage.clear(); sessionStorage.clear()")
    page.reload()
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    page.close()
    assert not errors, f"page errors or dialogs: {errors}"


# ----------------------------------------------------------------------------- helpers


def set_max_tokens(page, n: int) -> None:
    page.click("#settings-toggle")
    page.fill("#max-tokens", str(n))
    page.dispatch_event("#max-tokens", "change")
    page.click("#settings-toggle")


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def last_reply(page):
    return page.locator(".msg.assistant").last


def watch_lengths(page) -> None:
    """Record every length the newest reply's text passes through (proof it streamed, not landed whole)."""
    page.evaluate(
        """() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const boxes = document.querySelectorAll('.msg.assistant .content');
            if (boxes.length) window.__lengths.push(boxes[boxes.length - 1].textContent.length);
        }).observe(document.querySelector('#messages'),
                   {childList: true, subtree: true, characterData: true});
    }"""
    )


def inflight(url: str) -> int:
    import httpx

    text = httpx.get(url + "/metrics", timeout=5).text
    return int(float(re.search(r"^chinwag_inflight_sequences (\S+)$", text, re.M).group(1)))


# ----------------------------------------------------------------------------- tests


def test_send_streams_reply_and_store_records_the_conversation(page, server):
    url, app, store = server
    before = len(store)
    set_max_tokens(page, 96)
    watch_lengths(page)
    send(page, "hello, how are you?")
    page.wait_for_selector(".msg.assistant[data-finish]")
    reply = last_reply(page)
    assert reply.get_attribute("data-finish") == "length"  # ran to max tokens: <|end|> is forbidden
    raw = reply.get_attribute("data-raw")
    assert raw and len(raw) > 20
    lengths = [n for n in page.evaluate("window.__lengths") if n > 0]
    assert len(set(lengths)) >= 3, f"reply did not stream in pieces: {lengths}"
    assert re.search(r"stopped at max tokens .* 96 tokens", page.inner_text("#status"))
    assert page.is_visible("#send") and page.is_hidden("#stop")

    # The server stored the turn under the id the page now holds, with the page's sampling settings.
    cid = page.evaluate("window.chinwag.state.conversationId")
    assert len(store) == before + 1
    conv = store.get(cid)
    assert [(m["role"], m["content"]) for m in conv["messages"]] == [
        ("user", "hello, how are you?"),
        ("assistant", raw),
    ]
    meta = conv["messages"][1]
    assert meta["params"]["max_tokens"] == 96 and meta["completion_tokens"] == 96 and meta["latency_ms"] > 0

    # A second message continues the same stored conversation (only the new turn is appended).
    send(page, "tell me more")
    page.wait_for_function("document.querySelectorAll('.msg.assistant[data-finish]').length === 2")
    assert page.evaluate("window.chinwag.state.conversationId") == cid
    assert len(store) == before + 1
    assert [m["role"] for m in store.get(cid)["messages"]] == ["user", "assistant", "user", "assistant"]

    # New chat clears the view; the next message starts a new stored conversation.
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.is_visible("#empty")
    send(page, "a fresh start")
    page.wait_for_selector(".msg.assistant[data-finish]")
    assert page.evaluate("window.chinwag.state.conversationId") not in (None, cid)
    assert len(store) == before + 2


def test_stop_interrupts_a_long_reply_and_frees_the_server(page, server):
    url, _, _ = server
    set_max_tokens(page, MAX_LEN - 64)  # far longer than the test waits: only stop can end it
    send(page, "write me a very long story")
    page.wait_for_selector("#stop:visible")
    page.wait_for_function(
        "(() => { const b = document.querySelectorAll('.msg.assistant .content'); "
        "return b.length && b[b.length - 1].textContent.length > 10; })()"
    )
    page.click("#stop")
    reply = last_reply(page)
    page.wait_for_selector(".msg.assistant[data-finish]")
    assert reply.get_attribute("data-finish") == "aborted"
    assert reply.locator(".note").inner_text() == "stopped"
    assert page.inner_text("#status") == "stopped"
    assert page.is_visible("#send") and page.is_hidden("#stop")
    n_chars = len(reply.locator(".content").inner_text())
    assert n_chars > 10
    # The stopped text stays (and joins the history); nothing more arrives.
    page.wait_for_timeout(500)
    assert len(reply.locator(".content").inner_text()) == n_chars
    assert page.evaluate("window.chinwag.state.messages.map(m => m.role)") == ["user", "assistant"]
    # Closing the stream cancelled the generation on the server: its sequence is gone.
    deadline = time.monotonic() + 15
    while inflight(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inflight(url) == 0


def test_model_html_renders_as_text(page):
    evil = (
        'Hi <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> '
        "<b>not bold</b> **bold** *it* `<i>code</i>`\n\n"
        "```html\n<script>window.__pwned=3</script>\n```\n\n"
        "- [bad](javascript:window.__pwned=4)\n"
        "- [good](https://example.com/a?b=1)\n"
        '- <a href="javascript:alert(1)">raw anchor</a>'
    )
    page.evaluate("text => window.chinwag.showReply(text)", evil)
    content = last_reply(page).locator(".content")
    page.wait_for_timeout(300)  # give an onerror handler every chance to fire
    assert page.evaluate("window.__pwned") is None
    # No element the reply asked for exists; its markup is visible as the characters it is.
    for tag in ("img", "script", "b", "i"):
        assert content.locator(tag).count() == 0, tag
    text = content.inner_text()
    assert '<img src=x onerror="window.__pwned=1">' in text
    assert "<script>window.__pwned=2</script>" in text and "<b>not bold</b>" in text
    assert content.locator("strong").inner_text() == "bold"
    assert content.locator("em").inner_text() == "it"
    assert content.locator("p code").inner_text() == "<i>code</i>"
    assert content.locator("pre code").inner_text() == "<script>window.__pwned=3</script>"
    # Only the http(s) link became an anchor.
    links = content.locator("a")
    assert links.count() == 1
    assert links.get_attribute("href") == "https://example.com/a?b=1"
    assert links.get_attribute("rel") == "noopener noreferrer nofollow"
    assert "[bad](javascript:window.__pwned=4)" in text
    assert content.locator("li").count() == 3


def test_settings_persist_and_reach_the_request(page, server):
    page.click("#settings-toggle")
    page.fill("#temperature", "0.3")
    page.fill("#max-tokens", "12")
    page.fill("#system-prompt", "You are terse.")
    page.fill("#api-key", "sk-test-123")
    for sel in ("#temperature", "#max-tokens", "#system-prompt", "#api-key"):
        page.dispatch_event(sel, "change")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as req_info:
        send(page, "hi")
    req = req_info.value
    body = req.post_data_json
    assert req.headers["authorization"] == "Bearer sk-test-123"
    assert body["temperature"] == 0.3 and body["max_tokens"] == 12 and body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]
    page.wait_for_selector(".msg.assistant[data-finish='length']")
    page.reload()
    assert page.input_value("#temperature") == "0.3"
    assert page.input_value("#max-tokens") == "12"
    assert page.input_value("#system-prompt") == "You are terse."
    assert page.input_value("#api-key") == "sk-test-123"  # sessionStorage: survives a reload, not the tab
