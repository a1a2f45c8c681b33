"""Each obfuscation trick folds to the plain word, and spans map back to the original text."""

import pytest

from chinwag.safety.sanitize import sanitize


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ｋｉｌｌ", "kill"),  # fullwidth (NFKC)
        ("𝐤𝐢𝐥𝐥", "kill"),  # math bold (NFKC)
        ("k\u200bi\u200cl\u2060l", "kill"),  # zero-width characters
        ("ki\x07ll", "kill"),  # control characters
        ("kіll", "kill"),  # Cyrillic і
        ("bοmb", "bomb"),  # Greek omicron
        ("РОRN", "porn"),  # Cyrillic capitals
        ("h4ck", "hack"),  # leetspeak digits
        ("$ex", "sex"),  # leet symbol opening a word
        ("k i l l", "kill"),  # spaced letters
        ("b.o.m.b", "bomb"),  # dotted letters
        ("f_i_r_e", "fire"),  # underscores
        ("kiiiiill", "kill"),  # stretched letters
        ("Kíll", "kill"),  # diacritics
        ("can’t", "can't"),  # typographic apostrophe
    ],
)
def test_each_trick_folds(text, expected):
    assert sanitize(text).text == expected


def test_numbers_and_plain_text_are_left_alone():
    assert sanitize("I have 3 cats and $100").text == "i have 3 cats and $100"
    assert sanitize("a 12yo and a 3d printer at 5pm").text == "a 12yo and a 3d printer at 5pm"
    assert sanitize("wow!  so   good").text == "wow! so good"


def test_spaced_run_does_not_swallow_the_article():
    assert sanitize("build a f_l_a_m_e").text == "build a flame"


def test_offsets_map_back_to_the_original():
    orig = "please h\u200b4\u200bc\u200bk my ｅｘ's account"
    san = sanitize(orig)
    i = san.text.index("hack")
    s, e = san.orig_span(i, i + 4)
    assert orig[s:e].replace("\u200b", "") == "h4ck"
    j = san.text.index("ex")
    s, e = san.orig_span(j, j + 2)
    assert orig[s:e] == "ｅｘ"
    assert len(san.offsets) == len(san.text)
