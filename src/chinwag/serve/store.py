"""The conversation store: every chat completion the server answers, persisted in SQLite.

One file, stdlib `sqlite3`, WAL mode (readers such as `chinwag conversations list` never block the
server's writes). The schema is versioned with `PRAGMA user_version` and a list of migrations applied
in order, each in its own transaction, so an old database upgrades itself on open and a database from a
newer chinwag is refused rather than misread.

Stateless chat clients (OpenAI's API, the web page) resend the whole history every turn. `record`
therefore stores only what is new: when the conversation already holds a prefix of `messages`, only the
rest plus the reply are appended. A history that diverges from what is stored (the user edited an
earlier turn) becomes a new conversation, so nothing stored is ever rewritten.

`export_jsonl` writes the data layer's `messages` JSONL, so served conversations become training data:
`chinwag data prepare conversations.jsonl ...`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from chinwag.utils import atomic_path

DB_FILENAME = "conversations.sqlite"  # `chinwag serve RUN` keeps its store at RUN/conversations.sqlite
ROLES = ("system", "user", "assistant")
MAX_ID_LEN = 128
TITLE_LEN = 60

# Migration i (0-based) takes the database from user_version i to i + 1. Append, never edit: a database
# in the field has already run the old ones.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE conversations (
        id          TEXT PRIMARY KEY,
        title       TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE messages (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id    TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        seq                INTEGER NOT NULL,
        role               TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content            TEXT NOT NULL,
        model              TEXT,
        params             TEXT,
        prompt_tokens      INTEGER,
        completion_tokens  INTEGER,
        latency_ms         REAL,
        created_at         REAL NOT NULL,
        UNIQUE (conversation_id, seq)
    );
    CREATE INDEX conversations_by_update ON conversations(updated_at DESC);
    """,
]


class StoreError(ValueError):
    """Bad input to the store, or a database it cannot use. The message is fit for the CLI as is."""


