"""The report's sections that set this run beside the papers, with their plots:

- Llama 2 (Touvron et al. 2023), Table 8: reward-model accuracy per preference strength,
  ours next to the printed values;
- Llama 2, Figure 7: max and median reward among K samples, from the `bon` stage's N
  samples per held-out prompt (sampled once), proxy (RM) and gold reward of the same picks;
- over-optimisation (Gao et al. 2022): gold vs proxy reward against KL, then the fitted
  forms R_bon(d) = d (a - b d) on best-of-n and R_RL(d) = d (a - b log d) on PPO's held-out
  evaluations, d = sqrt(KL), with a, b and R^2 (`gao`).

`report.render.render_report` calls the `section_*` functions; each returns markdown lines and
draws its plot into the report's folder, or gives a note when its stage left nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlhfkit.report import gao, plots
from rlhfkit.report.run import RunData, fmt, image, md_table, note, read_json, read_jsonl

TABLE8_PNG, FIGURE7_PNG, GAO_PNG = "llama2_table8.png", "llama2_figure7.png", "gao_fits.png"

# Llama 2, Table 8: each RM on its own Meta test set, accuracy (%) per preference strength.
LLAMA2_TABLE8: dict[str, dict[str, Any]] = {
    "helpfulness": {"test set": "Meta Helpful", "significantly_better": 80.7, "better": 67.5,
                    "slightly_better": 60.9, "negligibly_better": 54.7, "average": 63.2},
    "safety": {"test set": "Meta Safety", "significantly_better": 94.3, "better": 76.3,
               "slightly_better": 65.7, "negligibly_better": 55.3, "average": 64.5},
}  # fmt: skip
COLUMNS = (*plots.BUCKET_ORDER, "average")


# ---------------------------------------------------------------------------------------
# Llama 2, Table 8
# ---------------------------------------------------------------------------------------


def table8_ours(run: RunData) -> dict[str, dict[str, tuple[float | None, int | None]]]:
    """name -> column -> (accuracy in %, pairs) of our RMs on their held-out rankings."""
    out = {}
    for name, summary in run.rms.items():
        ev = summary.get("eval")
        if not isinstance(ev, dict):
            continue
        per, overall = plots.rm_buckets(ev)
        cells = {**per, "average": overall}
        out[name] = {
            col: (100 * c["accuracy"] if plots._finite(c.get("accuracy")) else None,
                  c.get("n_pairs"))
            for col in COLUMNS if (c := cells.get(col))
        }  # fmt: skip
    return out


def section_table8(run: RunData, out_dir: Path) -> list[str]:
    out = ["### Llama 2, Table 8: reward-model accuracy per preference strength", ""]
    ours = table8_ours(run)
    if not ours:
        return [*out, note("no held-out RM evaluation (rm_*/summary.json 'eval'): the rm "
                           "stage did not run or had no eval split"), ""]  # fmt: skip
    adjacent = all((s.get("eval") or {}).get("adjacent_buckets") for s in run.rms.values())
    rows = []
    for name in sorted(set(ours) | set(LLAMA2_TABLE8)):
        if name in ours:
            cells = [ours[name].get(c, (None, None)) for c in COLUMNS]
            rows.append([f"{name} RM (this run)", f"own held-out {name} rankings",
                         *[f"{fmt(a, 1)} (n={n})" if a is not None else "-" for a, n in cells]])  # fmt: skip
        if name in LLAMA2_TABLE8:
            paper = LLAMA2_TABLE8[name]
            rows.append([f"{name} RM (Llama 2)", paper["test set"],
                         *[f"{paper[c]:.1f}" for c in COLUMNS]])  # fmt: skip
    headers = ["reward model", "test set", *[c.replace("_", " ") for c in COLUMNS]]
    out += [md_table(headers, rows), ""]
    pairs = "adjacent pairs of each ranking only (each labelled comparison once, as Llama 2)"
    out.append(
        "Accuracy (%) of each reward model on its own held-out rankings, counting "
        f"{pairs if adjacent else 'all pairs'}, by how strongly the labeller preferred the "
        "chosen response; "
        "'average' is over all those pairs, n the number of pairs. Llama 2's rows are its "
        "printed Table 8. In both, accuracy should fall from 'significantly better' towards "
        "chance (50%) at 'negligibly better': close calls are hard to learn."
    )
    out += ["", *image(plot_table8(ours, out_dir / TABLE8_PNG), "RM accuracy vs Llama 2"), ""]
    return out


def plot_table8(ours: dict[str, dict[str, tuple[float | None, int | None]]], path: Path) -> Path:
    names = sorted(ours)
    fig = plots._figure(6.2 * len(names), 4.6)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    labels = ["significantly\nbetter", "better", "slightly\nbetter", "negligibly\nbetter",
              "average\n(all pairs)"]  # fmt: skip
    for j, (ax, name) in enumerate(zip(axes, names, strict=True)):
        xs = range(len(COLUMNS))
        mine = [ours[name].get(c, (None, None))[0] for c in COLUMNS]
        counts = [ours[name].get(c, (None, None))[1] for c in COLUMNS]
        bars = ax.bar([x - 0.2 for x in xs], [y or 0.0 for y in mine], 0.4, color=f"C{j}",
                      label="this run")  # fmt: skip
        # Each bar says how many pairs it rests on: a bucket of 1 pair reads 0 or 100.
        ax.bar_label(bars, ["-" if y is None else f"{y:.0f}\nn={n}" if n is not None else
                            f"{y:.0f}" for y, n in zip(mine, counts, strict=True)], fontsize=7)  # fmt: skip
        if name in LLAMA2_TABLE8:
            paper = [LLAMA2_TABLE8[name][c] for c in COLUMNS]
            bars = ax.bar([x + 0.2 for x in xs], paper, 0.4, color="lightgrey", hatch="//",
                          edgecolor="grey", label=f"Llama 2 ({LLAMA2_TABLE8[name]['test set']})")  # fmt: skip
            ax.bar_label(bars, [f"{y:.0f}" for y in paper], fontsize=7)
        ax.axhline(50, color="k", linestyle="--", linewidth=1, label="chance (50%)")
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_xlabel("labeller's preference strength of the pair")
        ax.set_ylabel("accuracy on held-out pairs (%)")
        ax.set_title(f"{name} reward model, on its own test set")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="upper right")
    fig.suptitle("Reward-model accuracy by preference strength: this run vs Llama 2 (Table 8)")
    fig.tight_layout()
    return plots._save(fig, path)


# ---------------------------------------------------------------------------------------
# Llama 2, Figure 7: best-of-K from the bon stage
# ---------------------------------------------------------------------------------------


def load_bon(root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per-prompt rows of bon/samples.jsonl with N proxy and gold scores, summary.json);
    rows with a missing or short list are dropped (every row keeps the smallest N)."""
    rows = [r for r in read_jsonl(root / "bon" / "samples.jsonl")
            if isinstance(r.get("proxy"), list) and isinstance(r.get("gold"), list)]  # fmt: skip
    rows = [r for r in rows if r["proxy"] and len(r["proxy"]) == len(r["gold"])]
    rows = [r for r in rows if all(plots._finite(x) for x in r["proxy"] + r["gold"])]
    return rows, read_json(root / "bon" / "summary.json") or {}


