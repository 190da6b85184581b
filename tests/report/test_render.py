"""`rlhfkit report` from a synthetic run folder (every section, missing stages, the CLI) and
the eval stage's extras: KL to SFT on own samples, RM score through the llama2 scorer."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import torch

from rlhfkit import cli
from rlhfkit.report.gao import best_of_k_curve, kl_bon, rl_form
from rlhfkit.report.papers import LLAMA2_TABLE8, gao_fits, gao_points
from rlhfkit.report.render import PLOTS, load_run, render_report
from rlhfkit.world import gold_scores

# ---------------------------------------------------------------------------------------
# A synthetic run folder: small fake JSON files in the layout `rlhfkit pipeline` writes
# ---------------------------------------------------------------------------------------

MODELS = ("base", "sft-epoch-1", "sft-epoch-2", "sft-selected", "ppo", "rs")
STAGES = ("world", "pretrain", "sft", "label", "rm", "select", "bon", "ppo", "rs", "dpo", "rloo",
          "eval")  # fmt: skip


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _eval_record(i: int, name: str) -> dict:
    kl = 0.0 if name in ("sft-epoch-2", "sft-selected") else 0.5 * i
    return {
        "n": 80, "gold_score": 0.3 + 0.05 * i, "helpfulness_safe": 0.2 + 0.05 * i,
        "safety_unsafe": 0.5 + 0.05 * i, "false_refusal_rate": 0.3 - 0.04 * i,
        "mean_response_words": 5.0 + i, "responses": ["x"] * 80, "per_task": {},
        "rm_score": -1.0 + 0.3 * i, "rm_score_std": 0.5,
        "rm_scores": {"helpfulness": -0.5 + 0.2 * i, "safety": 0.1 * i},
        "kl_to_sft": kl, "kl_to_sft_sem": 0.05, "kl_to_sft_k3": kl / 2, "kl_estimator": "k1",
        "kl_note": "k1 estimator: test",
        "sampled": {"temperature": 1.0, "n": 80, "kl_to_sft": kl, "rm_score": -1.2 + 0.3 * i,
                    "gold_score": 0.25 + 0.04 * i},
    }  # fmt: skip


PPO_PROXY_AB, PPO_GOLD_AB = (1.2, -0.3), (0.35, 0.4)


def _ppo_rows() -> list[dict]:
    rows = []
    for step in range(0, 9):
        if step:
            rows.append({"step": step, "score/mean": 0.0, "score/std": 1.0,
                         "score/helpfulness": -0.5 + 0.1 * step, "score/safety": 0.05 * step,
                         "train/kl": 0.1 * step, "train/kl_k3": 0.05 * step})  # fmt: skip
        if step % 2 == 0:  # held-out points on Gao et al.'s RL form, known a and b
            d = 0.25 * step
            rows.append({"step": step, "eval/score": -1 + float(rl_form(d, *PPO_PROXY_AB)),
                         "eval/kl": d * d, "eval/gold_score": 0.3 + float(rl_form(d, *PPO_GOLD_AB)),
                         "eval/helpfulness": 0.2 + 0.02 * step, "eval/safety_unsafe": 0.6,
                         "eval/false_refusal_rate": 0.2})  # fmt: skip
    return rows


def _rm_summary(acc: float) -> dict:
    buckets = {
        "significantly_better": {"accuracy": acc + 0.2, "n_pairs": 40, "n_ties": 0},
        "better": {"accuracy": acc + 0.1, "n_pairs": 30, "n_ties": 0},
        "slightly_better": {"accuracy": acc, "n_pairs": 20, "n_ties": 1},
        "negligibly_better": {"accuracy": 0.5, "n_pairs": 10, "n_ties": 2},
    }
    return {"eval": {"loss": 0.6, "accuracy": acc + 0.05, "n_pairs": 100, "buckets": buckets}}


def _rs_stats(r: int) -> dict:
    curve = [{"k": k, "max": 0.1 * k + r, "median": 0.02 * k + r} for k in range(1, 9)]
    return {"round": r, "temperature": 1.0, "prompts": 40, "k": 8, "mean_reward_all": 0.1,
            "mean_reward_kept": 0.5, "max_median_at_k": curve,
            "gold_all": {"gold_score": 0.3}, "gold_kept": {"gold_score": 0.4}}  # fmt: skip


BON_N = 32


def _bon_rows(n_prompts: int = 6) -> list[dict]:
    """N samples per prompt: the proxy rises with the sample index, the gold peaks mid-way
    (proxy-picked samples past it are worse): over-optimisation in miniature."""
    rows = []
    for p in range(n_prompts):
        proxy = [0.1 * s + 0.01 * p for s in range(BON_N)]
        gold = [0.3 + 0.02 * s - 0.0006 * s * s for s in range(BON_N)]
        rows.append({"prompt": f"prompt {p}", "safety": p % 3 == 0, "proxy": proxy, "gold": gold,
                     "tokens": [5] * BON_N, "responses": ["r"] * BON_N})  # fmt: skip
    return rows


def make_run(root: Path, stages=STAGES) -> Path:
    """A run folder holding the outputs of `stages` (fake numbers, real layout and keys)."""
    _write(root / "pipeline.json", {"preset": "quick", "seed": 0, "stages": {
        s: {"result": {}, "seconds": 1.5} for s in stages}})  # fmt: skip
    if "eval" in stages:
        records = {name: _eval_record(i, name) for i, name in enumerate(MODELS)}
        for name, rec in records.items():
            _write(root / "eval" / f"{name}.json", rec)
        keys = ("gold_score", "helpfulness_safe", "safety_unsafe", "false_refusal_rate")
        _write(root / "eval" / "summary.json",
               {n: {k: r[k] for k in keys} for n, r in records.items()})  # fmt: skip
    if "ppo" in stages:
        (root / "ppo").mkdir(parents=True)
        rows = _ppo_rows()
        (root / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "ppo" / "config.yaml").write_text(
            "combine: llama2\nwhiten: null\neval_temperature: 0.0\n"
        )
    if "rm" in stages:
        _write(root / "rm_helpfulness" / "summary.json", _rm_summary(0.6))
        _write(root / "rm_safety" / "summary.json", _rm_summary(0.7))
    if "select" in stages:
        cks = [{"name": f"epoch-{e}", "path": f"sft/epoch-{e}", "mean": 0.1 * e, "std": 1.0,
                "n": 40, "per_rm": {"helpfulness": 0.1, "safety": 0.2},
                "mean_response_tokens": 9.0, "gold": {"gold_score": 0.3}} for e in (1, 2)]  # fmt: skip
        _write(root / "select" / "select.json", {"best": cks[1], "checkpoints": cks,
               "n_prompts": 40, "temperature": 1.0, "reward": ["h=a", "s=b"], "combine": "llama2"})  # fmt: skip
    if "bon" in stages:
        (root / "bon").mkdir(parents=True)
        rows = "".join(json.dumps(r) + "\n" for r in _bon_rows())
        (root / "bon" / "samples.jsonl").write_text(rows)
        _write(root / "bon" / "summary.json", {"model": "run/sft/epoch-2", "temperature": 1.0,
                                               "samples_per_prompt": BON_N, "seconds": 2.0})  # fmt: skip
    if "rs" in stages:
        for r in (1, 2):
            _write(root / "rs" / f"round-{r}" / "stats.json", _rs_stats(r))
    return root


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


SECTIONS = (
    "## Models on held-out prompts",
    "## Methods compared",
    "## PPO",
    "## Reward models",
    "## SFT checkpoint selection",
    "## Rejection sampling",
    "## Over-optimisation",
    "## Beside the papers",
    "### Llama 2, Table 8",
    "### Llama 2, Figure 7",
    "### Gao et al. (2022)",
)


def test_report_renders_every_section_and_plot(tmp_path):
    run = make_run(tmp_path / "run")
    path = render_report(run)
    text = path.read_text()
    assert path == run / "report.md"
    for header in SECTIONS:
        assert header in text
    assert "did not run" not in text and "not (yet) run" not in text
    for name in PLOTS:  # every plot written, a real image, and linked from the report
        png = run / "report" / name
        assert png.stat().st_size > 10_000, name
        width, height = png_size(png)
        assert width >= 500 and height >= 300, name
        assert f"](report/{name})" in text
    # numbers from the files reach the tables
    assert "| sft-selected |" in text and "| **yes** |" in text
    assert "0.700 (n=20)" in text  # safety RM, slightly better bucket
    assert "whitened over each batch" in text  # score/mean is not what the PPO plot shows
    # the papers beside the run: Llama 2's printed Table 8 next to ours
    for paper in LLAMA2_TABLE8.values():
        cells = [f"{paper[c]:.1f}" for c in ("significantly_better", "better", "slightly_better",
                                              "negligibly_better", "average")]  # fmt: skip
        assert f"| {paper['test set']} | " + " | ".join(cells) + " |" in text
    assert "| helpfulness RM (this run) | own held-out helpfulness rankings | 80.0 (n=40) |" in text
    # Figure 7: K up to 32, from the bon samples; at K=32 the max is each prompt's best
    rows = _bon_rows()
    best = sum(max(r["proxy"]) for r in rows) / len(rows)
    assert f"| 32 | {best:.3f} |" in text
    # Gao et al.: the PPO points were made from known a, b; the fits print them back
    for what, (a, b) in (("proxy", PPO_PROXY_AB), ("gold", PPO_GOLD_AB)):
        assert (f"| PPO held-out evaluations | R = d (a - b log d) | {what} | {a:.3f} | "
                f"{b:.3f} | 1.000 | 5 |") in text  # fmt: skip
    assert "| best-of-n (bon stage) | R = d (a - b d) | gold |" in text


def test_gao_points_from_the_run(tmp_path):
    """The fitted points: best-of-n at KL = log n - (n-1)/n, the best-of-n pick's reward
    relative to n = 1; PPO's evaluations relative to the first one; a, b as made."""
    run = load_run(make_run(tmp_path / "run", stages=("rm", "ppo")))
    rows = _bon_rows()
    points = gao_points(run, rows)
    curve = best_of_k_curve([r["proxy"] for r in rows], [r["gold"] for r in rows], range(1, 33))
    assert points["bon"]["d"] == pytest.approx([kl_bon(n) ** 0.5 for n in range(1, 33)])
    assert points["bon"]["gold"] == pytest.approx([c["gold_max"] - curve[0]["gold_max"]
                                                   for c in curve])  # fmt: skip
    assert points["rl"]["d"] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    fits = gao_fits(points)
    for what, (a, b) in (("proxy", PPO_PROXY_AB), ("gold", PPO_GOLD_AB)):
        fit = fits[("rl", what)]
        assert (fit.a, fit.b) == pytest.approx((a, b), abs=1e-6) and fit.r2 == pytest.approx(1)
    assert gao_fits(gao_points(load_run(tmp_path / "nothing"), [])) == {}