class ConversationStore:
    """A thread-safe SQLite conversation log. One connection guarded by a lock: SQLite serialises writers
    anyway, and a store call is microseconds next to a generated reply."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly our block.
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: not a usable conversation database ({e})") from None

    # ------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this chinwag knows "
                    f"({len(MIGRATIONS)}); upgrade chinwag"
                )
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                # executescript would COMMIT on its own; run statement by statement inside one transaction
                # so a failed migration leaves the database at the previous version, untouched.
                with self._transaction():
                    for stmt in _statements(script):
                        self._db.execute(stmt)
                    self._db.execute(f"PRAGMA user_version = {target}")

    class _Txn:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self):
            # IMMEDIATE takes the write lock up front: no read-then-upgrade deadlock between processes.
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, *rest):
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> ConversationStore._Txn:
        return self._Txn(self._db)

    # ------------------------------------------------------------------------ writing

    def record(
        self,
        conversation_id: str | None,
        messages: list[dict],
        reply: str,
        model: str,
        params: dict | None = None,
        usage: dict | None = None,
        latency_ms: float | None = None,
    ) -> str:
        """Store one chat turn: the request's `messages` and the assistant's `reply`. Returns the id.

        `conversation_id=None` starts a new conversation. An existing id whose stored messages are a prefix
        of `messages` gets only the new ones appended; one whose history diverges is forked into a new
        conversation (the returned id differs). An unknown id is created as given.
        """
        msgs = _clean_messages(messages)
        if not isinstance(reply, str):
            raise StoreError(f"reply must be a string, got {type(reply).__name__}")
        if conversation_id is not None:
            _check_id(conversation_id)
        usage = usage or {}
        params_json = json.dumps(params or {}, sort_keys=True, default=str)
        now = time.time()
        with self._lock, self._transaction():
            cid = conversation_id
            stored = self._stored_messages(cid) if cid is not None else None
            if stored is not None and stored != msgs[: len(stored)]:
                cid, stored = None, None  # diverged history: fork
            if stored is None:
                cid = cid or uuid.uuid4().hex
                title = _title(msgs, reply)
                self._db.execute(
                    "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (cid, title, now, now),
                )
                stored = []
            else:
                self._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
            seq = len(stored)
            for m in msgs[len(stored) :]:
                self._insert(cid, seq, m["role"], m["content"], now)
                seq += 1
            self._insert(
                cid,
                seq,
                "assistant",
                reply,
                now,
                model=model,
                params=params_json,
                prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
                completion_tokens=_int_or_none(usage.get("completion_tokens")),
                latency_ms=None if latency_ms is None else float(latency_ms),
            )
        return cid

    def _insert(self, cid: str, seq: int, role: str, content: str, now: float, **extra: Any) -> None:
        self._db.execute(
            "INSERT INTO messages (conversation_id, seq, role, content, model, params, prompt_tokens, "
            "completion_tokens, latency_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cid,
                seq,
                role,
                content,
                extra.get("model"),
                extra.get("params"),
                extra.get("prompt_tokens"),
                extra.get("completion_tokens"),
                extra.get("latency_ms"),
                now,
            ),
        )

    def _stored_messages(self, cid: str) -> list[dict] | None:
        if self._db.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone() is None:
            return None
        rows = self._db.execute(
            "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY seq", (cid,)
        ).fetchall()
        return [{"role": r["role"], "content": r["content"]} for r in rows]

    def delete(self, conversation_id: str) -> bool:
        """Remove a conversation and its messages. Returns whether it existed."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            cur = self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return cur.rowcount > 0

    # ------------------------------------------------------------------------ reading

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]

    def list(self, limit: int = 20, offset: int = 0) -> list[dict]:
        """Conversations, most recently updated first: id, title, timestamps, message count, last model,
        and total tokens."""
        if limit < 0 or offset < 0:
            raise StoreError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
        with self._lock:
            rows = self._db.execute(
                """
                SELECT c.id, c.title, c.created_at, c.updated_at,
                       COUNT(m.id) AS n_messages,
                       COALESCE(SUM(m.prompt_tokens), 0) AS prompt_tokens,
                       COALESCE(SUM(m.completion_tokens), 0) AS completion_tokens,
                       (SELECT model FROM messages WHERE conversation_id = c.id AND model IS NOT NULL
                        ORDER BY seq DESC LIMIT 1) AS model
                FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
                GROUP BY c.id
                ORDER BY c.updated_at DESC, c.rowid DESC
                LIMIT ? OFFSET ?
                """,
                (limit, offset),
            ).fetchall()
        return [dict(r) for r in rows]

    def get(self, conversation_id: str) -> dict | None:
        """One conversation with all its messages (and their metadata), or None when unknown."""
        with self._lock:
            conv = self._db.execute(
                "SELECT id, title, created_at, updated_at FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if conv is None:
                return None
            rows = self._db.execute(
                "SELECT seq, role, content, model, params, prompt_tokens, completion_tokens, latency_ms, "
                "created_at FROM messages WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            ).fetchall()
        messages = []
        for r in rows:
            m = dict(r)
            m["params"] = json.loads(m["params"]) if m["params"] else None
            messages.append(m)
        return {**dict(conv), "messages": messages}

    def ids(self) -> list[str]:
        """Every conversation id, oldest first (the export order)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM conversations ORDER BY created_at, rowid").fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------------ export

    def export_jsonl(
        self, path_or_file: str | os.PathLike | IO[str], ids: Iterable[str] | None = None
    ) -> int:
        """Write conversations as `messages` JSONL (`{"id", "source", "messages": [{"role", "content"}]}`
        per line), readable by `chinwag.data.read_records`. A path is written atomically. Returns the
        number of conversations written; an unknown id raises `StoreError` before anything is written."""
        ids = self.ids() if ids is None else list(ids)
        lines = []
        for cid in ids:
            conv = self.get(cid)
            if conv is None:
                raise StoreError(f"unknown conversation id {cid!r}")
            msgs = [{"role": m["role"], "content": m["content"]} for m in conv["messages"]]
            rec = {"id": cid, "source": "chinwag-serve", "messages": msgs}
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
        if hasattr(path_or_file, "write"):
            path_or_file.writelines(lines)
        else:
            with atomic_path(path_or_file) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
        return len(lines)


# ---------------------------------------------------------------------------- helpers


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _clean_messages(messages: list[dict]) -> list[dict]:
    if not isinstance(messages, list):
        raise StoreError(f"messages must be a list, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise StoreError(f"messages[{i}] must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise StoreError(f"messages[{i}].role: unknown role {role!r} (expected {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise StoreError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _check_id(cid: object) -> None:
    if not isinstance(cid, str) or not cid or len(cid) > MAX_ID_LEN or not cid.isprintable():
        raise StoreError(f"conversation id must be 1..{MAX_ID_LEN} printable characters, got {cid!r}")


def _title(messages: list[dict], reply: str) -> str:
    first = next((m["content"] for m in messages if m["role"] == "user"), reply)
    first = " ".join(first.split())
    return first if len(first) <= TITLE_LEN else first[: TITLE_LEN - 1] + "…"


def _int_or_none(x: object) -> int | None:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
