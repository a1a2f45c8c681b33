from __future__ import annotations

import json

import pytest

from chinwag.data import DataError, Report, iter_texts, read_records
from tests.data.helpers import write_jsonl

U, A, S = "user", "assistant", "system"


def roles(conv):
    return [m["role"] for m in conv.messages]


def test_messages_jsonl(tmp_path):
    p = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "x1", "messages": [{"role": S, "content": "Be nice."}, {"role": U, "content": "hi"}]},
            {"messages": [{"role": U, "content": "q"}, {"role": A, "content": "a"}]},
        ],
    )
    a, b = read_records(p)
    assert a.id == "x1" and roles(a) == [S, U] and a.messages[1]["content"] == "hi"
    assert b.id.startswith("h") and roles(b) == [U, A] and b.source == p
    # content-derived ids are stable across reads
    assert [c.id for c in read_records(p)] == [a.id, b.id]


def test_sharegpt_roles(tmp_path):
    convs = [
        {"from": f, "value": f"v{i}"} for i, f in enumerate(["system", "human", "gpt", "user", "chatgpt"])
    ]
    convs.append({"from": "assistant", "value": "last"})
    p = write_jsonl(tmp_path / "s.jsonl", [{"id": 7, "conversations": convs}])
    (c,) = read_records(p)
    assert c.id == "7" and roles(c) == [S, U, A, U, A, A]
    assert c.messages[-1]["content"] == "last"


def test_pairs_both_spellings(tmp_path):
    p = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "p1", "response": "r1"}, {"user_input": "p2", "assistant_reply": "r2"}],
    )
    got = [[(m["role"], m["content"]) for m in c.messages] for c in read_records(p)]
    assert got == [[(U, "p1"), (A, "r1")], [(U, "p2"), (A, "r2")]]


def test_text_files_and_folder_order(tmp_path):
    (tmp_path / "b.txt").write_text("second doc\n\nwith a paragraph", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first doc", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("skip me", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not recognised", encoding="utf-8")
    docs = list(read_records(tmp_path))
    assert [d.messages[0]["content"] for d in docs] == ["first doc", "second doc\n\nwith a paragraph"]
    assert all(d.is_text for d in docs)  # one document per file, blank lines stay inside it


def test_jsonl_text_records(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "a document"}])
    (d,) = read_records(p)
    assert d.is_text and d.text() == "a document"


def test_format_override(tmp_path):
    p = tmp_path / "data.jsonl"
    write_jsonl(p, [{"prompt": "x", "response": "y"}])
    with pytest.raises(DataError, match=r"data.jsonl:1: missing field 'messages'"):
        list(read_records(p, fmt="messages"))
    with pytest.raises(DataError, match="unknown format"):
        list(read_records(p, fmt="csv"))
    # .txt read as text even if it looks like JSON; a .txt forced as messages reads JSONL
    q = tmp_path / "data.txt"
    q.write_text(json.dumps({"messages": [{"role": U, "content": "hey"}]}) + "\n", encoding="utf-8")
    assert list(read_records(q))[0].is_text
    assert roles(list(read_records(q, fmt="messages"))[0]) == [U]


BAD_LINES = [
    '{"messages": [{"role": "user", "content": "ok"}]}',
    "{not json",
    '{"messages": [{"role": "user"}]}',
    '{"messages": "hello"}',
    '{"messages": [{"role": "wizard", "content": "x"}]}',
    '{"messages": []}',
    "[1, 2]",
    '{"foo": 1}',
    '{"messages": [{"role": "user", "content": "fine"}]}',
]


