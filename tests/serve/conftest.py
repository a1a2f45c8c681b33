"""A tiny random model run folder (session-wide) and live uvicorn servers on 127.0.0.1 for the API tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import torch

from chinwag.generate.engine import Engine
from chinwag.model.io import save_model
from chinwag.model.model import ChinwagLM
from chinwag.model.presets import get_config
from chinwag.serve.app import create_app
from chinwag.tokenizer.train import train_bpe

TEXT = (
    "hello there! how are you doing today? i am fine, thanks. what did you do this weekend? "
    "we went hiking by the lake and saw a heron. the weather was lovely and we had a picnic.\n"
) * 20
CTX = 128  # a short context keeps every generation (and the fuzz run) bounded


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = train_bpe([TEXT], vocab_size=300, show_progress=False)
    cfg = get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=CTX, init_std=0.2)
    folder = tmp_path_factory.mktemp("run") / "tinychat"
    folder.mkdir()
    save_model(ChinwagLM(cfg).eval(), folder)
    tok.save(folder / "tokenizer.json")
    return folder


@contextlib.contextmanager
def live(app):
    """Run `app` under uvicorn in a thread; yields its base URL ("http://127.0.0.1:PORT")."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t0 = time.time()
    while not server.started:
        if not th.is_alive() or time.time() - t0 > 20:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(10)


@pytest.fixture(scope="session")
def app(run_dir):
    return create_app(run_dir, model_name="tiny-test", max_batch=8, max_queue=16)


@pytest.fixture(scope="session")
def base_url(app):
    with live(app) as url:
        yield url


@pytest.fixture()
def engine_of():
    """The Engine behind an app (to check that nothing is left running)."""
    return lambda app: app.state.server.engine


def wait_idle(app, timeout: float = 10.0) -> bool:
    runner = app.state.server.runner
    t0 = time.time()
    while time.time() - t0 < timeout:
        if runner.idle():
            return True
        time.sleep(0.02)
    return False


def make_engine(run_dir, **kw) -> Engine:
    from chinwag.model.io import load_model
    from chinwag.tokenizer import Tokenizer

    return Engine(load_model(run_dir), Tokenizer.load(run_dir / "tokenizer.json"), **kw)
