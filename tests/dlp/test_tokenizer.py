import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chinwag.dlp import dsl, synth
from chinwag.dlp.labels import BIO_TAGS
from chinwag.dlp.tokenizer import (
    DLPTokenizer,
    bio_tags,
    bio_to_spans,
    marker_symbols,
    span_to_tokens,
    tokens_to_spans,
)

UNICODE = "hi 😀 👩‍👩‍👧 漢字テキスト a\u200bb\u200d e\u0301 ñ\u0303 \ufeffx Ωмир\n\n\t  <|body|>y 4111 1111"


@pytest.fixture(scope="module")
def tok():
    # 16k needs far more text than a unit test should generate; 2000 pieces train on 400 docs in < 1 s
    texts = [dsl.serialize(e.doc).text for e in synth.generate(400, seed=0, split="train")]
    return DLPTokenizer.train(texts, vocab_size=2000, seed=0)


def check_offsets(tok, text):
    enc = tok.encode(text)
    assert len(enc.ids) == len(enc.offsets)
    pos = 0
    for (s, e), i in zip(enc.offsets, enc.ids, strict=True):
        assert 0 <= s < e <= len(text)
        if tok.sp.is_byte(i):  # byte pieces of one character all carry that character
            assert e == s + 1 and s in (pos, pos - 1)
        else:
            assert s == pos
            # the covered text re-encodes to the same piece (modulo the space/▁ ambiguity of SentencePiece)
            assert tok.id_to_piece(i).replace("▁", " ") == text[s:e].replace("▁", " ")
        pos = e
    assert pos == len(text)  # tokens cover the whole text
    return enc


def test_offsets_exact_on_unicode(tok):
    enc = check_offsets(tok, UNICODE)
    assert tok.decode(enc.ids) == UNICODE
    pieces = {UNICODE[s:e] for s, e in enc.offsets}
    assert {"😀", "\u200b", "\u0301", "<|body|>"} <= pieces


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_offsets_property(tok, text):
    enc = check_offsets(tok, text)
    if "\u2581" not in text:
        assert tok.decode(enc.ids) == text


def test_field_markers_are_single_tokens(tok):
    for m in ["<|sender|>", "<|body|>", "<|recipients.3|>", "<|links.0|>", "<|attachments.1.name|>"]:
        assert len(tok.encode("x" + m + "y")) == 3
    assert set(marker_symbols()) >= {"<|doc", "|>", "<|attachments.0.text"}
    ex = synth.generate(1, seed=3, split="val")[0]
    ser = dsl.serialize(ex.doc)
    enc = tok.encode(ser.text)
    for path, start in zip(ser.paths, ser.starts, strict=True):
        if path.startswith("attachments.") and path.endswith(".text"):
            continue  # "<|attachments.N.text" + " mime=..." + "|>"
        marker = f"<|{path}|>"
        assert ser.text[start - len(marker) : start] == marker
        assert (start - len(marker), start) in enc.offsets


def test_save_load_roundtrip(tok, tmp_path):
    p = tmp_path / "tok.json"
    tok.save(p)
    assert json.loads(p.read_text())["format"] == "chinwag-dlp-sentencepiece"
    tok2 = DLPTokenizer.load(p)
    assert tok2.encode(UNICODE) == tok.encode(UNICODE)
    assert [f.name for f in tmp_path.iterdir()] == ["tok.json"]  # atomic write leaves no temp file
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="bad.json: not a DLP tokenizer"):
        DLPTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        DLPTokenizer.load(tmp_path / "missing.json")


def test_training_is_deterministic():
    texts = [dsl.serialize(e.doc).text for e in synth.generate(100, seed=1, split="train")]
    a = DLPTokenizer.train(texts, vocab_size=600, seed=0)
    b = DLPTokenizer.train(texts, vocab_size=600, seed=0)
    assert a.model_proto == b.model_proto
    with pytest.raises(ValueError):
        DLPTokenizer.train([], vocab_size=600)


def test_span_token_maps(tok):
    ex = synth.generate(5, seed=0, split="test")[4]
    ser = dsl.serialize(ex.doc)
    enc = tok.encode(ser.text)
    for sp in ex.spans:
        i, j = span_to_tokens(ser, enc, sp)
        assert i < j
        a, b = ser.span_to_text(sp)
        assert enc.offsets[i][0] <= a and enc.offsets[j - 1][1] >= b  # tokens cover the span
        got = tokens_to_spans(ser, enc, i, j, sp.label)
        assert (
            len(got) == 1 and got[0].field == sp.field and got[0].start <= sp.start and got[0].end >= sp.end
        )


def test_bio_round_trip_on_synth(tok):
    ok = total = 0
    for ex in synth.generate(200, seed=0, split="test"):
        ser = dsl.serialize(ex.doc)
        enc = tok.encode(ser.text)
        tags = bio_tags(ser, enc, ex.spans)
        assert len(tags) == len(enc) and all(0 <= t < len(BIO_TAGS) for t in tags)
        got = set(bio_to_spans(ser, enc, tags))
        ok += sum(sp in got for sp in ex.spans)
        total += len(ex.spans)
    assert total > 300
    assert ok / total >= 0.99, ok / total  # measured 0.995 at vocab 8000 (2000 docs), see docs/dlp.md


def test_token_budget_on_synth(tok):
    """Measured on 200 test docs: 383 tokens/KB mean, 624 max (vocab 8000,
    2000 train docs); 369 / 603 at 16k (8000 docs). The issue's
    target (2 KB in <= 512 tokens = 256/KB) is NOT met on synth documents, which are dense with random
    keys, digits and base64; this test pins the current level so a regression shows."""
    per_kb = []
    for ex in synth.generate(100, seed=0, split="test"):
        text = dsl.serialize(ex.doc).text
        per_kb.append(len(tok.encode(text)) / (len(text.encode("utf-8")) / 1024))
    assert sum(per_kb) / len(per_kb) < 512
