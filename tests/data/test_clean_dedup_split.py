from __future__ import annotations

import random

from chinwag.data import CleanConfig, Conversation, Deduper, clean_conversation, normalize_text, split_of

CFG = CleanConfig()


def conv(*contents, roles=None, cid="x"):
    roles = roles or ["user", "assistant"] * len(contents)
    return Conversation(
        cid, [{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)], "test"
    )


def reason(*contents, cfg=CFG, roles=None):
    return clean_conversation(conv(*contents, roles=roles), cfg)[1]


def test_normalize_text():
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert normalize_text("  a \t\u00a0 b  \r\nc\x00d\x07 ") == "a b\ncd"
    assert normalize_text("p1\n\n\n\n\np2\n \n") == "p1\n\np2"  # paragraphs kept, big gaps collapsed
    assert normalize_text("\ufeffzero\u200bwidth") == "zerowidth"
    assert normalize_text("👩\u200d💻 ok") == "👩\u200d💻 ok"  # ZWJ emoji sequences survive


def test_clean_keeps_good_and_normalizes():
    out, why = clean_conversation(conv("  Hello\tthere  ", "Hi!  How are you?"), CFG)
    assert why is None and [m["content"] for m in out.messages] == ["Hello there", "Hi! How are you?"]


def test_filters():
    assert reason("   ", " \t") == "empty"
    assert reason("hi", "\x00\x01") == "empty_message"
    assert reason("hello", "ok", cfg=CleanConfig(min_message_chars=3)) == "message_too_short"
    assert reason("x" * 10, "y", cfg=CleanConfig(min_conversation_chars=20)) == "too_short"
    assert reason("word " * 2000, "ok") == "message_too_long"
    assert reason("hi", "ok", cfg=CleanConfig(max_conversation_chars=3)) == "too_long"
    assert reason("aaaaaaaaaaaa") == "repeated_chars"
    assert reason("hey", "!!!!!!!!") == "repeated_chars"  # half the messages are spam
    assert reason("#$%^&*()_+{}|:<>?~`-=[];',./" * 2, "ok") == "non_text"
    assert reason("\ufffd\ufffdbinary\ufffd\ufffd junk here", "ok") == "non_text"
    assert reason("hi", roles=["user"], cfg=CleanConfig(require_assistant=True)) == "no_assistant_turn"
    assert reason("a", "b", "c", roles=["user", "system", "assistant"]) == "misplaced_system"
    assert reason("hi", "ok", "more", cfg=CleanConfig(max_messages=2)) == "too_many_messages"
    # short emoticons and a single expressive message in a longer chat are fine
    assert reason("how was it?", ":)") is None
    assert reason(*[f"normal message {i}" for i in range(9)], "Nooooooooo") is None


def test_text_documents_use_document_limit():
    doc = "A long line of prose. " * 1000  # 22k chars: over the chat-message limit, fine for a document
    assert reason(doc, roles=["text"]) is None
    assert reason(doc, roles=["text"], cfg=CleanConfig(max_document_chars=1000)) == "too_long"


def test_exact_dedup_normalizes_case_and_space():
    d = Deduper(near=False)
    assert d.check(conv("Hello there", "Hi")) is None
    assert d.check(conv("hello   THERE", "hi")) == "exact_duplicates"
    assert d.check(conv("hello there", "hi", roles=["assistant", "user"])) is None  # roles matter
    assert d.counts == {"exact_duplicates": 1, "near_duplicates": 0}


def test_near_dedup():
    rng = random.Random(0)
    words = [
        rng.choice("the a cat dog runs sleeps under over table chair red blue big".split())
        for _ in range(300)
    ]
    base = " ".join(words)
    variant = " ".join(words[:150] + ["zebra"] + words[151:])  # one word changed out of 300
    other = " ".join(rng.sample(words, len(words)))  # same words, shuffled: not a near duplicate
    d = Deduper(threshold=0.85, seed=0)
    assert d.check(conv(base, "ok")) is None
    assert d.check(conv(variant, "ok")) == "near_duplicates"
    assert d.check(conv(other, "ok")) is None
    assert d.counts == {"exact_duplicates": 0, "near_duplicates": 1}
    # deterministic: a fresh deduper with the same seed decides the same way
    d2 = Deduper(threshold=0.85, seed=0)
    assert [d2.check(conv(t, "ok")) for t in (base, variant, other)] == [None, "near_duplicates", None]


def test_split_deterministic_order_independent_fraction():
    ids = [f"conv-{i}" for i in range(20000)]
    a = {i: split_of(i, seed=0, val_fraction=0.1) for i in ids}
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert {i: split_of(i, seed=0, val_fraction=0.1) for i in shuffled} == a
    n_val = sum(s == "val" for s in a.values())
    assert 1800 < n_val < 2200
    b = {i: split_of(i, seed=1, val_fraction=0.1) for i in ids}
    assert b != a and 1800 < sum(s == "val" for s in b.values()) < 2200
    # a bigger fraction only moves conversations train -> val, never back
    c = {i: split_of(i, seed=0, val_fraction=0.2) for i in ids}
    assert all(c[i] == "val" for i in ids if a[i] == "val")
    assert all(split_of(i, 0, 0.0) == "train" for i in ids[:100])
