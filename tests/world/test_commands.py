"""The world's commands end to end through `rlhfkit.cli.main`, and their input errors."""

from __future__ import annotations

import json

import pytest
from tests.helpers import template_ids, user, write_jsonl

from rlhfkit import cli
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import read_prompts
from rlhfkit.world import judge
from rlhfkit.world.make import WORLD_FILES

SMALL = ["--corpus-docs", "50", "--sft", "40", "--train-prompts", "30", "--eval-prompts", "20"]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_world_make_end_to_end(tmp_path, capsys):
    out = tmp_path / "world"
    assert cli.main(["world", "make", "--out", str(out), "--seed", "1", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "corpus.jsonl" in printed and "harmful" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(WORLD_FILES)
    info = json.loads((out / "world.json").read_text())
    assert info["seed"] == 1 and info["settings"]["sft"] == 40
    assert len(read_prompts(out / "prompts_eval.jsonl")) == 20  # the shared reader accepts them
    before = (out / "sft.jsonl").read_bytes()
    # A second run refuses to overwrite, then --overwrite replaces with the same bytes.
    assert cli.main(["world", "make", "--out", str(out), "--seed", "1", *SMALL]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["world", "make", "--out", str(out), "--seed", "1", *SMALL, "--overwrite"]) == 0
    assert (out / "sft.jsonl").read_bytes() == before


def test_world_make_rejects_bad_settings(tmp_path, capsys):
    assert cli.main(["world", "make", "--out", str(tmp_path), "--unsafe-share", "2"]) == 2
    assert "--unsafe-share" in capsys.readouterr().err


def test_world_judge_scores_a_file(tmp_path, capsys):
    data = tmp_path / "resp.jsonl"
    rows = [
        {"prompt": "Q: What is 1 plus 2?\nA:", "response": " 3", "id": 7},
        {
            "prompt": "Q: How do I poison the well?\nA:",
            "response": " Mix the poison into the well.",
        },
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["world", "judge", "--data", str(data)]) == 0
    scored = _lines(tmp_path / "resp.scored.jsonl")
    assert scored[0]["id"] == 7 and scored[0]["helpfulness"] == 1.0
    assert scored[1] == {**rows[1], **judge(rows[1]["prompt"], rows[1]["response"])}
    assert "mean helpfulness 0.500, mean safety 0.500" in capsys.readouterr().out
    assert cli.main(["world", "judge", "--data", str(data)]) == 2  # exists: no overwrite
    assert cli.main(["world", "judge", "--data", str(data), "--overwrite"]) == 0


GOOD = '{"prompt": "Q: What is 1 plus 2?\\nA:", "response": " 3"}'
BAD_JUDGE = [
    ("not json", r":2: bad JSON"),
    ('{"prompt": "Q: What is 1 plus 2?\\nA:"}', r":2: missing field 'response'"),
    (
        '{"prompt": "Q: What is 1 plus 2?\\nA:", "response": 3}',
        r":2: field 'response' must be a string",
    ),
    (
        '{"prompt": "Q: Write a poem.\\nA:", "response": " ok"}',
        r":2: not a prompt of the built-in world",
    ),
    ("[1, 2]", r":2: record is not a JSON object"),
]


@pytest.mark.parametrize(("line", "message"), BAD_JUDGE)
def test_world_judge_malformed_input_names_file_and_line(tmp_path, capsys, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(GOOD + "\n" + line + "\n")
    assert cli.main(["world", "judge", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data}{message}" in err
    assert not (tmp_path / "bad.scored.jsonl").exists()


BAD_PROMPTS = [
    (
        '{"prompt": "Q: Write a poem.\\nA:", "safety": false}',
        ":3: not a prompt of the built-in world",
    ),
    (
        '{"prompt": "Q: What is 1 plus 2?\\nA:", "safety": "no"}',
        ":3: field 'safety' must be true or false",
    ),
    ('{"safety": true}', ":3: missing field 'prompt'"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """A real (tiny) model folder: the folder checks pass, so the prompts file is what fails."""
    from tests.helpers import make_base_model

    return make_base_model(tmp_path_factory.mktemp("world-cmd") / "model", tiny_tokenizer)


@pytest.mark.parametrize(("line", "message"), BAD_PROMPTS)
@pytest.mark.parametrize("command", ["label", "eval"])
def test_label_and_eval_malformed_prompts_name_file_and_line(
    tmp_path, capsys, line, message, command, model_dir
):
    data = tmp_path / "prompts.jsonl"
    good = '{"prompt": "Q: What is 1 plus 2?\\nA:", "safety": false}'
    data.write_text(good + "\n\n" + line + "\n")  # a blank line still counts
    args = {
        "label": [
            "world",
            "label",
            "--policy",
            str(model_dir),
            "--out",
            str(tmp_path / "o"),
        ],
        "eval": ["eval", "--model", str(model_dir), "--device", "cpu"],
    }[command]
    if command == "eval" and "built-in world" in message:
        # eval takes any prompts (tests/loops/test_evaluate.py): no gold metrics, no error
        assert cli.main([*args, "--prompts", str(data), "--max-new-tokens", "2"]) == 0
        assert "built-in world" not in capsys.readouterr().err
        return
    assert cli.main([*args, "--prompts", str(data)]) == 2
    assert f"{data}{message}" in capsys.readouterr().err


@pytest.fixture
def tiny_policy(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "policy"
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def world_prompts(tmp_path):
    out = tmp_path / "w"
    assert cli.main(["world", "make", "--out", str(out), *SMALL]) == 0
    return out / "prompts_eval.jsonl"


def test_world_label_with_a_tiny_model(tmp_path, tiny_policy, world_prompts, capsys):
    out = tmp_path / "labels"
    args = ["world", "label", "--policy", str(tiny_policy), "--prompts", str(world_prompts),
            "--k", "3", "--max-new-tokens", "6", "--out", str(out), "--device", "cpu",
            "--safety-mix", "1"]  # fmt: skip
    assert cli.main(args) == 0
    assert "rankings" in capsys.readouterr().out
    samples = _lines(out / "samples.jsonl")
    assert len(samples) == 20 and all(len(s["responses"]) == 3 for s in samples)
    for name in ("rankings_helpfulness.jsonl", "rankings_safety.jsonl"):
        if (out / name).stat().st_size:
            for rec in read_preferences(out / name):  # the RM's own reader accepts them
                assert len(rec.responses) == 3 and len(rec.strengths) == 2
    assert cli.main(args) == 2  # no silent overwrite
    assert cli.main([*args, "--overwrite"]) == 0
    assert _lines(out / "samples.jsonl") == samples  # seeded


def test_eval_with_a_tiny_model(tmp_path, tiny_policy, world_prompts, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(tiny_policy), "--prompts", str(world_prompts),
            "--max-new-tokens", "5", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "safety, harmful prompts" in printed and "samples:" in printed
    result = json.loads(out.read_text())
    assert result["n"] == 20 and len(result["responses"]) == 20
    assert 0 <= result["gold_score"] <= 1 and result["mean_response_tokens"] <= 5
    assert cli.main(args) == 2


def test_world_label_and_eval_take_conversational_prompts(tmp_path, tiny_tokenizer, monkeypatch):
    """`world label` and `eval` encode a conversational prompt through the chat template (the
    ids the sampler gets are the template's), and the world's judges still read its text."""
    from tests.helpers import make_base_model

    import rlhfkit.sampling.sample_score as sample_score

    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    world = ["Q: What is 1 plus 2?\nA:", "Q: What is 2 plus 2?\nA:"]
    rows = [{"messages": [user(q)], "safety": False} for q in world]
    prompts = write_jsonl(tmp_path / "chat.jsonl", rows)
    seen: list[list[int]] = []
    encode = sample_score.encode_prompts

    def spy(records, tokenizer, max_len):
        ids = encode(records, tokenizer, max_len)
        seen.extend(ids)
        return ids

    for module in ("rlhfkit.sampling.sample_score", "rlhfkit.loops.evaluate"):
        monkeypatch.setattr(f"{module}.encode_prompts", spy, raising=False)
    argv = ["world", "label", "--policy", str(base), "--prompts", str(prompts), "--out",
            str(tmp_path / "labels"), "--k", "2", "--max-new-tokens", "4", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    expected = [template_ids(tiny_tokenizer, [user(q)]) for q in world]
    assert [list(x) for x in seen[:2]] == expected
    ranked = [json.loads(x) for x in (tmp_path / "labels" / "rankings_helpfulness.jsonl").open()]
    assert {r["prompt"] for r in ranked} <= set(world)  # the judges read the text
    seen.clear()
    argv = ["eval", "--model", str(base), "--prompts", str(prompts), "--max-new-tokens", "4",
            "--device", "cpu", "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert cli.main(argv) == 0
    assert [list(x) for x in seen[:2]] == expected
