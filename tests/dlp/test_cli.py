import json

from typer.testing import CliRunner

from chinwag.cli import app

runner = CliRunner()


def test_synth_train_encode(tmp_path):
    data = tmp_path / "train.jsonl"
    r = runner.invoke(
        app, ["dlp", "synth", "--n", "150", "--seed", "0", "--split", "train", "--out", str(data)]
    )
    assert r.exit_code == 0, r.output
    lines = data.read_text().splitlines()
    assert len(lines) == 150
    rec = json.loads(lines[0])
    assert rec["id"] == "train-0-000000" and "spans" in rec
    assert "decision" in r.output and "EMAIL" in r.output
    tok = tmp_path / "tok.json"
    r = runner.invoke(app, ["dlp", "tokenizer", "train", "--data", str(data), "--vocab-size", "800",
                            "--out", str(tok)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "trained 800 pieces" in r.output and tok.is_file()

    r = runner.invoke(app, ["dlp", "tokenizer", "encode", "--tokenizer", str(tok), "hi 😀<|body|>x"])
    assert r.exit_code == 0, r.output
    rows = [ln.split("\t") for ln in r.output.splitlines() if "\t" in ln]
    assert any(row[1] == "'<|body|>'" and row[2:4] == ["4", "12"] for row in rows)


def test_clear_errors(tmp_path):
    r = runner.invoke(app, ["dlp", "synth", "--n", "2", "--split", "dev", "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code != 0 and "dev" in r.output and "Traceback" not in r.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"channel": "chat", "role": "hr"}\n{"channel": "fax", "role": "hr"}\n')
    r = runner.invoke(
        app, ["dlp", "tokenizer", "train", "--data", str(bad), "--out", str(tmp_path / "t.json")]
    )
    assert r.exit_code == 1 and "bad.jsonl:2: channel" in r.output

    r = runner.invoke(app, ["dlp", "tokenizer", "train", "--data", str(tmp_path / "nope.jsonl"),
                            "--out", str(tmp_path / "t.json")])  # fmt: skip
    assert r.exit_code == 1 and "nope.jsonl: file not found" in r.output

    small = tmp_path / "small.jsonl"
    small.write_text('{"channel": "chat", "role": "hr", "body": "hello there"}\n')
    r = runner.invoke(
        app, ["dlp", "tokenizer", "train", "--data", str(small), "--out", str(tmp_path / "t.json")]
    )
    assert r.exit_code == 1 and "training failed" in r.output and len(r.output.strip().splitlines()) == 1

    r = runner.invoke(app, ["dlp", "tokenizer", "encode", "--tokenizer", str(bad), "x"])
    assert r.exit_code == 1 and "not a DLP tokenizer" in r.output
