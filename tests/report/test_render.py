"""`rlhfkit report` from a synthetic run folder (every section, missing stages, the CLI) and
the eval stage's extras: KL to SFT on own samples, RM score through the llama2 scorer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from rlhfkit import cli
from rlhfkit.report.gao import rl_form
from rlhfkit.report.papers import LLAMA2_TABLE8
from rlhfkit.report.render import PLOTS, render_report

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
