"""The DLP SentencePiece tokenizer: exact offsets, single-token markers, boundary-safe pieces, BIO round
trips, persistence, the general-text mix and the density helper."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chinwag.dlp import dsl, synth
from chinwag.dlp.labels import BIO_TAGS
from chinwag.dlp.tokenizer import (
    BOUNDARY_RE,
    DELIMITER,
    DLPTokenizer,
    bio_tags,
    bio_to_spans,
    density,
    general_text,
    marker_symbols,
    pretokenize,
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
    # measured 1.000 here (vocab 2000) and 0.999 at 16k (500 test docs), see docs/dlp.md
    assert ok / total >= 0.995, ok / total


def test_pretokenize_marks_value_edges():
    # numbers vs punctuation, words vs closing/opening punctuation, before newlines, a value's leading symbol
    assert pretokenize("ssn 123-45-6789.") == f"ssn 123-45-6789{DELIMITER}."
    assert pretokenize('"key": "ghp_x1",') == f'"{DELIMITER}key{DELIMITER}": "{DELIMITER}ghp_x1{DELIMITER}",'
    assert pretokenize("a\n\nb") == f"a{DELIMITER}\n\nb"
    D = DELIMITER
    assert pretokenize("PHONE='(209) 555'") == f"PHONE='{D}({D}209{D}) 555{D}'"
    assert pretokenize("2024-03-15T10:22") == "2024-03-15T10:22"  # dates and times may still join
    assert pretokenize(f"x{DELIMITER}y") == "xy"  # a stray delimiter in the input is dropped, not doubled


def test_no_piece_crosses_a_value_edge(tok):
    """The guarantee BOUNDARY_RE gives: no learned piece contains a boundary position. (A trailing letter
    stands in for the unknown context after the piece, so a rule that needs whitespace next does not fire.)"""
    checked = 0
    for i in range(tok.vocab_size):
        if tok.sp.is_byte(i) or tok.sp.is_control(i) or tok.sp.is_unknown(i):
            continue
        piece = tok.id_to_piece(i).replace("▁", " ")
        if piece in marker_symbols():
            continue
        inner = [m.start() for m in BOUNDARY_RE.finditer(piece + "x") if 0 < m.start() < len(piece)]
        assert not inner, piece
        checked += 1
    assert checked > 1500
    pieces = {tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert {"▁the", ".com"} <= pieces  # punctuation may join letters, and words are whole


def test_general_text_is_bounded_and_mixed():
    texts = general_text(40_000)
    assert 30_000 < sum(map(len, texts)) <= 40_000
    assert texts == general_text(40_000)  # deterministic
    assert any("def " in t for t in texts)  # Python source
    assert general_text(0) == []


def test_train_with_general_text():
    texts = [dsl.serialize(e.doc).text for e in synth.generate(60, seed=2, split="train")]
    a = DLPTokenizer.train(texts, vocab_size=800, seed=0, general=0.5)
    assert a.vocab_size == 800 and a.model_proto != DLPTokenizer.train(texts, vocab_size=800).model_proto
    with pytest.raises(ValueError, match="Vocabulary size"):
        DLPTokenizer.train(["<|body|>hello there"], vocab_size=16000)


class _Stub:
    """A tokenizer with one token per word, for exact density arithmetic."""

    def encode(self, text):
        return text.split()


def test_density_arithmetic():
    texts = ["a " * 1024, "a " * 512, "é" * 1024 + " b"]  # 2048 bytes/1024 tokens; 1024/512; 2050/2
    d = density(_Stub(), texts)
    per = sorted([1024.0, 1024.0, 2 * 2048 / 2050])
    assert d["n"] == 3 and math.isclose(d["mean"], sum(per) / 3)
    assert d["p50"] == per[1] and d["p95"] == d["max"] == 1024.0 and math.isclose(d["over_512"], 2 / 3)
    with pytest.raises(ValueError):
        density(_Stub(), [])


def test_density_on_synth(tok):
    """The fixture's 2k vocabulary (400 train docs): measured mean 775, p95 982 tokens per 2 KB on 100 test
    docs. The 16k numbers (the issue's budget) are in `test_density_16k` and docs/dlp.md."""
    d = density(tok, [dsl.serialize(e.doc).text for e in synth.generate(100, seed=0, split="test")])
    assert d["n"] == 100 and d["p50"] <= d["p95"] <= d["max"]
    assert d["mean"] < 850 and d["p95"] < 1100


@pytest.mark.slow
def test_density_16k():
    """Issue 8's measurement: 16k pieces trained on 8,000 train docs (+ general text, as the CLI does), 500
    test docs. Measured: mean 531, p50 502, p95 702, max 749 tokens per 2 KB. The p95 <= 512 goal is NOT
    met: prose channels are at ~470-510 but diffs, JSON and SQL need ~600-700."""
    texts = [dsl.serialize(e.doc).text for e in synth.generate(8000, seed=0, split="train")]
    tok16 = DLPTokenizer.train(texts, vocab_size=16000, seed=0, general=0.5)
    d = density(tok16, [dsl.serialize(e.doc).text for e in synth.generate(500, seed=0, split="test")])
    assert d["mean"] < 560 and d["p50"] < 530 and d["p95"] < 760


def test_decoder_drops_stray_tags_inside_words_and_too_short_spans():
    from chinwag.dlp.labels import TAG_TO_ID
    from chinwag.dlp.tokenizer import Encoding, tokens_to_spans

    ser = dsl.serialize(
        dsl.Document(channel="chat", role="support", body="x DEFAULT NULL, call 415-555-0132. NDA")
    )
    body = ser.text.index("x DEFAULT")
    enc = Encoding([0] * 4, [(body + 4, body + 9), (body + 11, body + 14), (body + 21, body + 34),
                             (body + 35, body + 38)])  # fmt: skip
    assert tokens_to_spans(ser, enc, 0, 1, "SECRET_KEY") == []  # "FAULT" of DEFAULT: starts mid-word
    assert tokens_to_spans(ser, enc, 1, 2, "SECRET_KEY") == []  # "ULL": mid-word and too short
    (phone,) = tokens_to_spans(ser, enc, 2, 3, "PHONE")  # "415-555-0132." loses the full stop
    assert ser.text[ser.span_to_text(phone)[0] : ser.span_to_text(phone)[1]] == "415-555-0132"
    assert len(tokens_to_spans(ser, enc, 3, 4, "NDA_TERM")) == 1  # 3 characters are enough for "NDA"
    assert TAG_TO_ID["O"] == 0