def bon_curve(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    n = min(len(r["proxy"]) for r in rows)
    return gao.best_of_k_curve([r["proxy"][:n] for r in rows], [r["gold"][:n] for r in rows],
                               range(1, n + 1))  # fmt: skip


def section_figure7(rows: list[dict[str, Any]], info: dict[str, Any], out_dir: Path) -> list[str]:
    out = ["### Llama 2, Figure 7: max and median reward among K samples", ""]
    if not rows:
        if info.get("gold") is False:  # bon ran, on prompts no gold judge scores
            return [*out, note("the bon stage's prompts are not the built-in world's: no gold "
                               "scores to set beside the proxy"), ""]  # fmt: skip
        return [*out, note("no bon/samples.jsonl: the bon stage did not run"), ""]
    curve = bon_curve(rows)
    n = curve[-1]["k"]
    out += image(plot_figure7(curve, out_dir / FIGURE7_PNG), "max and median reward vs K") + [""]
    shown = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n} | {n})
    table = [[c["k"], c["proxy_max"], c["proxy_median"], c["proxy_max"] - c["proxy_median"],
              c["gold_max"], c["gold_median"]] for c in curve if c["k"] in shown]  # fmt: skip
    out += [md_table(["K", "proxy: max", "proxy: median", "proxy: max - median",
                      "gold of the max pick", "gold of the median pick"], table), ""]  # fmt: skip
    model = Path(str(info.get("model", "?"))).name
    out.append(
        f"{n} samples per prompt from the selected SFT model ({model}) on {len(rows)} held-out "
        f"prompts at temperature {info.get('temperature', '?')}, sampled once; each K's "
        "values are averaged over every K-subset of them, then over prompts. Proxy: the "
        "reward models' combined score (a logit); gold: the world's judges' score (0 to 1) of "
        "the SAME samples the proxy picked. In Llama 2 the max grows with K while the median "
        "stays flat: the gap is what rejection sampling gains. Where the gold of the max pick "
        "stops rising while the proxy keeps climbing, best-of-K over-optimises the RMs."
    )
    return [*out, ""]


