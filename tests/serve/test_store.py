"""The conversation store: prefix-append, forks, migrations, threads, export -> read_records, and the CLI."""

from __future__ import annotations

import io
import json
import sqlite3
import threading

import pytest
from typer.testing import CliRunner

from chinwag.data import read_records
from chinwag.serve import store as store_mod
from chinwag.serve.store import ConversationStore, StoreError
from chinwag.serve.store_cli import app

SYS = {"role": "system", "content": "Be brief."}
U1 = {"role": "user", "content": "hi there"}
U2 = {"role": "user", "content": "and then?"}
PARAMS = {"temperature": 0.7, "max_tokens": 32}
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


@pytest.fixture
def store(tmp_path):
    with ConversationStore(tmp_path / "c.db") as s:
        yield s


def roles_contents(conv):
    return [(m["role"], m["content"]) for m in conv["messages"]]


def test_record_new_then_append_only_new_messages(store):
    cid = store.record(None, [SYS, U1], "hello!", "tiny", PARAMS, USAGE, 12.5)
    assert isinstance(cid, str) and len(cid) == 32
    # The client resends the whole history plus its new turn: only U2 and the reply are appended.
    history = [SYS, U1, {"role": "assistant", "content": "hello!"}, U2]
    assert store.record(cid, history, "the end", "tiny", PARAMS, USAGE, 7.0) == cid
    conv = store.get(cid)
    assert roles_contents(conv) == [
        ("system", "Be brief."),
        ("user", "hi there"),
        ("assistant", "hello!"),
        ("user", "and then?"),
        ("assistant", "the end"),
    ]
    assert [m["seq"] for m in conv["messages"]] == [0, 1, 2, 3, 4]
    reply = conv["messages"][2]
    assert reply["model"] == "tiny" and reply["params"] == PARAMS
    assert (reply["prompt_tokens"], reply["completion_tokens"], reply["latency_ms"]) == (11, 5, 12.5)
    assert conv["messages"][1]["model"] is None  # request messages carry no generation metadata
    assert conv["title"] == "hi there"
    assert len(store) == 1


def test_diverged_history_forks_and_unknown_id_is_created(store):
    cid = store.record(None, [U1], "a", "m", {}, {}, 1.0)
    edited = [{"role": "user", "content": "something else"}]
    fork = store.record(cid, edited, "b", "m", {}, {}, 1.0)
    assert fork != cid
    assert roles_contents(store.get(cid)) == [("user", "hi there"), ("assistant", "a")]  # untouched
    assert roles_contents(store.get(fork)) == [("user", "something else"), ("assistant", "b")]
    assert store.record("client-chosen-id", [U1], "c", "m") == "client-chosen-id"
    assert store.get("nope") is None


def test_bad_input_is_refused_without_writing(store):
    with pytest.raises(StoreError, match=r"messages\[0\]\.role"):
        store.record(None, [{"role": "robot", "content": "x"}], "r", "m")
    with pytest.raises(StoreError, match=r"messages\[1\]\.content"):
        store.record(None, [U1, {"role": "user", "content": 3}], "r", "m")
    with pytest.raises(StoreError, match="conversation id"):
        store.record("x" * 500, [U1], "r", "m")
    assert len(store) == 0


def test_transaction_rolls_back_on_failure(store, monkeypatch):
    cid = store.record(None, [U1], "a", "m")
    calls = {"n": 0}
    real = store._insert

    def flaky(*args, **kwargs):  # fail on the second insert of the turn (the reply)
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_insert", flaky)
    with pytest.raises(sqlite3.OperationalError):
        store.record(cid, [U1, {"role": "assistant", "content": "a"}, U2], "b", "m")
    monkeypatch.undo()
    assert len(store.get(cid)["messages"]) == 2  # neither U2 nor the reply landed
    store.record(cid, [U1, {"role": "assistant", "content": "a"}, U2], "b", "m")
    assert len(store.get(cid)["messages"]) == 4


def test_list_orders_by_recency_and_pages(store):
    ids = [
        store.record(None, [{"role": "user", "content": f"q{i}"}], f"a{i}", "m", {}, USAGE) for i in range(5)
    ]
    listed = store.list(limit=3)
    assert [r["id"] for r in listed] == ids[::-1][:3]
    assert [r["id"] for r in store.list(limit=3, offset=3)] == ids[::-1][3:]
    assert listed[0]["n_messages"] == 2 and listed[0]["model"] == "m"
    assert (listed[0]["prompt_tokens"], listed[0]["completion_tokens"]) == (11, 5)
    with pytest.raises(StoreError):
        store.list(limit=-1)