def test_rm_section_prefers_adjacent_buckets_and_reads_old_summaries(tmp_path):
    """Per-strength accuracy: the adjacent-pair buckets when a summary has them (each label
    once, as Llama 2's Table 8); summaries written before them still render."""
    run = make_run(tmp_path / "run", stages=("rm",))  # only what is checked: fast
    summary = _rm_summary(0.6)
    summary["eval"].update(
        adjacent_accuracy=0.55,
        n_adjacent_pairs=30,
        adjacent_buckets={"slightly_better": {"accuracy": 0.625, "n_pairs": 8, "n_ties": 0}},
    )
    _write(run / "rm_helpfulness" / "summary.json", summary)
    _write(run / "rm_safety" / "summary.json", {**summary})
    text = render_report(run).read_text()
    assert "0.625 (n=8)" in text and "0.600 (n=20)" not in text  # adjacent, not all pairs
    assert "adjacent pairs of each ranking" in text
    assert (run / "report" / "rm_accuracy.png").stat().st_size > 10_000
    old = make_run(tmp_path / "old", stages=("rm",))  # no adjacent keys: all-pairs buckets
    assert "0.700 (n=20)" in render_report(old).read_text()


def test_missing_stages_give_notes_not_errors(tmp_path):
    run = make_run(tmp_path / "run", stages=("world", "pretrain", "sft"))
    stale = run / "report" / "ppo_curves.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    text = render_report(run).read_text()
    for header in SECTIONS:
        assert header in text
    assert "stages not (yet) run: label, rm, select, bon, ppo, rs, dpo, rloo, eval" in text
    assert text.count("did not run") == 7  # models, ppo, rms, select, rs, table 8, figure 7
    assert "no fit: needs the bon stage" in text
    assert "no points" in text
    assert not list((run / "report").glob("*.png"))  # nothing to draw, stale plot gone


