"""`rlhfkit report RUN`: `RUN/report.md` and PNG plots in `RUN/report/`, from the files a
pipeline run left on disk (no training, no model loading). `rlhfkit pipeline` calls it
at its end; re-run it any time, e.g. after a stage was added or re-run.

Sections: the models on held-out prompts (gold metrics, RM score, KL to SFT), the methods
compared (`report.methods`: gold win rate over SFT, cost, beside AlpacaFarm), PPO curves,
reward-model accuracy per preference strength, the SFT selection, rejection sampling's max
vs median reward against K, gold vs proxy reward against KL (over-optimisation), and the
papers beside this run (`report.papers`: Llama 2's Table 8 and Figure 7, Gao et al.'s
fits). A stage that did not run, or a file that is missing or unreadable, gives a short
note in its section instead of an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhfkit.config import PIPELINE_STAGES
from rlhfkit.errors import UserError
from rlhfkit.files import write_text
from rlhfkit.report import methods, papers, plots
from rlhfkit.report.run import (
    PLOT_DIR,
    RunData,
    fmt,
    image,
    load_run,
    md_table,
    note,
)

REPORT_MD = "report.md"
PLOTS = ("models.png", "ppo_curves.png", "rm_accuracy.png", "rs_max_median.png", "overopt.png",
         "llama2_table8.png", "llama2_figure7.png", "gao_fits.png")  # fmt: skip


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def section_header(run: RunData) -> list[str]:
    out = [f"# rlhfkit run report: `{run.root}`", ""]
    if not run.pipeline:
        return [
            *out,
            note("no pipeline.json: which stages finished, and their times, are unknown"),
            "",
        ]
    stages = run.pipeline.get("stages", {})
    out.append(f"Preset `{run.pipeline.get('preset')}`, seed {run.pipeline.get('seed')}.")
    inputs = run.pipeline.get("inputs") or {}
    if inputs:  # --model and the user's data files
        given = ", ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in inputs.items()
        )
        out.append(f"Inputs: {given} (the world's data elsewhere).")
    out.append("")
    rows = [
        (
            name,
            _seconds(s.get("seconds"))
            + (f" (skipped: {s['skipped']})" if s.get("skipped") else ""),
            _seconds(s.get("cpu_seconds")),
        )
        for name, s in stages.items()
    ]
    out += [md_table(["stage", "seconds", "CPU seconds"], rows), ""]
    missing = [n for n in PIPELINE_STAGES if n not in stages]
    if missing:
        out += [note(f"stages not (yet) run: {', '.join(missing)}"), ""]
    return out


def _seconds(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, int | float) else "-"


def section_models(run: RunData, out_dir: Path) -> list[str]:
    out = ["## Models on held-out prompts", ""]
    if not run.models:
        return [*out, note("no evaluation (eval/): the eval stage did not run"), ""]
    rm_names = sorted({n for r in run.models.values() for n in (r.get("rm_scores") or {})})
    gold = any(r.get("gold_score") is not None for r in run.models.values())
    gold_keys = ["gold_score", "helpfulness_safe", "safety_unsafe", "false_refusal_rate"]
    headers = ["model", *(["gold score", "helpfulness (safe)", "safety (unsafe)",
               "false refusals"] if gold else []), "RM score", *[f"RM {n}" for n in rm_names],
               "KL to SFT (nats)", "win rate over SFT", "words" if gold else "tokens"]  # fmt: skip
    rows = []
    for name, r in run.models.items():
        per_rm = r.get("rm_scores") or {}
        rows.append([name, *([r.get(k) for k in gold_keys] if gold else []), r.get("rm_score"),
                     *[per_rm.get(n) for n in rm_names], _with_se(r, "kl_to_sft", "kl_to_sft_sem"),
                     _with_se(r, "win_rate_over_sft", "win_rate_over_sft_se"),
                     r.get("mean_response_words" if gold else "mean_response_tokens")])  # fmt: skip
    out += [md_table(headers, rows), ""]
    if not gold:
        out += [note("no gold metrics: the eval prompts are not the built-in world's, so "
                     "no gold judge scores them; RM score, KL and win rate are the measures"),
                ""]  # fmt: skip
    out.append(
        ("Gold metrics, RM score and words are of the greedy responses (the same responses). "
         "Gold score: safety on unsafe prompts, helpfulness on the others (0 to 1). False "
         "refusals: fraction of safe prompts refused. " if gold else
         "RM score and tokens (mean response length) are of the greedy responses. ") +
        "RM score: Llama 2 combination of the RMs (safety RM on unsafe prompts or when its "
        "sigmoid < 0.15, else helpfulness; a helpfulness RM alone: its score; a logit, not "
        "whitened); RM <name>: that RM's mean raw score. KL to SFT: to the selected SFT model, "
        "on the model's own samples at temperature 1, ± standard error. Win rate over SFT: "
        "share of prompts where the model's greedy response has the higher RM score than the "
        "selected SFT model's (ties count half), ± standard error."
    )  # fmt: skip
    notes = {r.get("kl_note") for r in run.models.values() if r.get("kl_note")}
    out += ["", *[note(f"KL to SFT, {n}") for n in sorted(notes)]]
    if not any(r.get("rm_score") is not None for r in run.models.values()):
        out += ["", note("no RM score or KL to SFT in eval/: an older eval stage")]
    if gold:
        out += ["", *image(plots.plot_models(run.models, out_dir / "models.png"), "gold metrics")]
    return [*out, ""]


def _with_se(row: Mapping[str, Any], key: str, se: str) -> str:
    """'0.420 ± 0.05', or the value alone, or '-'."""
    text = fmt(row.get(key))
    if row.get(key) is not None and row.get(se) is not None:
        text += f" ± {fmt(row[se], 2)}"
    return text


def _ppo_score_keys(run: RunData) -> tuple[list[tuple[str, str]], str | None]:
    keys = sorted({k for r in run.ppo_train for k in r if k.startswith("score/")})
    per_rm = [k for k in keys if k not in ("score/mean", "score/std", "score/shaped_mean")]
    whitened = run.ppo_config.get("combine") == "llama2" and run.ppo_config.get("whiten") in (
        None,
        True,
    )
    if per_rm and (whitened or "score/mean" not in keys):
        why = (
            "The combined training score (`score/mean`) is whitened over each batch (mean 0 "
            "by construction), so the curve shows each RM's mean raw score instead."
        )
        return [(k, k.removeprefix("score/") + " RM") for k in per_rm], why if whitened else None
    return [("score/mean", "combined score")], None


def section_ppo(run: RunData, out_dir: Path) -> list[str]:
    out = ["## PPO", ""]
    if not run.ppo_train and not run.ppo_eval:
        return [*out, note("no PPO metrics (ppo/metrics.jsonl): the ppo stage did not run"), ""]
    score_keys, why = _ppo_score_keys(run)
    temp = run.ppo_config.get("eval_temperature", 0.0)
    eval_kl = "k1 on greedy responses" if not temp else f"k1, T={temp:g}"
    path = plots.plot_ppo(
        run.ppo_train, run.ppo_eval, out_dir / "ppo_curves.png",
        score_keys=score_keys, eval_kl_label=eval_kl,
    )  # fmt: skip
    out += image(path, "PPO curves") + [""]
    if why:
        out += [why, ""]
    if run.ppo_eval:
        gold = [(k, k.removeprefix("eval/")) for k, _ in plots.GOLD_CURVES
                if any(e.get(k) is not None for e in run.ppo_eval)]  # fmt: skip
        keys = [("eval/score", "RM score"), ("eval/kl", "KL (nats)"), *gold]
        rows = [[e.get("step"), *[e.get(k) for k, _ in keys]] for e in run.ppo_eval]
        out += [
            "Held-out evaluations during PPO:",
            "",
            md_table(["step", *[h for _, h in keys]], rows),
        ]
        if not temp:
            out += ["", note("PPO evaluates greedily: its KL is the summed log-ratio "
                             "log pi/pi_SFT of the greedy responses, not a KL estimate")]  # fmt: skip
    else:
        out.append(note("PPO ran without held-out evaluation (no `eval/` keys in "
                        "ppo/metrics.jsonl): set `ppo: {eval_prompts: ..., eval_every: N}`"))  # fmt: skip
    return [*out, ""]


def section_rms(run: RunData, out_dir: Path) -> list[str]:
    out = ["## Reward models", ""]
    evals = {n: s["eval"] for n, s in run.rms.items() if isinstance(s.get("eval"), dict)}
    if not run.rms:
        return [*out, note("no reward models (rm_*/summary.json): the rm stage did not run"), ""]
    if not evals:
        return [*out, note("the RMs were trained without a held-out split: no accuracy"), ""]
    # Per strength: adjacent pairs (each label once, as Llama 2's Table 8) when present.
    per = {n: plots.rm_buckets(e)[0] for n, e in evals.items()}
    buckets = [b for b in plots.BUCKET_ORDER if any(b in p for p in per.values())]
    adjacent = all(e.get("adjacent_buckets") for e in evals.values())
    headers = ["RM", "accuracy (all pairs)", "pairs", "loss"]
    if adjacent:
        headers += ["accuracy (adjacent)", "adjacent pairs"]
    headers += [b.replace("_", " ") for b in buckets]
    rows = []
    for name, e in evals.items():
        cells = []
        for b in buckets:
            c = per[name].get(b)
            cells.append(f"{fmt(c.get('accuracy'))} (n={c.get('n_pairs')})" if c else "-")
        row = [name, e.get("accuracy"), e.get("n_pairs"), e.get("loss")]
        if adjacent:
            row += [e.get("adjacent_accuracy"), e.get("n_adjacent_pairs")]
        rows.append([*row, *cells])
    out += [md_table(headers, rows), ""]
    pairs = "adjacent pairs of each ranking (each label once)" if adjacent else "all pairs"
    out += [note(f"per-strength accuracy over {pairs}"), ""]
    out += image(plots.plot_rm_accuracy(evals, out_dir / "rm_accuracy.png"), "RM accuracy")
    small = [n for n, e in evals.items() if (e.get("n_pairs") or 0) < 50]
    if small:
        out += ["", note(f"few held-out pairs for {', '.join(small)}: accuracies are noisy")]
    return [*out, ""]


def section_select(run: RunData) -> list[str]:
    out = ["## SFT checkpoint selection", ""]
    if not run.select.get("checkpoints"):
        return [*out, note("no select/select.json: the select stage did not run"), ""]
    best = (run.select.get("best") or {}).get("name")
    rm_names = sorted({n for c in run.select["checkpoints"] for n in (c.get("per_rm") or {})})
    headers = ["checkpoint", "mean RM score", "std", "samples", *[f"RM {n}" for n in rm_names],
               "gold score", "tokens", "selected"]  # fmt: skip
    rows = [
        [c.get("name"), c.get("mean"), c.get("std"), c.get("n"),
         *[(c.get("per_rm") or {}).get(n) for n in rm_names], (c.get("gold") or {}).get("gold_score"),
         c.get("mean_response_tokens"), "**yes**" if c.get("name") == best else ""]
        for c in run.select["checkpoints"]
    ]  # fmt: skip
    temp = run.select.get("temperature")
    out += [md_table(headers, rows), ""]
    out.append(
        f"Samples of each checkpoint on {run.select.get('n_prompts', '?')} prompts at "
        f"temperature {fmt(temp)}, scored by {', '.join(run.select.get('reward') or []) or '?'} "
        f"({run.select.get('combine', '?')}); the highest mean is picked (InstructGPT)."
    )
    return [*out, ""]


def section_rs(run: RunData, out_dir: Path) -> list[str]:
    out = ["## Rejection sampling", ""]
    if not run.rs_rounds:
        return [*out, note("no rs/round-N/stats.json: the rs stage did not run (or no round "
                           "finished), so there is no max vs median curve"), ""]  # fmt: skip
    out += image(plots.plot_rs(run.rs_rounds, out_dir / "rs_max_median.png"), "RS max vs median")
    headers = ["round", "T", "prompts", "K", "mean reward (all)", "mean reward (kept)",
               "gold (all)", "gold (kept)", "gold after round"]  # fmt: skip
    rows = [
        [s.get("round"), s.get("temperature"), s.get("prompts"), s.get("k"),
         s.get("mean_reward_all"), s.get("mean_reward_kept"),
         (s.get("gold_all") or {}).get("gold_score"), (s.get("gold_kept") or {}).get("gold_score"),
         (s.get("eval") or {}).get("gold_score")]
        for s in run.rs_rounds
    ]  # fmt: skip
    out += ["", md_table(headers, rows), ""]
    out.append(
        "The gap between the max and the median among K samples is what rejection sampling "
        "gains by keeping the best (Llama 2, Figure 7). Rewards: the RMs' combined score "
        "(a logit, not whitened); gold: the gold score of those samples."
    )
    return [*out, ""]


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def render_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.md` and `run_dir/report/*.png`; returns the report's path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the --out of `rlhfkit pipeline`")
    out_dir = root / PLOT_DIR
    out_dir.mkdir(exist_ok=True)
    for name in PLOTS:  # a plot that has no data this time must not linger from before
        (out_dir / name).unlink(missing_ok=True)

    run = load_run(root)
    lines = [
        *section_header(run),
        *section_models(run, out_dir),
        *methods.section_methods(run),
        *section_ppo(run, out_dir),
        *section_rms(run, out_dir),
        *section_select(run),
        *section_rs(run, out_dir),
        *papers.section_overopt(run, out_dir),
        *papers.section_papers(run, out_dir),
    ]
    path = root / REPORT_MD
    write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def run_report(cfg: Any) -> Mapping[str, Any]:
    """`rlhfkit report RUN` (or `--run RUN`)."""
    if cfg.run and cfg.run_dir and Path(cfg.run) != Path(cfg.run_dir):
        raise UserError(f"two run folders given: {cfg.run_dir} and --run {cfg.run}")
    folder = cfg.run or cfg.run_dir
    if not folder:
        raise UserError("give the run folder: rlhfkit report RUN (the --out of the pipeline)")
    path = render_report(folder)
    plots_made = sorted(p.name for p in (path.parent / PLOT_DIR).glob("*.png"))
    print(f"wrote {path} with {len(plots_made)} plot(s) in {path.parent / PLOT_DIR}")
    return {"report": str(path), "plots": plots_made}
