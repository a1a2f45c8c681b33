"""The hand-written training files, the two-level class balance, harm scoring and the hidden-layer
classifier (issue 7)."""

import numpy as np
import pytest
import yaml

from chinwag.safety.classifier import LABELS, Classifier, train
from chinwag.safety.guard import Guard, blank_markers, harm_scale
from chinwag.safety.policy import CATEGORIES, Policy, PolicyError
from chinwag.safety.written import WINDOW_SEP, WRITTEN_DIR, WrittenDataError, load_file, load_written


def test_shipped_files_load_and_cover_every_category():
    files = sorted(WRITTEN_DIR.glob("*.yaml"))
    assert len(files) >= 8
    data = load_written()
    harmful = {lab for _, lab, kind in data if kind == "harmful"}
    assert harmful == set(CATEGORIES)
    assert sum(kind == "benign" for _, _, kind in data) >= 3000
    assert sum(kind == "multi_turn" for _, _, kind in data) >= 400


def test_conversation_becomes_the_window_the_session_reads(tmp_path):
    f = tmp_path / "w.yaml"
    turns = ["u1", "a1", "u2", "a2", "u3", "a3", "u4"]
    f.write_text(yaml.safe_dump({"multi_turn": [{"label": "violence", "turns": turns},
                                                {"label": "allow", "turns": ["x", "y", "z"]}]}))  # fmt: skip
    got = load_file(f, window_turns=3)
    assert got[0] == (WINDOW_SEP.join(["u2", "u3", "u4"]), "violence", "multi_turn")
    # a benign conversation also teaches that its openers are benign; a harmful one's openers are left out
    assert got[1:] == [("x" + WINDOW_SEP + "z", "allow", "multi_turn"), ("x", "allow", "multi_turn_part")]


@pytest.mark.parametrize(
    "doc, where",
    [
        ({"harmful": {"violnce": ["x"]}}, "harmful.violnce: unknown category"),
        ({"benign": {"hate": "one string"}}, "benign.hate: expected a list"),
        ({"multi_turn": [{"label": "bogus", "turns": ["a"]}]}, "multi_turn[0].label"),
        ({"multi_turn": [{"label": "hate", "turns": ["a", ""]}]}, "multi_turn[0].turns"),
    ],
)
def test_bad_files_name_file_and_field(tmp_path, doc, where):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    with pytest.raises(WrittenDataError, match=rf"bad\.yaml: {__import__('re').escape(where)}"):
        load_file(f)


def test_harm_scale_puts_the_operating_point_on_warn():
    assert harm_scale(0.71, 0.71, 0.45) == pytest.approx(0.45)
    assert harm_scale(0.0, 0.71, 0.45) == 0.0 and harm_scale(1.0, 0.71, 0.45) == pytest.approx(1.0)
    xs = np.linspace(0, 1, 101)
    ys = [harm_scale(x, 0.71, 0.45) for x in xs]
    assert all(b >= a for a, b in zip(ys, ys[1:], strict=False))  # monotone


def test_short_ordinary_messages_are_not_near_the_threshold():
    """The two-level balance keeps P(allow) as the prior: a bare "ok" must not read as harmful."""
    g = Guard.load()
    for t in ("ok", "hello", "a", "thanks!", "what time is it"):
        v = g.check(t)
        assert v.label == "allow" and v.score < 0.4, (t, v.score)  # warn is at 0.45


def _default_with(**classifier) -> dict:
    from pathlib import Path

    import chinwag.safety

    raw = yaml.safe_load((Path(chinwag.safety.__file__).parent / "policies" / "default.yaml").read_text())
    raw["classifier"].update(classifier)
    return raw


def test_policy_rejects_an_unknown_score_mode():
    with pytest.raises(PolicyError, match="classifier.score"):
        Policy.load(_default_with(score="loudest"))


def test_category_mode_uses_per_class_probabilities():
    g = Guard.load(policy=_default_with(score="category"))
    harm = Guard.load()
    text = "whats the best way to hurt someone so it doesnt leave bruises"
    assert g.check(text).scores["violence"] <= harm.check(text).scores["violence"] + 1e-9


def test_output_markers_are_blanked_but_input_markers_count():
    assert blank_markers("<|assistant|>hi<|user|>") == " " * 13 + "hi" + " " * 8
    g = Guard.load()
    assert g.check_output("<|assistant|>" * 4).label == "allow"


def test_hidden_layer_classifier_trains_saves_and_explains(tmp_path):
    data = [("kill my neighbour tonight", "violence"), ("kill the python process", "allow"),
            ("steal a car fast", "crime"), ("wash the car fast", "allow")] * 30  # fmt: skip
    clf = train(data, seed=0, epochs=4, n_buckets=1 << 12, hidden=16, lr=0.02)
    assert clf.W2 is not None and clf.W2.shape == (16, len(LABELS))
    p, f = clf.probs("kill my neighbour tonight")
    assert LABELS[int(np.argmax(p))] == "violence"
    assert clf.top_span(f, LABELS.index("violence")) is not None
    clf.save(tmp_path / "c.safetensors")
    back = Classifier.load(tmp_path / "c.safetensors")
    np.testing.assert_allclose(back.probs("steal a car fast")[0], clf.probs("steal a car fast")[0], atol=2e-3)