def test_malformed_fail_scans_everything(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", BAD_LINES)
    report = Report()
    with pytest.raises(DataError) as e:
        list(read_records(p, report=report))
    msg = str(e.value)
    assert "7 malformed record(s)" in msg  # counted across the whole file, not just the first
    assert f"{p}:2: invalid JSON" in msg
    assert f"{p}:3: missing field 'messages[0].content'" in msg
    assert f"{p}:4: 'messages' must be list" in msg
    assert f"{p}:5: 'messages[0].role': unknown role 'wizard'" in msg
    assert f"{p}:6: 'messages' is empty" in msg
    assert report.skipped == {
        "bad_json": 1,
        "missing_field": 2,
        "wrong_type": 2,
        "unknown_role": 1,
        "empty_messages": 1,
    }


def test_malformed_skip_counts(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", BAD_LINES)
    report = Report()
    got = list(read_records(p, on_error="skip", report=report))
    assert [c.messages[0]["content"] for c in got] == ["ok", "fine"]
    assert report.n_skipped == 7 and sum(report.read.values()) == 2
    assert report.problems[0].startswith(f"{p}:2:")


def test_fail_mode_yields_nothing_after_first_problem(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", BAD_LINES)
    got = []
    with pytest.raises(DataError):
        for c in read_records(p):
            got.append(c)
    assert len(got) == 1  # only the record before the first problem


def test_missing_source():
    with pytest.raises(DataError, match="no such file or folder"):
        list(read_records("/nonexistent/corpus.jsonl"))


CHATTERBOT_YAML = """\
categories:
- greetings
conversations:
- - Hello
  - Hi there!
  - How are you?
  - yes
- - What is 2+2?
  - '4'
- just a string
- []
"""


def test_chatterbot_yaml_file(tmp_path):
    p = tmp_path / "greet.yml"
    p.write_text(CHATTERBOT_YAML, encoding="utf-8")
    report = Report()
    a, b = read_records(p, on_error="skip", report=report)
    assert roles(a) == [U, A, U, A]
    assert a.messages[3]["content"] == "yes"  # YAML 1.1 would have made this True
    assert [m["content"] for m in b.messages] == ["What is 2+2?", "4"]
    assert report.skipped == {"wrong_type": 1, "empty_messages": 1}
    assert report.problems[0].startswith(f"{p}:10:")
    with pytest.raises(DataError, match=r"greet.yml:10: each conversation must be a list of strings"):
        list(read_records(p))
    bad = tmp_path / "broken.yaml"
    bad.write_text("conversations:\n- - a\n  - [unclosed\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.yaml:\d+: invalid YAML"):
        list(read_records(bad))


def test_chatterbot_package_all_languages():
    report = Report()
    convs = list(read_records("chatterbot", on_error="skip", report=report))
    assert len(convs) > 2000 and report.read == {"chatterbot": len(convs)}
    assert all(roles(c)[:2] == [U, A] for c in convs if len(c.messages) >= 2)
    # the package itself holds a few malformed entries; they are counted, never silently dropped
    assert report.n_skipped >= 1 and all(":" in p for p in report.problems)
    assert any("\u4e00" <= ch <= "\u9fff" for c in convs[:3000] for ch in c.messages[0]["content"])  # Chinese


def test_chitchat(chitchat_records):
    convs = chitchat_records
    assert len(convs) == 7168
    assert len({c.id for c in convs}) == 7168 and all(c.id.startswith("chitchat:") for c in convs)
    first = convs[0]
    assert first.id == "chitchat:a07edb12-6b91-4138-b11e-02421888d699"
    # consecutive messages of one sender are merged into one turn; speakers alternate user/assistant
    assert first.messages[0] == {"role": U, "content": "Hello\nHow are you doing today?"}
    assert first.messages[1] == {"role": A, "content": "whats up MD\nim doing good\nhow are you doing?"}
    for c in convs:
        r = roles(c)
        assert r[0] == U and all(x != y for x, y in zip(r, r[1:], strict=False))
    assert sum(len(c.messages) == 1 for c in convs) > 3000  # many chats never got a reply


def test_prepared_folder_as_source(tmp_path):
    from chinwag.data import prepare
    from tests.data.helpers import chat

    src = write_jsonl(tmp_path / "in.jsonl", [chat(i) for i in range(40)])
    out = tmp_path / "prep"
    prepare(src, out, val_fraction=0.25, progress=False)
    again = list(read_records(out))
    assert sorted(c.id for c in again) == sorted(f"c{i}" for i in range(40))
    assert all(c.source == src for c in again)  # the original source is kept in the cleaned JSONL
    train_texts = list(iter_texts(out, split="train"))
    val_texts = list(iter_texts(out, split="val"))
    assert len(train_texts) + len(val_texts) == 80 and val_texts
    with pytest.raises(DataError, match="no such split"):
        list(iter_texts(out, split="test"))


def test_iter_texts_raw(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p1", "response": "r1"}])
    assert list(iter_texts(p)) == ["p1", "r1"]
