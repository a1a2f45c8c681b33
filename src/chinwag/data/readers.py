"""Readers: every supported input format becomes a stream of `Conversation` records.

Sources: the names `chitchat` and `chatterbot` (the PyPI packages), a file, a folder (every recognised
file inside, sorted, hidden ones skipped), or a folder written by `prepare` (its cleaned train/val JSONL).

File formats (`fmt="auto"` picks per file suffix and, for JSONL, per record from its keys):
  messages   JSONL {"messages": [{"role", "content"}]}          roles system|user|assistant (or one "text")
  sharegpt   JSONL {"conversations": [{"from", "value"}]}       human/user, gpt/assistant/chatgpt, system
  pairs      JSONL {"prompt", "response"} or {"user_input", "assistant_reply"}
  text       .txt: one document per file (a Conversation with one "text" message); JSONL {"text": ...}
  chatterbot .yml/.yaml with a `conversations:` list of Q&A chains (user, assistant, user, ...)
  chitchat   the chitchat-dataset JSON (7,168 two-person conversations)

A malformed record is never dropped silently: it is recorded as `file:line: reason` in the `Report`. With
`on_error="skip"` reading goes on; with `on_error="fail"` (default) the first problem stops the yielding
but the scan continues to the end, so the `DataError` says how many records in total are bad.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from chinwag.data.schema import CHAT_ROLES, Conversation, DataError, Report, content_id

FORMATS = ("auto", "messages", "sharegpt", "pairs", "text", "chatterbot", "chitchat", "prepared")
NAMED_SOURCES = ("chitchat", "chatterbot")
SUFFIX_FORMAT = {
    ".jsonl": "auto",
    ".json": "auto",
    ".txt": "text",
    ".yml": "chatterbot",
    ".yaml": "chatterbot",
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
PAIR_KEYS = (("prompt", "response"), ("user_input", "assistant_reply"))


class _Bad(Exception):
    """A malformed record: `kind` is the report counter, `detail` the message shown to the user."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


# ----------------------------------------------------------------------------- public entry points


def read_records(
    source: str | Path, fmt: str = "auto", on_error: str = "fail", report: Report | None = None
) -> Iterator[Conversation]:
    """Yield the Conversations of `source`. Raises `DataError` on bad input when `on_error="fail"`."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if on_error not in ("fail", "skip"):
        raise DataError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    report = report if report is not None else Report()
    failing = False  # fail mode, after the first problem: keep scanning to count, yield nothing more
    n_bad_before = report.n_skipped
    for where, item in _iter_raw(source, fmt):
        if isinstance(item, _Bad):
            report.problem(where, item.kind, item.detail)
            failing = failing or on_error == "fail"
            continue
        if not failing:
            report.count_read(item.source)
            yield item
    if failing:
        n_bad = report.n_skipped - n_bad_before
        shown = "\n  ".join(report.problems[:5])
        raise DataError(
            f"{source}: {n_bad} malformed record(s) (first ones below); fix them or pass "
            f"on_error='skip' (--on-error skip) to skip and count them\n  {shown}"
        )


def is_prepared(folder: str | Path) -> bool:
    """A folder written by `prepare`: it has the cleaned train.jsonl and a report.json."""
    folder = Path(folder)
    return folder.is_dir() and (folder / "train.jsonl").is_file() and (folder / "report.json").is_file()


def iter_texts(
    source: str | Path, fmt: str = "auto", split: str = "train", on_error: str = "fail"
) -> Iterator[str]:
    """The texts a tokenizer trains on: one per message (or document).

    For a prepared folder these are the cleaned contents of `{split}.jsonl`; raw sources have no split,
    so `split` is ignored and every record's raw contents are yielded.
    """
    if is_prepared(source) and fmt in ("auto", "prepared"):
        path = Path(source) / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: no such split in the prepared folder")
        records = _read_with(path, "messages")
        for where, item in records:
            if isinstance(item, _Bad):
                raise DataError(f"{where}: {item.detail}")
            yield from (m["content"] for m in item.messages)
        return
    for conv in read_records(source, fmt=fmt, on_error=on_error):
        yield from (m["content"] for m in conv.messages)


def list_files(source: str | Path, fmt: str = "auto") -> list[tuple[Path, str]]:
    """The (file, format) pairs a path source expands to; a prepared folder gives its train/val JSONL."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{source}: no such file or folder (named sources: {', '.join(NAMED_SOURCES)})")
    if path.is_file():
        file_fmt = fmt if fmt != "auto" else SUFFIX_FORMAT.get(path.suffix.lower(), "auto")
        return [(path, file_fmt)]
    if fmt == "prepared" or (fmt == "auto" and is_prepared(path)):
        return [(p, "messages") for p in (path / "train.jsonl", path / "val.jsonl") if p.is_file()]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIX_FORMAT
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"{source}: folder holds no recognised files ({', '.join(SUFFIX_FORMAT)})")
    return [(p, fmt if fmt != "auto" else SUFFIX_FORMAT[p.suffix.lower()]) for p in files]