def plot_figure7(curve: list[dict[str, float]], path: Path) -> Path:
    fig = plots._figure(12.5, 4.4)
    ax_p, ax_g = fig.subplots(1, 2)
    ks = [c["k"] for c in curve]
    for ax, what, unit, pick in ((ax_p, "proxy", plots.RM_UNIT, ""),
                                 (ax_g, "gold", "gold score (0 to 1)", " pick by proxy")):  # fmt: skip
        ax.plot(ks, [c[f"{what}_max"] for c in curve], "-o", markersize=3,
                label=f"max{pick} (best of K)")  # fmt: skip
        ax.plot(ks, [c[f"{what}_median"] for c in curve], "--s", markersize=3,
                label=f"median{pick}")  # fmt: skip
        ax.set_xlabel("K (samples per prompt, drawn from one set of samples)")
        ax.set_ylabel(f"{unit}, mean over prompts")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax_p.set_title("Proxy reward (reward models) among K samples")
    ax_g.set_title("Gold reward of the same picks (ranked by proxy)")
    fig.suptitle("Max and median reward among K samples of the SFT model (Llama 2, Figure 7)")
    fig.tight_layout()
    return plots._save(fig, path)


# ---------------------------------------------------------------------------------------
# Over-optimisation: points against KL, then Gao et al.'s fits
# ---------------------------------------------------------------------------------------


def overopt_series(run: RunData) -> list[plots.OveroptSeries]:
    out = []
    pts = [e for e in run.ppo_eval if isinstance(e.get("eval/kl"), int | float)]
    if pts:
        kl_label = (
            "log pi/pi_SFT of greedy responses (nats)" if not _eval_temperature(run)
            else "KL to SFT, k1 (nats)"
        )  # fmt: skip
        out.append(plots.OveroptSeries(
            "PPO during training", kl_label, [e["eval/kl"] for e in pts],
            [e.get("eval/score") for e in pts], [e.get("eval/gold_score") for e in pts],
            [f"step {e.get('step')}" for e in pts], steps=[e.get("step") or 0 for e in pts],
        ))  # fmt: skip
    # The base model is left out: it is no fine-tune of SFT, and its KL (large) would
    # squeeze every other point against the axis. The models table has its numbers.
    sampled = {n: r["sampled"] for n, r in run.models.items() if r.get("sampled") and n != "base"}
    sampled = {n: s for n, s in sampled.items() if isinstance(s.get("kl_to_sft"), int | float)}
    if sampled:
        out.append(plots.OveroptSeries(
            "Every model (samples at T=1)", "KL to SFT, k1 on own samples (nats)",
            [s["kl_to_sft"] for s in sampled.values()], [s.get("rm_score") for s in sampled.values()],
            [s.get("gold_score") for s in sampled.values()], list(sampled),
        ))  # fmt: skip
    return out


def _eval_temperature(run: RunData) -> float:
    return run.ppo_config.get("eval_temperature", 0.0) or 0.0


def section_overopt(run: RunData, out_dir: Path) -> list[str]:
    out = ["## Over-optimisation: gold vs proxy reward against KL", ""]
    path = plots.plot_overoptimisation(overopt_series(run), out_dir / "overopt.png")
    if path is None:
        return [*out, note("no points: needs PPO held-out evaluations or the eval stage"), ""]
    out += image(path, "gold and proxy reward vs KL") + [""]
    if not any(g is not None for s in overopt_series(run) for g in s.gold):
        out += [note("no gold reward: the prompts are not the built-in world's; the plot "
                     "shows the proxy (RM) reward against KL only"), ""]  # fmt: skip
    out.append(
        "Proxy: the reward models' combined score, what RL maximises; gold: the world's "
        "gold judges. Gao et al. (2022): as KL from the initial policy grows, the proxy "
        "keeps rising while the gold reward peaks and then falls. Each point is one set of "
        "responses scored both ways. The base model is left out of the bottom row (it is "
        "not fine-tuned from SFT); its KL is in the models table."
    )
    return [*out, ""]


