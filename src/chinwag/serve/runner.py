"""The engine thread: one background thread owns the `Engine` and calls `step()` while there is work.

The engine is not thread-safe, so nothing else ever touches it: the asyncio side sends commands
(add / abort) through a thread-safe inbox, and every delta goes back through the request's `sink`
(a callable; the server's sink hands it to the event loop with `loop.call_soon_threadsafe`). Requests
from every connection share the engine's continuous batch, which is the whole point of a server.

Admission control lives here too: at most `max_batch + max_queue` sequences may be in flight; beyond
that `submit` raises `QueueFull` and the server answers 429 with Retry-After.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("chinwag.serve")


class QueueFull(Exception):
    pass


class EngineError(Exception):
    """Delivered to a sink when its request could not run (bad input the engine caught, or an engine bug)."""


class EngineRunner:
    def __init__(self, engine, max_queue: int = 64):
        self.engine = engine
        self.max_queue = max_queue
        self.capacity = engine.max_batch + max_queue
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[int, Callable] = {}  # engine thread only
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._inflight = 0  # sequences submitted and not yet finished/aborted (guarded by _lock)
        self._live: set[int] = set()  # ids counted in _inflight (guarded by _lock)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.steps = 0

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="chinwag-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- the asyncio side (any thread) -----------------------------------------------------------------
    def submit(self, prompts: Sequence[Sequence[int]], params: Sequence, sink: Callable) -> list[int]:
        """Queue len(prompts) sequences (one per choice) atomically; `sink(rid, item)` receives each
        Delta (or an EngineError) from the engine thread. Raises QueueFull if they do not all fit."""
        n = len(prompts)
        with self._lock:
            if self._inflight + n > self.capacity:
                raise QueueFull(f"{self._inflight} sequences in flight; the server holds {self.capacity}")
            self._inflight += n
            rids = [next(self._ids) for _ in range(n)]
            self._live.update(rids)
        for rid, p, sp in zip(rids, prompts, params, strict=True):
            self._inbox.put(("add", rid, list(p), sp, sink))
        return rids

    def abort(self, rids: Sequence[int]) -> None:
        """Cancel requests (a client went away); their cache is freed on the engine thread."""
        for rid in rids:
            if self._release(rid):
                self._inbox.put(("abort", rid))

    def _release(self, rid: int) -> bool:
        with self._lock:
            if rid in self._live:
                self._live.discard(rid)
                self._inflight -= 1
                return True
            return False

    @property
    def inflight(self) -> int:
        return self._inflight

    def queue_depth(self) -> int:
        return len(self.engine.waiting)

    def active(self) -> int:
        return len(self.engine.running)

    def idle(self) -> bool:
        return self._inflight == 0 and not self.engine.has_work()

    # ---- the engine thread ------------------------------------------------------------------------------
    def _handle(self, cmd) -> None:
        if cmd[0] == "add":
            _, rid, prompt, params, sink = cmd
            if rid not in self._live:  # aborted before it reached the engine
                return
            try:
                self.engine.add_request(prompt, params, request_id=rid)
                self._sinks[rid] = sink
            except ValueError as e:  # the server validates first; this is a last line of defence
                self._release(rid)
                self._deliver(sink, rid, EngineError(str(e)))
        elif cmd[0] == "abort":
            self._sinks.pop(cmd[1], None)
            self.engine.abort(cmd[1])

    def _deliver(self, sink, rid, item) -> None:
        try:
            sink(rid, item)
        except Exception:  # a sink whose loop is gone must not kill the engine thread
            log.exception("dropping output for request %d", rid)

    def _loop(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            try:  # block while idle, otherwise just drain what arrived since the last step
                cmd = self._inbox.get(timeout=0.5) if not eng.has_work() else self._inbox.get_nowait()
                self._handle(cmd)
                while True:
                    self._handle(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if not eng.has_work():
                continue
            try:
                t0 = time.perf_counter()
                events = eng.step()
                self.steps += 1
                if time.perf_counter() - t0 > 5:
                    log.warning("one engine step took %.1f s", time.perf_counter() - t0)
            except Exception as e:  # an engine bug: fail every request in flight, keep serving
                log.exception("engine step failed")
                for rid in list(eng.running) + [r.id for r in eng.waiting]:
                    eng.abort(rid)
                    sink = self._sinks.pop(rid, None)
                    self._release(rid)
                    if sink is not None:
                        self._deliver(sink, rid, EngineError(f"internal engine error: {type(e).__name__}"))
                continue
            for d in events:
                sink = self._sinks.get(d.request_id)
                if d.finished:
                    self._sinks.pop(d.request_id, None)
                    self._release(d.request_id)
                if sink is not None:
                    self._deliver(sink, d.request_id, d)
