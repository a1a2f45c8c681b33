"""API keys: loading, constant-time checking, and which paths stay public.

Keys come from `Authorization: Bearer <key>` or `X-Api-Key: <key>` (llama.cpp accepts both; the openai
SDK sends the first). Browsers cannot set headers on a WebSocket, so the WS endpoint also reads
`?api_key=`. Every key is compared with `hmac.compare_digest`, and all of them are checked (no early
exit), so response time says nothing about how much of a key matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs

# the health probe and the web page (which then asks for a key) work without one, as in llama.cpp
PUBLIC_PATHS = {"/health", "/v1/health", "/", "/favicon.ico"}
PUBLIC_PREFIXES = ("/static/",)


def load_keys(keys: Iterable[str] | None = None, keys_file: str | Path | None = None) -> list[str]:
    """Keys from the command line plus a file (one per line; blank lines and # comments skipped)."""
    out = [k.strip() for k in (keys or []) if k and k.strip()]
    if keys_file is not None:
        path = Path(keys_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the API keys file ({e.strerror})") from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if any(c.isspace() for c in line):
                raise ValueError(f"{path}:{n}: an API key may not contain whitespace")
            out.append(line)
        if not out:
            raise ValueError(f"{path}: holds no API keys")
    return out


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def presented_key(scope: dict) -> str | None:
    """The key a request carries, from its headers (or the query string, for WebSockets)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if "x-api-key" in headers:
        return headers["x-api-key"].strip()
    if scope.get("type") == "websocket":
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if qs.get("api_key"):
            return qs["api_key"][0]
    return None


def key_ok(presented: str | None, keys: list[str]) -> bool:
    if presented is None:
        return False
    p = presented.encode("utf-8", "replace")
    ok = False
    for k in keys:  # no short-circuit: every key is compared every time
        ok |= hmac.compare_digest(p, k.encode("utf-8"))
    return ok