def test_wal_mode_and_schema_version(tmp_path):
    with ConversationStore(tmp_path / "c.db") as s:
        assert s.schema_version == len(store_mod.MIGRATIONS)
    db = sqlite3.connect(tmp_path / "c.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_migrations_apply_in_order_and_upgrade_an_old_database(tmp_path, monkeypatch):
    path = tmp_path / "c.db"
    with ConversationStore(path) as s:
        cid = s.record(None, [U1], "kept", "m")
    v1 = len(store_mod.MIGRATIONS)
    extra = "ALTER TABLE conversations ADD COLUMN tag TEXT; UPDATE conversations SET tag = 'migrated'"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, extra])
    with ConversationStore(path) as s:  # reopening applies only the new migration
        assert s.schema_version == v1 + 1
        assert roles_contents(s.get(cid))[1] == ("assistant", "kept")
    db = sqlite3.connect(path)
    assert db.execute("SELECT tag FROM conversations").fetchall() == [("migrated",)]
    db.close()
    # A database from a newer chinwag is refused, not misread.
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:v1])
    with pytest.raises(StoreError, match="newer"):
        ConversationStore(path)


def test_failed_migration_leaves_database_at_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "c.db"
    ConversationStore(path).close()
    bad = "ALTER TABLE conversations ADD COLUMN x TEXT; THIS IS NOT SQL"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, bad])
    with pytest.raises(StoreError):
        ConversationStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "x" not in [r[1] for r in db.execute("PRAGMA table_info(conversations)")]
    db.close()


def test_not_a_database_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        ConversationStore(junk)


def test_concurrent_writers_from_threads(store):
    n_threads, per_thread = 8, 10
    errors = []

    def worker(t):
        try:
            cid = None
            history = []
            for i in range(per_thread):
                history = [*history, {"role": "user", "content": f"t{t} q{i}"}]
                cid = store.record(cid, history, f"t{t} a{i}", "m", {"t": t}, USAGE, 1.0)
                history = [*history, {"role": "assistant", "content": f"t{t} a{i}"}]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(store) == n_threads
    for row in store.list(limit=100):
        conv = store.get(row["id"])
        assert len(conv["messages"]) == 2 * per_thread
        t = conv["messages"][0]["content"].split()[0]
        assert all(m["content"].startswith(t + " ") for m in conv["messages"])


def test_export_reads_back_with_data_layer(store, tmp_path):
    a = store.record(None, [SYS, U1], "hello <b>", "m")
    a = store.record(a, [SYS, U1, {"role": "assistant", "content": "hello <b>"}, U2], "ünïcode ✓", "m")
    b = store.record(None, [U2], "second", "m")
    out = tmp_path / "export" / "conv.jsonl"
    assert store.export_jsonl(out) == 2
    convs = list(read_records(out))
    assert [c.id for c in convs] == [a, b]
    assert convs[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello <b>"},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": "ünïcode ✓"},
    ]
    buf = io.StringIO()
    assert store.export_jsonl(buf, ids=[b]) == 1
    assert json.loads(buf.getvalue())["messages"][1] == {"role": "assistant", "content": "second"}
    with pytest.raises(StoreError, match="unknown conversation"):
        store.export_jsonl(tmp_path / "x.jsonl", ids=["missing"])
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_list_show_export(tmp_path):
    db = tmp_path / "conversations.sqlite"  # where `chinwag serve RUN` keeps it: --db RUN works too
    with ConversationStore(db) as s:
        cid = s.record(None, [U1], "a [bold]reply[/bold]", "tiny-model", PARAMS, USAGE, 42.0)
    runner = CliRunner(env={"COLUMNS": "200"})  # a wide terminal, so rich does not wrap cells
    r = runner.invoke(app, ["list", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert cid[:8] in r.output and "hi there" in r.output and "11/5" in r.output
    assert runner.invoke(app, ["list", "--db", str(tmp_path)]).output == r.output
    r = runner.invoke(app, ["show", cid, "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "[bold]reply[/bold]" in r.output  # model text shown literally, not as rich markup
    assert "tiny-model" in r.output and "42 ms" in r.output
    out = tmp_path / "out.jsonl"
    r = runner.invoke(app, ["export", str(out), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert [c.id for c in read_records(out)] == [cid]
    r = runner.invoke(app, ["show", "missing", "--db", str(db)])
    assert r.exit_code == 1 and "no conversation" in r.output
    r = runner.invoke(app, ["list", "--db", str(tmp_path / "absent.db")])
    assert r.exit_code == 1 and "no such database" in r.output
    assert not (tmp_path / "absent.db").exists()
    r = runner.invoke(app, ["export", str(out), "--db", str(db), "--id", "missing"])
    assert r.exit_code == 1 and "unknown conversation" in r.output
