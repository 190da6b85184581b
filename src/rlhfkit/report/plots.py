"""The PNG plots of `rlhfkit report` (matplotlib, no pyplot: no global backend state).

Each function draws one figure from plain data (lists and dicts read by `report.run`) and
returns the path it wrote, or None when it has nothing to draw. Every axis has a title,
labels with units, and a legend where it holds more than one series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.files import atomic_file

BUCKET_ORDER = ("significantly_better", "better", "slightly_better", "negligibly_better")
RM_UNIT = "RM score (logit)"


def _figure(width: float, height: float) -> Any:
    # lazy: matplotlib takes about a second to import, paid only when a plot is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key)) and _finite(r.get("step"))]
    return [p[0] for p in pts], [p[1] for p in pts]


# ---------------------------------------------------------------------------------------


GOLD_BARS = (
    ("gold_score", "gold score (all prompts)"),
    ("helpfulness_safe", "helpfulness (safe prompts)"),
    ("safety_unsafe", "safety (unsafe prompts)"),
    ("false_refusal_rate", "false refusals (safe prompts)"),
)


def plot_models(rows: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Grouped bars: each model's gold metrics on the held-out prompts."""
    if not rows:
        return None
    names = list(rows)
    fig = _figure(max(7.0, 1.3 * len(names) + 2.5), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(GOLD_BARS)
    for j, (key, label) in enumerate(GOLD_BARS):
        xs = [i + (j - (len(GOLD_BARS) - 1) / 2) * width for i in range(len(names))]
        ys = [rows[n].get(key) if _finite(rows[n].get(key)) else None for n in names]
        bars = ax.bar(xs, [y or 0.0 for y in ys], width, label=label, color=f"C{j}")
        # values on the bars: a 0 bar is invisible, and a missing metric must not look like 0
        ax.bar_label(bars, ["-" if y is None else f"{y:.2f}" for y in ys], fontsize=6, padding=1)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("gold judge, mean (0 to 1)")
    ax.set_xlabel("model")
    ax.set_title("Gold metrics of every model on held-out prompts (greedy responses)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------


GOLD_CURVES = (
    ("eval/gold_score", "gold score (all prompts)"),
    ("eval/helpfulness", "helpfulness (all prompts)"),
    ("eval/safety_unsafe", "safety (unsafe prompts)"),
    ("eval/false_refusal_rate", "false refusals (safe prompts)"),
)


def plot_ppo(
    train: Sequence[Mapping[str, Any]],
    evals: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    score_keys: Sequence[tuple[str, str]],
    eval_kl_label: str,
) -> Path | None:
    """Three panels against the PPO step: RM score, KL to SFT, gold metrics on eval prompts.

    score_keys: (metrics key, legend label) of the training scores to draw."""
    if not train and not evals:
        return None
    fig = _figure(15.0, 5.4)
    ax_score, ax_kl, ax_gold = fig.subplots(1, 3)

    for key, label in score_keys:
        ax_score.plot(*_series(train, key), "-", label=f"rollouts: {label}")
    if any("eval/score" in r for r in evals):
        ax_score.plot(*_series(evals, "eval/score"), "o-", color="k", label="held-out: combined")
    ax_score.set_title("Reward-model score")
    ax_score.set_ylabel(f"{RM_UNIT}, mean over samples")

    ax_kl.plot(*_series(train, "train/kl"), "-", label="rollouts: k1 (penalised)")
    ax_kl.plot(*_series(train, "train/kl_k3"), "--", label="rollouts: k3")
    if any("eval/kl" in r for r in evals):
        ax_kl.plot(*_series(evals, "eval/kl"), "o-", color="k", label=f"held-out: {eval_kl_label}")
    ax_kl.set_title("KL to the SFT model, per sequence")
    ax_kl.set_ylabel("KL (nats, summed over response tokens)")

    if any("eval/gold_score" in r for r in evals):
        for j, (key, label) in enumerate(GOLD_CURVES):
            ax_gold.plot(*_series(evals, key), "o-", color=f"C{j}", label=label)
        ax_gold.set_ylim(-0.03, 1.03)
        ax_gold.set_ylabel("gold judge, mean (0 to 1)")
    else:
        _empty_note(
            ax_gold, "no held-out evaluation during PPO\n(ppo: --eval-prompts, --eval-every)"
        )
    ax_gold.set_title("Gold metrics on held-out prompts")

    for ax in (ax_score, ax_kl, ax_gold):
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:  # below the panel: never over the curves
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.suptitle("PPO training curves")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------


def rm_buckets(ev: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per-strength cells, overall cell) of one RM eval: ADJACENT pairs when the eval has
    them (each labelled comparison once, as Llama 2's Table 8), else all pairs (older runs)."""
    if ev.get("adjacent_buckets"):
        overall = {"accuracy": ev.get("adjacent_accuracy"), "n_pairs": ev.get("n_adjacent_pairs")}
        return dict(ev["adjacent_buckets"]), overall
    return dict(ev.get("buckets") or {}), dict(ev)


def plot_rm_accuracy(rms: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Grouped bars: held-out pairwise accuracy of each RM per preference-strength bucket
    (adjacent pairs when the evals have them: `rm_buckets`)."""
    rms = {n: e for n, e in rms.items() if rm_buckets(e)[0]}
    if not rms:
        return None
    adjacent = all(e.get("adjacent_buckets") for e in rms.values())
    seen = {b for e in rms.values() for b in rm_buckets(e)[0]}
    buckets = [b for b in BUCKET_ORDER if b in seen] + sorted(seen - set(BUCKET_ORDER))
    labels = [*(b.replace("_", " ") for b in buckets), "all"]
    fig = _figure(max(7.0, 1.6 * len(labels) + 1.5), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(rms)
    for j, (name, ev) in enumerate(rms.items()):
        per_strength, overall = rm_buckets(ev)
        cells = [per_strength.get(b, {}) for b in buckets] + [overall]
        xs = [i + (j - (len(rms) - 1) / 2) * width for i in range(len(labels))]
        ys = [c.get("accuracy") if _finite(c.get("accuracy")) else 0.0 for c in cells]
        bars = ax.bar(xs, ys, width, label=f"{name} RM", color=f"C{j}")
        for bar, c in zip(bars, cells, strict=True):
            text = f"n={c['n_pairs']}" if c.get("n_pairs") else "no pairs"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize="x-small")  # fmt: skip
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.1)
    pairs = "adjacent pairs of each ranking" if adjacent else "all pairs"
    ax.set_xlabel(f"preference strength of the pair (labeller; {pairs})")
    ax.set_ylabel("pairwise accuracy (fraction of held-out pairs)")
    ax.set_title("Reward-model accuracy by preference strength (held-out rankings)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------


def plot_rs(rounds: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Per round, max (solid) and median (dashed) reward among the first k samples vs k."""
    rounds = [r for r in rounds if r.get("max_median_at_k")]
    if not rounds:
        return None
    fig = _figure(7.0, 4.4)
    ax = fig.add_subplot()
    for i, st in enumerate(rounds):
        curve = st["max_median_at_k"]
        ks = [row["k"] for row in curve]
        temp = f", T={st['temperature']:g}" if _finite(st.get("temperature")) else ""
        name = f"round {st.get('round', i + 1)}"
        ax.plot(ks, [row["max"] for row in curve], "-o", color=f"C{i}", label=f"{name}: max{temp}")
        ax.plot(ks, [row["median"] for row in curve], "--s", color=f"C{i}", markersize=4,
                label=f"{name}: median")  # fmt: skip
    ax.set_xticks(sorted({row["k"] for st in rounds for row in st["max_median_at_k"]}))
    ax.set_xlabel("K (samples per prompt)")
    ax.set_ylabel(f"reward, {RM_UNIT}, mean over prompts")
    ax.set_title("Rejection sampling: max vs median reward among K samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------


@dataclass
class OveroptSeries:
    """One row of the over-optimisation plot: points (KL, proxy reward, gold reward)."""

    title: str
    kl_label: str
    kl: list[float]
    proxy: list[float]
    gold: list[float]
    labels: list[str]
    steps: list[float] | None = None  # a trajectory: points coloured by training step


def plot_overoptimisation(series: Sequence[OveroptSeries], path: Path) -> Path | None:
    """Gold and proxy (RM) reward against KL to SFT (Gao et al. 2022): one row per source,
    proxy on the left, gold on the right. A trajectory's points are joined in step order
    and coloured by step (labels on the first and last only); separate models are labelled."""
    series = [s for s in series if s.kl]
    if not series:
        return None
    fig = _figure(12.5, 4.4 * len(series))
    axes = fig.subplots(len(series), 2, squeeze=False)
    for row, s in zip(axes, series, strict=True):
        for ax, ys, what, color in (
            (row[0], s.proxy, f"proxy reward: {RM_UNIT}", "C0"),
            (row[1], s.gold, "gold reward: gold score (0 to 1)", "C3"),
        ):
            ax.set_title(f"{s.title}: {what.split(':')[0]} vs KL")
            idx = [i for i, y in enumerate(ys) if _finite(y) and _finite(s.kl[i])]
            if not idx:
                _empty_note(ax, "not measured")
                continue
            xs, yv = [s.kl[i] for i in idx], [ys[i] for i in idx]
            if s.steps is not None:
                ax.plot(xs, yv, "-", color="grey", linewidth=0.8, zorder=1)
                dots = ax.scatter(xs, yv, c=[s.steps[i] for i in idx], cmap="viridis", zorder=2)
                fig.colorbar(dots, ax=ax, label="training step")
                ends = {idx[0], idx[-1]}
                pts = [(s.kl[i], ys[i], s.labels[i]) for i in idx if i in ends]
            else:
                ax.plot(xs, yv, "o", color=color)
                pts = [(s.kl[i], ys[i], s.labels[i]) for i in idx]
            for (x, y), lab in _merge_labels(pts).items():
                ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize="x-small")  # fmt: skip
            ax.margins(x=0.12, y=0.1)  # room for the point labels
            ax.set_xlabel(s.kl_label)
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
    fig.suptitle("Over-optimisation: proxy (RM) and gold reward against KL to SFT")
    fig.tight_layout()
    return _save(fig, path)


def _merge_labels(pts: Sequence[tuple[float, float, str]]) -> dict[tuple[float, float], str]:
    """One label per distinct point ("sft-epoch-2 = sft-selected" for one model twice)."""
    out: dict[tuple[float, float], str] = {}
    for x, y, lab in pts:
        key = (round(x, 9), round(y, 9))
        out[key] = f"{out[key]} = {lab}" if key in out else lab
    return out


def plot_max_median(rounds: Sequence[dict[str, Any]], path: Path) -> Path:
    """`rs_max_median.png`: per round, max (solid) and median (dashed) reward among k
    samples against k. Written atomically; no pyplot (no global backend state)."""
    from matplotlib.ticker import MaxNLocator  # lazy, as in `_figure`

    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for i, st in enumerate(rounds):
        ks = [row["k"] for row in st["max_median_at_k"]]
        color = f"C{i % 10}"
        temp = f", T={st['temperature']:g}" if "temperature" in st else ""
        ax.plot(ks, [row["max"] for row in st["max_median_at_k"]], "-o", color=color,
                markersize=3, label=f"round {st['round']} max{temp}")  # fmt: skip
        ax.plot(ks, [row["median"] for row in st["max_median_at_k"]], "--", color=color,
                label=f"round {st['round']} median")  # fmt: skip
    ax.set_title("Rejection sampling: max and median reward among k samples")
    ax.set_xlabel("k (samples per prompt)")
    ax.set_ylabel("reward (mean over prompts)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi=120)
