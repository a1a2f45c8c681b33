"""The lexical hint pre-pass: generic shapes found, priorities, token alignment."""

from chinwag.dlp.hints import HINT_ID, HINTS, char_hints, token_hints


def _hint_of(text: str, value: str) -> str:
    s = text.index(value)
    ch = char_hints(text)[s : s + len(value)]
    return HINTS[max(set(ch), key=ch.count)]


def test_shapes():
    t = ("Mail dana.wu@gmail.com or call (415) 555-0132. Card 4539 1488 0343 6467, "
         "order 1234 5678 9012 3456. SSN 123-45-6789. key AKIAQ3EGRZ7NQX2HL4PB "
         "and password=hunter2hunter2 at "
         "postgres://app:s3cretpw@db.internal:5432/prod for MTR-2024-00123 "
         "under the NDA with Dana Wu.")  # fmt: skip
    assert _hint_of(t, "dana.wu@gmail.com") == "EMAIL"
    assert _hint_of(t, "(415) 555-0132") == "PHONE"
    assert _hint_of(t, "4539 1488 0343 6467") == "DIGITS_LUHN"  # Luhn-valid
    assert _hint_of(t, "1234 5678 9012 3456") != "DIGITS_LUHN"  # not Luhn-valid
    assert _hint_of(t, "123-45-6789") == "SSN_SHAPE"
    assert _hint_of(t, "AKIAQ3EGRZ7NQX2HL4PB") == "KEY_PREFIX"
    assert _hint_of(t, "hunter2hunter2") == "ASSIGNED"
    assert _hint_of(t, "postgres://app:s3cretpw@db.internal:5432/prod") == "URI_PASSWORD"
    assert _hint_of(t, "MTR-2024-00123") == "MATTER"
    assert _hint_of(t, "NDA") == "NDA"
    assert _hint_of(t, "Dana Wu") == "CAPWORDS"


def test_plain_prose_has_no_hints():
    assert set(char_hints("thanks for the update, see you at the meeting tomorrow")) == {0}


def test_token_hints_take_the_strongest_hint_in_each_token():
    text = "x a@b.co y"
    offsets = [(0, 1), (1, 3), (3, 8), (8, 10)]  # " a" straddles the start of the email, " y" is after it
    assert token_hints(text, offsets) == [0, HINT_ID["EMAIL"], HINT_ID["EMAIL"], 0]
    assert token_hints("", []) == []


def test_packed_ids_reach_the_model_and_change_its_input():
    import torch

    from chinwag.dlp.hints import with_hints
    from chinwag.dlp.model import DLPModel, get_dlp_config

    torch.manual_seed(0)
    model = DLPModel(get_dlp_config("dlp-tiny", n_hints=len(HINTS))).eval()
    V = model.config.vocab_size
    text = "mail a@b.co now"
    offsets = [(0, 4), (4, 6), (6, 11), (11, 15)]
    packed = with_hints([5, 6, 7, 8], text, offsets, V)
    assert [i % V for i in packed] == [5, 6, 7, 8]
    assert [i // V for i in packed] == [0, HINT_ID["EMAIL"], HINT_ID["EMAIL"], 0]
    plain = model.embed_ids(torch.tensor([[5, 6, 7, 8]]))
    hinted = model.embed_ids(torch.tensor([packed]))
    assert torch.equal(plain[0, 0], hinted[0, 0]) and not torch.equal(plain[0, 1], hinted[0, 1])
    out = model(torch.tensor([packed]), torch.ones(1, 4, dtype=torch.bool))
    assert out.bio_logits.shape[:2] == (1, 4)


def test_build_dataset_packs_hints_only_when_asked():
    from chinwag.dlp.dsl import serialize
    from chinwag.dlp.synth import generate
    from chinwag.dlp.tokenizer import DLPTokenizer
    from chinwag.dlp.train import build_dataset

    exs = generate(12, seed=0, split="train")
    tok = DLPTokenizer.train([serialize(e.doc).text for e in exs], vocab_size=800, seed=0)
    plain = build_dataset(exs, tok, 256)
    hinted = build_dataset(exs, tok, 256, hints=True)
    assert torch_equal(hinted.ids % tok.vocab_size, plain.ids)
    assert int((hinted.ids // tok.vocab_size).max()) > 0  # some token got a hint
    assert plain.ids.max() < tok.vocab_size


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