# ----------------------------------------------------------------------------- dispatch


def _iter_raw(source: str | Path, fmt: str) -> Iterator[tuple[str, Conversation | _Bad]]:
    name = str(source)
    if name == "chitchat":
        yield from _read_chitchat()
        return
    if name == "chatterbot":
        yield from _read_chatterbot_package()
        return
    for path, file_fmt in list_files(source, fmt):
        yield from _read_with(path, file_fmt)


def _read_with(path: Path, fmt: str) -> Iterator[tuple[str, Conversation | _Bad]]:
    if fmt == "text":
        if path.suffix.lower() in (".jsonl", ".json"):
            yield from _read_json_records(path, "text")
        else:
            yield from _read_text(path)
    elif fmt == "chatterbot":
        yield from _read_chatterbot_yaml(path, source=str(path))
    elif fmt == "chitchat":
        yield from _read_chitchat(path)
    else:
        yield from _read_json_records(path, fmt)


# ----------------------------------------------------------------------------- JSON / JSONL


def _read_json_records(path: Path, fmt: str) -> Iterator[tuple[str, Conversation | _Bad]]:
    """JSONL, one record per line; a .json file holding one array is read as records `file[#i]`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if path.suffix.lower() == ".json" and head.startswith("["):
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                yield f"{path}:{e.lineno}", _Bad("bad_json", f"invalid JSON ({e.msg})")
                return
            for i, rec in enumerate(records):
                yield f"{path}[#{i}]", _parse_record(rec, fmt, str(path))
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", _Bad("bad_json", f"invalid JSON ({e.msg}, column {e.colno})")
                continue
            yield f"{path}:{lineno}", _parse_record(rec, fmt, str(path))


def _parse_record(rec, fmt: str, default_source: str) -> Conversation | _Bad:
    try:
        if not isinstance(rec, dict):
            raise _Bad("wrong_type", f"record must be a JSON object, got {type(rec).__name__}")
        if fmt == "auto":
            fmt = _detect_record_format(rec)
        if fmt == "messages":
            messages = _parse_messages(rec, "messages", "role", "content", None)
        elif fmt == "sharegpt":
            messages = _parse_messages(rec, "conversations", "from", "value", SHAREGPT_ROLES)
        elif fmt == "pairs":
            messages = _parse_pair(rec)
        elif fmt == "text":
            messages = [{"role": "text", "content": _field(rec, "text", str)}]
        else:
            raise _Bad("wrong_format", f"format {fmt!r} cannot read JSON records")
    except _Bad as bad:
        return bad
    rid = rec.get("id")
    cid = str(rid) if isinstance(rid, (str, int)) and str(rid) else content_id(messages)
    src = rec.get("source")
    return Conversation(cid, messages, src if isinstance(src, str) and src else default_source)


def _detect_record_format(rec: dict) -> str:
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if any(a in rec or b in rec for a, b in PAIR_KEYS):
        return "pairs"
    if "text" in rec:
        return "text"
    raise _Bad(
        "missing_field",
        "no 'messages', 'conversations', 'prompt'/'response', 'user_input'/'assistant_reply' or 'text' field",
    )


def _field(rec: dict, key: str, typ: type, where: str = ""):
    if key not in rec:
        raise _Bad("missing_field", f"missing field '{where}{key}'")
    if not isinstance(rec[key], typ):
        raise _Bad("wrong_type", f"'{where}{key}' must be {typ.__name__}, got {type(rec[key]).__name__}")
    return rec[key]


def _parse_messages(rec: dict, key: str, role_key: str, content_key: str, role_map) -> list[dict]:
    items = _field(rec, key, list)
    if not items:
        raise _Bad("empty_messages", f"'{key}' is empty")
    messages = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise _Bad("wrong_type", f"'{key}[{i}]' must be an object, got {type(m).__name__}")
        role = _field(m, role_key, str, f"{key}[{i}].")
        content = _field(m, content_key, str, f"{key}[{i}].")
        mapped = role_map.get(role.strip().lower()) if role_map else role
        allowed = CHAT_ROLES + (("text",) if role_map is None and len(items) == 1 else ())
        if mapped not in allowed:
            expected = ", ".join(sorted(role_map) if role_map else allowed)
            raise _Bad(
                "unknown_role", f"'{key}[{i}].{role_key}': unknown role {role!r} (expected {expected})"
            )
        messages.append({"role": mapped, "content": content})
    return messages


def _parse_pair(rec: dict) -> list[dict]:
    for q, a in PAIR_KEYS:
        if q in rec or a in rec:
            return [
                {"role": "user", "content": _field(rec, q, str)},
                {"role": "assistant", "content": _field(rec, a, str)},
            ]
    raise _Bad("missing_field", "missing fields 'prompt'/'response' (or 'user_input'/'assistant_reply')")


# ----------------------------------------------------------------------------- plain text


def _read_text(path: Path) -> Iterator[tuple[str, Conversation | _Bad]]:
    # One document per file: a file is the natural unit of a pretraining document (a book, an article),
    # and the loader packs documents anyway, so splitting on blank lines would only add <|eos|> noise.
    text = path.read_text(encoding="utf-8", errors="replace")
    messages = [{"role": "text", "content": text}]
    yield f"{path}:1", Conversation(content_id(messages), messages, str(path))


# ----------------------------------------------------------------------------- chatterbot YAML


def _chatterbot_dir() -> Path:
    import chatterbot_corpus

    return Path(chatterbot_corpus.__file__).parent / "data"


def _read_chatterbot_package() -> Iterator[tuple[str, Conversation | _Bad]]:
    root = _chatterbot_dir()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml")):
        yield from _read_chatterbot_yaml(
            path, source="chatterbot", label=f"chatterbot:{path.relative_to(root)}"
        )


def _read_chatterbot_yaml(
    path: Path, source: str, label: str | None = None
) -> Iterator[tuple[str, Conversation | _Bad]]:
    """Each `conversations:` entry is a chain of strings: user, assistant, user, ... .

    We compose the YAML node tree (not `safe_load`) for two reasons: nodes carry line numbers for error
    messages, and the base loader keeps every scalar a string (YAML 1.1 would turn `- yes` into True).
    """
    import yaml

    label = label or str(path)
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8", errors="replace"), Loader=loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        yield f"{label}:{line}", _Bad("bad_yaml", f"invalid YAML ({getattr(e, 'problem', None) or e})")
        return
    if not isinstance(root, yaml.MappingNode):
        yield f"{label}:1", _Bad("wrong_type", "top level must be a mapping with a 'conversations:' list")
        return
    convs = next((v for k, v in root.value if k.value == "conversations"), None)
    if convs is None:
        yield f"{label}:1", _Bad("missing_field", "missing field 'conversations'")
        return
    if not isinstance(convs, yaml.SequenceNode):
        yield f"{label}:{convs.start_mark.line + 1}", _Bad("wrong_type", "'conversations' must be a list")
        return
    for node in convs.value:
        where = f"{label}:{node.start_mark.line + 1}"
        if not isinstance(node, yaml.SequenceNode):
            yield where, _Bad("wrong_type", "each conversation must be a list of strings")
            continue
        if not node.value:
            yield where, _Bad("empty_messages", "empty conversation")
            continue
        if not all(isinstance(n, yaml.ScalarNode) for n in node.value):
            yield where, _Bad("wrong_type", "each conversation must be a list of strings")
            continue
        roles = itertools.cycle(("user", "assistant"))
        messages = [{"role": r, "content": n.value} for r, n in zip(roles, node.value, strict=False)]
        yield where, Conversation(content_id(messages), messages, source)


# ----------------------------------------------------------------------------- chitchat


def _read_chitchat(path: Path | None = None) -> Iterator[tuple[str, Conversation | _Bad]]:
    """The chitchat-dataset: {conv_uuid: {"messages": [[{"sender", "text", ...}, ...], ...]}}.

    Consecutive messages of one sender are merged into one turn (joined with newlines, as they were
    separate chat bubbles); the first sender is the user, the other the assistant. The id is the
    dataset's own conversation uuid, so it is stable.
    """
    if path is None:
        import chitchat_dataset

        path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        yield f"{path}:{e.lineno}", _Bad("bad_json", f"invalid JSON ({e.msg})")
        return
    for key, conv in data.items():
        where = f"chitchat:{key}"
        try:
            groups = _field(conv, "messages", list) if isinstance(conv, dict) else None
            if groups is None:
                raise _Bad("wrong_type", "conversation must be an object")
            utterances = [u for g in groups for u in (g if isinstance(g, list) else [g])]
            for u in utterances:
                if not isinstance(u, dict):
                    raise _Bad("wrong_type", "utterance must be an object")
                _field(u, "text", str)
                _field(u, "sender", str)
            if not utterances:
                raise _Bad("empty_messages", "conversation has no messages")
        except _Bad as bad:
            yield where, bad
            continue
        first = utterances[0]["sender"]
        messages = [
            {"role": "user" if sender == first else "assistant", "content": "\n".join(u["text"] for u in run)}
            for sender, run in itertools.groupby(utterances, key=lambda u: u["sender"])
        ]
        yield where, Conversation(f"chitchat:{key}", messages, "chitchat")