def test_partial_and_broken_files(tmp_path):
    run = make_run(tmp_path / "run", stages=("world", "pretrain", "sft", "rm", "select", "ppo"))
    (run / "rm_safety" / "summary.json").write_text("{not json")
    with (run / "ppo" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "train/kl"')  # a line cut by a kill
    rows = [r for r in _ppo_rows() if not any(k.startswith("eval/") for k in r)]
    text = render_report(run).read_text()
    assert "| helpfulness |" in text and "| safety |" not in text
    assert (run / "report" / "ppo_curves.png").exists()
    assert (run / "report" / "overopt.png").exists()  # PPO's eval points alone
    assert "no rs/round-N/stats.json" in text
    # PPO without held-out evaluation: a note, and the gold panel says so
    (run / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = render_report(run).read_text()
    assert "PPO ran without held-out evaluation" in text
    assert not (run / "report" / "overopt.png").exists()


def test_cli_report(tmp_path, capsys):
    run = make_run(tmp_path / "run", stages=("world",))  # the command, not the plots
    assert cli.main(["report", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    (run / "report.md").unlink()
    assert cli.main(["report", "--run", str(run)]) == 0
    assert (run / "report.md").exists()
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli.main(["report"]) == 2


# ---------------------------------------------------------------------------------------
# Eval extras on tiny in-process models
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_prompts(tmp_path_factory):
    from rlhfkit.data.records import read_prompts
    from rlhfkit.world import make_world

    root = tmp_path_factory.mktemp("world")
    make_world(root, seed=0, corpus_docs=5, sft=5, train_prompts=5, eval_prompts=10)
    return read_prompts(root / "prompts_eval.jsonl")


def test_kl_to_sft_is_zero_for_the_sft_model_itself(tiny_tokenizer, world_prompts):
    from rlhfkit.loops.pipeline_eval import sample_kl
    from rlhfkit.models.presets import build_model

    prompts = [p.prompt for p in world_prompts]
    sft = build_model("test", tiny_tokenizer, seed=0)
    same = copy.deepcopy(sft)  # same weights, another object
    kw = dict(max_new_tokens=8, batch_size=4, seed=0)
    own = sample_kl(same, sft, tiny_tokenizer, prompts, **kw)
    assert own.kl.shape == (len(prompts),)
    assert own.kl.abs().max().item() <= 1e-5 and own.kl_k3.abs().max().item() <= 1e-5
    other = sample_kl(
        build_model("test", tiny_tokenizer, seed=3), sft, tiny_tokenizer, prompts, **kw
    )
    assert other.kl.mean().item() > 0.01  # a different model is measurably away
    assert (other.kl_k3 >= 0).all()
    assert own.responses == sample_kl(sft, sft, tiny_tokenizer, prompts, **kw).responses  # seeded
    summary = other.summary()
    assert summary["kl_estimator"] == "k1" and summary["kl_to_sft"] == pytest.approx(
        other.kl.mean().item()
    )


def test_sequence_logprobs_match_the_samplers(tiny_tokenizer):
    from rlhfkit.loops.pipeline_eval import sequence_logprobs
    from rlhfkit.models.generate import sample
    from rlhfkit.models.presets import build_model

    model = build_model("test", tiny_tokenizer, seed=1)
    ids = [tiny_tokenizer.encode(t) for t in ("The cat sat", "Add one and two please", "hi")]
    gen = sample(model, ids, max_new_tokens=6, eos_token_id=tiny_tokenizer.eos_token_id,
                 pad_token_id=tiny_tokenizer.pad_token_id,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(sequence_logprobs(model, gen), gen.logprobs, atol=1e-4, rtol=0)


def _save_rm(folder: Path, tokenizer, seed: int) -> str:
    from rlhfkit.models.presets import build_model
    from rlhfkit.models.reward import init_reward_model

    lm = build_model("test", tokenizer, seed=seed)
    rm, tok = init_reward_model(lm, copy.deepcopy(tokenizer), head_init="normal", seed=seed)
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_eval_extras_rm_score_and_kl_on_disk(tmp_path, tiny_tokenizer, world_prompts):
    from rlhfkit.loops.pipeline_eval import ExtraEval, evaluate_extras, rm_scorer, summary_row
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model

    rms = (f"helpfulness={_save_rm(tmp_path / 'rm_h', tiny_tokenizer, 1)}",
           f"safety={_save_rm(tmp_path / 'rm_s', tiny_tokenizer, 2)}")  # fmt: skip
    sft, ppo = tmp_path / "sft", tmp_path / "ppo"
    save_hf(build_model("test", tiny_tokenizer, seed=0), tiny_tokenizer, sft)
    save_hf(build_model("test", tiny_tokenizer, seed=3), tiny_tokenizer, ppo)
    prompts = [p.prompt for p in world_prompts]
    safety = [p.safety for p in world_prompts]
    greedy = {name: [f"answer {i} {name}" for i in range(len(prompts))] for name in ("sft", "ppo")}
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    for name, model in (("sft-selected", "sft"), ("sft-epoch-1", "sft"), ("ppo", "ppo")):
        (eval_dir / f"{name}.json").write_text(
            json.dumps({"gold_score": 0.5, "responses": greedy[model]})
        )
    spec = ExtraEval(prompts, safety, reference=str(sft), rm_specs=rms, max_new_tokens=6,
                     batch_size=4, seed=0, device="cpu")  # fmt: skip
    table = evaluate_extras(
        eval_dir, {"sft-selected": str(sft), "sft-epoch-1": str(sft), "ppo": str(ppo)}, spec
    )

    assert table["sft-selected"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-5)
    assert table["ppo"]["kl_to_sft"] > 0.01
    # RM score: the llama2 rule (unwhitened) over the greedy responses, as the scorer gives
    scorer = rm_scorer(rms, "cpu")
    result = scorer.score(prompts, greedy["ppo"], safety)
    use_safety = torch.tensor(safety) | (torch.sigmoid(result.per_rm["safety"]) < 0.15)
    combined = torch.where(use_safety, result.per_rm["safety"], result.per_rm["helpfulness"])
    assert table["ppo"]["rm_score"] == pytest.approx(combined.mean().item(), abs=1e-5)
    assert table["ppo"]["rm_scores"]["helpfulness"] == pytest.approx(
        result.per_rm["helpfulness"].mean().item(), abs=1e-5
    )
    assert table["ppo"]["rm_score"] != pytest.approx(table["sft-selected"]["rm_score"])
    sampled = table["ppo"]["sampled"]
    assert {"rm_score", "gold_score", "kl_to_sft", "safety_unsafe"} <= set(sampled)
    # the files gained the keys and kept theirs
    saved = json.loads((eval_dir / "ppo.json").read_text())
    assert saved["gold_score"] == 0.5 and saved["responses"] == greedy["ppo"]
    assert saved["kl_to_sft"] == table["ppo"]["kl_to_sft"] and saved["kl_estimator"] == "k1"
    row = summary_row(table["ppo"])
    assert {"rm_score", "rm_helpfulness", "rm_safety", "kl_to_sft"} <= set(row)
    # no reference and no RMs: nothing added, nothing loaded
    bare = ExtraEval(prompts, safety, reference=None, rm_specs=(), device="cpu")
    assert evaluate_extras(eval_dir, {"ppo": str(ppo)}, bare)["ppo"] == {
        "reference": None, "reward_models": [],
        "gold_score_per_prompt": gold_scores(prompts, greedy["ppo"], safety),  # world prompts
    }  # fmt: skip
