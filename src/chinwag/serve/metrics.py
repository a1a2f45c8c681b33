"""Prometheus text exposition (format 0.0.4), written by hand: counters, gauges and histograms.

No client library: a server this size needs a dozen series, and the format is a few lines of text.
All mutation happens under one lock because handlers run on the event loop while gauges are read
from the engine thread's state.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _labels(d: dict) -> str:
    if not d:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in d.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if x != int(x) else str(int(x))


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.count += 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple, int] = defaultdict(int)  # (endpoint, status) -> n
        self.latency: dict[str, Histogram] = {}  # endpoint -> seconds
        self.ttft: dict[str, Histogram] = {}  # endpoint -> seconds to the first token
        self.tokens_in = 0
        self.tokens_out = 0
        self.rejected = 0  # 429s

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, Histogram()).observe(seconds)
            if status == 429:
                self.rejected += 1

    def first_token(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            self.ttft.setdefault(endpoint, Histogram()).observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.tokens_in += prompt
            self.tokens_out += completion

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; `gauges` maps name -> (help, value) for values read at scrape time."""
        out: list[str] = []

        def family(name, kind, help_):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        def hist(name, help_, hs: dict[str, Histogram]):
            family(name, "histogram", help_)
            for ep, h in sorted(hs.items()):
                for b, c in zip(h.buckets, h.counts, strict=True):
                    out.append(f"{name}_bucket{_labels({'endpoint': ep, 'le': _num(b)})} {c}")
                out.append(f"{name}_bucket{_labels({'endpoint': ep, 'le': '+Inf'})} {h.count}")
                out.append(f"{name}_sum{_labels({'endpoint': ep})} {_num(h.sum)}")
                out.append(f"{name}_count{_labels({'endpoint': ep})} {h.count}")

        with self._lock:
            family("chinwag_requests_total", "counter", "HTTP/WebSocket requests by endpoint and status.")
            for (ep, st), n in sorted(self.requests.items()):
                out.append(f"chinwag_requests_total{_labels({'endpoint': ep, 'status': st})} {n}")
            family("chinwag_prompt_tokens_total", "counter", "Prompt tokens processed.")
            out.append(f"chinwag_prompt_tokens_total {self.tokens_in}")
            family("chinwag_completion_tokens_total", "counter", "Completion tokens generated.")
            out.append(f"chinwag_completion_tokens_total {self.tokens_out}")
            family("chinwag_rejected_requests_total", "counter", "Requests refused with 429 (queue full).")
            out.append(f"chinwag_rejected_requests_total {self.rejected}")
            hist("chinwag_request_duration_seconds", "Request latency (whole stream for SSE).", self.latency)
            hist("chinwag_time_to_first_token_seconds", "Time from request to the first token.", self.ttft)
        for name, (help_, value) in gauges.items():
            family(name, "gauge", help_)
            out.append(f"{name} {_num(value)}")
        return "\n".join(out) + "\n"