def gao_points(run: RunData, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """source -> {d, proxy, gold}: best-of-n (d = sqrt(log n - (n-1)/n), the reward of the
    best-of-n pick minus n = 1's) and PPO's held-out evaluations (d = sqrt(KL - the first
    evaluation's KL), the reward minus the first evaluation's), each in order."""
    out: dict[str, dict[str, Any]] = {}
    if rows:
        curve = bon_curve(rows)
        out["bon"] = {"d": [math.sqrt(gao.kl_bon(c["k"])) for c in curve],
                      "proxy": [c["proxy_max"] - curve[0]["proxy_max"] for c in curve],
                      "gold": [c["gold_max"] - curve[0]["gold_max"] for c in curve]}  # fmt: skip
    keys = ("eval/kl", "eval/score", "eval/gold_score")
    evals = [e for e in run.ppo_eval if all(plots._finite(e.get(k)) for k in keys)]
    evals.sort(key=lambda e: e.get("step") or 0)
    if evals:
        first = evals[0]
        out["rl"] = {
            "d": [math.sqrt(max(e["eval/kl"] - first["eval/kl"], 0.0)) for e in evals],
            "proxy": [e["eval/score"] - first["eval/score"] for e in evals],
            "gold": [e["eval/gold_score"] - first["eval/gold_score"] for e in evals],
        }
    return out


def gao_fits(points: dict[str, dict[str, Any]]) -> dict[tuple[str, str], gao.Fit]:
    """(source, "proxy" | "gold") -> the fit, for sources with at least 3 points."""
    fit = {"bon": gao.fit_bon, "rl": gao.fit_rl}
    return {(src, what): fit[src](p["d"], p[what]) for src, p in points.items()
            if len(p["d"]) >= 3 for what in ("proxy", "gold")}  # fmt: skip


SOURCES = {"bon": ("best-of-n (bon stage)", "d (a - b d)"),
           "rl": ("PPO held-out evaluations", "d (a - b log d)")}  # fmt: skip


def section_gao(run: RunData, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    out = ["### Gao et al. (2022): fitted reward against sqrt(KL)", ""]
    points = gao_points(run, rows)
    fits = gao_fits(points)
    if not fits:
        return [*out, note("no fit: needs the bon stage's samples or at least 3 PPO held-out "
                           "evaluations"), ""]  # fmt: skip
    out += image(plot_gao(points, fits, out_dir / GAO_PNG), "Gao et al. fits") + [""]
    table = []
    for (src, what), f in fits.items():
        peak = gao.peak_d(src, f.a, f.b)
        where = "-" if peak is None else fmt(peak**2)
        if peak is not None and peak > max(points[src]["d"]):
            where += " (beyond the points)"
        table.append([SOURCES[src][0], f"R = {SOURCES[src][1]}", what, f.a, f.b, f.r2, f.n, where])
    out += [md_table(["points", "form", "reward", "a", "b", "R^2", "points", "peak at KL (nats)"],
                     table), ""]  # fmt: skip
    kl = "the summed log-ratio of greedy responses" if not _eval_temperature(run) else "k1"
    out.append(
        "d = sqrt(KL to the SFT model); R = reward minus its value at d = 0, in the reward's "
        "own unit (proxy: RM logit; gold: gold score). Best-of-n: KL = log n - (n - 1)/n for "
        "n = 1 .. N, reward of the best-of-n pick by proxy. PPO: KL at each held-out "
        f"evaluation ({kl}) minus the first one's. a, b: least squares; R^2 = 1 - SS_res / "
        "SS_tot. Gao et al. found the gold reward to follow these forms with b > 0: it peaks "
        "(at d = a / 2b for best-of-n, d = exp(a/b - 1) for RL) and then falls while the proxy "
        "keeps rising; 'peak at KL' is that point on this run, where over-optimisation starts."
    )
    return [*out, ""]


def plot_gao(points: dict[str, dict[str, Any]], fits: dict[tuple[str, str], gao.Fit],
             path: Path) -> Path:  # fmt: skip
    import numpy as np

    sources = [s for s in ("bon", "rl") if (s, "gold") in fits]
    fig = plots._figure(12.5, 4.4 * len(sources))
    axes = fig.subplots(len(sources), 2, squeeze=False)
    form = {"bon": gao.bon_form, "rl": gao.rl_form}
    for row, src in zip(axes, sources, strict=True):
        p = points[src]
        grid = np.linspace(0.0, max(p["d"]) * 1.1 or 1.0, 200)
        for ax, what, unit, color in ((row[0], "proxy", plots.RM_UNIT, "C0"),
                                      (row[1], "gold", "gold score (0 to 1)", "C3")):  # fmt: skip
            f = fits[(src, what)]
            ax.plot(p["d"], p[what], "o", color=color, markersize=4, label="measured")
            ax.plot(grid, form[src](grid, f.a, f.b), "-", color="k",
                    label=f"fit: a={f.a:.3g}, b={f.b:.3g}, R²={f.r2:.2f}")  # fmt: skip
            ax.set_title(f"{SOURCES[src][0]}: {what} reward, R = {SOURCES[src][1]}")
            ax.set_xlabel("d = sqrt(KL to SFT) (sqrt nats)")
            ax.set_ylabel(f"{what} reward gain ({unit})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle("Over-optimisation fits (Gao et al. 2022): reward gain against sqrt(KL)")
    fig.tight_layout()
    return plots._save(fig, path)


def section_papers(run: RunData, out_dir: Path) -> list[str]:
    rows, info = load_bon(run.root)
    return [
        "## Beside the papers",
        "",
        "This run's numbers next to what Llama 2 and Gao et al. (2022) report.",
        "",
        *section_table8(run, out_dir),
        *section_figure7(rows, info, out_dir),
        *section_gao(run, rows, out_dir),
    ]
