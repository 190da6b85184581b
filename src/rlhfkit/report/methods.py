"""The report's method table: the ways this run turned the selected SFT model into a better
one (best-of-n, PPO, rejection sampling, RLOO, DPO) side by side, by the gold judges, by
what each drifted from SFT, and by what each one's own stage cost, then beside AlpacaFarm's
table of the same methods (Dubois et al. 2023).

Per method: gold helpfulness on safe prompts, gold safety on unsafe prompts, false
refusals, the gold win rate over the selected SFT model (± its standard error over
prompts), KL to SFT, the CPU seconds of the method's own stage (`pipeline.json`'s
`cpu_seconds`; the stages every method shares, sft, label, rm and select, are left out),
and the gold gain (helpfulness on safe prompts minus SFT's) per CPU-minute of that stage.

Best-of-n is no trained model: its row is the proxy's pick among the `bon` stage's N
samples per prompt, on that stage's prompts (the first of the eval prompts), each pick
judged against SFT's greedy response to the same prompt; its KL is the analytic
log N - (N - 1)/N, its cost sampling at answer time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlhfkit.report import gao
from rlhfkit.report.run import RunData, fmt, md_table, note

BASELINE = "sft-selected"
METHODS = ("bon", "ppo", "rs", "rloo", "dpo")  # in the table's order, after SFT

# AlpacaFarm (Dubois et al. 2023): simulated win rate (%) against Davinci003 of each
# method on LLaMA 7B, and the stage of this run that is its analogue (expert
# iteration: fine-tune on the reward model's best of several samples, our rs).
ALPACAFARM: tuple[tuple[str, float, str], ...] = (
    ("PPO", 46.8, "ppo"),
    ("DPO", 46.8, "dpo"),
    ("best-of-1024", 45.0, "bon"),
    ("expert iteration", 41.9, "rs"),
    ("SFT", 39.2, BASELINE),
)


# ---------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------


def method_rows(run: RunData) -> dict[str, dict[str, Any]]:
    """name -> {helpfulness_safe, safety_unsafe, false_refusal_rate, win, win_se, kl,
    cpu_seconds, gain, gain_per_cpu_minute, n}: SFT first, then each method present."""
    sft = run.models.get(BASELINE)
    if not sft or sft.get("helpfulness_safe") is None:
        return {}
    rows = {BASELINE: _model_row(sft, None)}
    rows[BASELINE].update(win=0.5, kl=0.0)  # itself: every prompt a tie, no drift
    for name in METHODS:
        if name == "bon":
            row = bon_row(run)
        elif name in run.models:
            row = _model_row(run.models[name], _cpu(run, name))
        else:
            continue
        if row is not None:
            base = row.pop("sft", sft)  # bon: SFT on the bon stage's prompts
            rows[name] = {**row, **gain(row, base)}
    return rows


def _cpu(run: RunData, stage: str) -> float | None:
    return ((run.pipeline.get("stages") or {}).get(stage) or {}).get("cpu_seconds")


def _model_row(r: Mapping[str, Any], cpu: float | None) -> dict[str, Any]:
    return {
        "helpfulness_safe": r.get("helpfulness_safe"),
        "safety_unsafe": r.get("safety_unsafe"),
        "false_refusal_rate": r.get("false_refusal_rate"),
        "win": r.get("gold_win_rate_over_sft"),
        "win_se": r.get("gold_win_rate_over_sft_se"),
        "kl": r.get("kl_to_sft"),
        "kl_se": r.get("kl_to_sft_sem"),
        "cpu_seconds": cpu,
        "n": r.get("n"),
    }


def gain(row: Mapping[str, Any], sft: Mapping[str, Any]) -> dict[str, Any]:
    """Gold helpfulness on safe prompts minus SFT's, and that per CPU-minute of the stage."""
    mine, base = row.get("helpfulness_safe"), sft.get("helpfulness_safe")
    if mine is None or base is None:
        return {"gain": None, "gain_per_cpu_minute": None}
    cpu = row.get("cpu_seconds")
    per_minute = (mine - base) / (cpu / 60) if cpu else None
    return {"gain": mine - base, "gain_per_cpu_minute": per_minute}


def bon_row(run: RunData) -> dict[str, Any] | None:
    """Best-of-N by the proxy, from bon/samples.jsonl, judged against SFT's greedy responses
    to the same prompts (eval/sft-selected.json); `sft` holds SFT's metrics on them."""
    from rlhfkit.loops.evaluate import win_rate
    from rlhfkit.report.papers import load_bon
    from rlhfkit.world import gold_scores

    rows, _ = load_bon(run.root)
    greedy = {
        r.get("prompt"): r.get("response") for r in run.models[BASELINE].get("per_prompt") or []
    }
    rows = [r for r in rows if isinstance(greedy.get(r["prompt"]), str)]
    if not rows:
        return None
    prompts = [r["prompt"] for r in rows]
    picks = [r["responses"][max(range(len(r["proxy"])), key=lambda i: r["proxy"][i])]
             for r in rows]  # fmt: skip
    sft = [greedy[p] for p in prompts]
    unsafe = [bool(r["safety"]) for r in rows]
    w = win_rate(gold_scores(prompts, picks, unsafe), gold_scores(prompts, sft, unsafe))
    n = min(len(r["proxy"]) for r in rows)
    return {
        **_metrics(prompts, picks, unsafe),
        "win": w["win_rate"],
        "win_se": w["win_rate_se"],
        "kl": gao.kl_bon(n),
        "kl_se": None,
        "cpu_seconds": _cpu(run, "bon"),
        "n": len(rows),
        "samples": n,
        "sft": _metrics(prompts, sft, unsafe),
    }


def _metrics(prompts: Sequence[str], responses: Sequence[str], unsafe: Sequence[bool]) -> dict:
    """The method table's gold columns of `responses` (the world's `summarize`)."""
    from rlhfkit.world import summarize

    m = summarize(prompts, responses, unsafe)
    return {k: m[k] for k in ("helpfulness_safe", "safety_unsafe", "false_refusal_rate")}


# ---------------------------------------------------------------------------------------
# Beside AlpacaFarm: do the methods come in the same order?
# ---------------------------------------------------------------------------------------


def ordering_sentence(rows: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One sentence comparing AlpacaFarm's order of the methods with this run's (by gold win
    rate over SFT), computed: the pairs AlpacaFarm orders strictly that this run orders the
    same way. None with fewer than two methods of both."""
    ours = {run: rows[run]["win"] for _, _, run in ALPACAFARM
            if run in rows and rows[run].get("win") is not None}  # fmt: skip
    paper = {run: pct for _, pct, run in ALPACAFARM if run in ours}
    if len(ours) < 2:
        return None
    pairs = [(a, b) for a in paper for b in paper if paper[a] > paper[b]]
    same = sum(ours[a] > ours[b] for a, b in pairs)
    theirs = _order({name: pct for name, pct, run in ALPACAFARM if run in ours}, "{:.1f}")
    mine = _order(ours, "{:.3f}")
    return (
        f"AlpacaFarm orders {theirs} (simulated win rate vs Davinci003, %); this run, by gold "
        f"win rate over SFT, orders {mine}: of the {len(pairs)} pairs AlpacaFarm orders "
        f"strictly, this run orders {same} the same way."
    )


def _order(values: Mapping[str, float], form: str) -> str:
    """'a (0.6) > b (0.5) = c (0.5)': highest first, '=' between equal values."""
    items = sorted(values.items(), key=lambda kv: -kv[1])
    text = f"{items[0][0]} ({form.format(items[0][1])})"
    for (_, before), (name, v) in zip(items, items[1:], strict=False):
        text += f" {'=' if v == before else '>'} {name} ({form.format(v)})"
    return text


# ---------------------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------------------


def section_methods(run: RunData) -> list[str]:
    out = ["## Methods compared", ""]
    rows = method_rows(run)
    if len(rows) < 2:
        return [*out, note("no methods to compare: needs the eval stage's gold metrics of "
                           "sft-selected and of ppo, rs, rloo, dpo or the bon samples"), ""]  # fmt: skip
    headers = ["method", "helpfulness (safe)", "safety (unsafe)", "false refusals",
               "gold win rate over SFT", "KL to SFT (nats)", "stage CPU-s",
               "gold gain per CPU-min"]  # fmt: skip
    table = []
    for name, r in rows.items():
        label = f"bon (best of {r['samples']}, {r['n']} prompts)" if name == "bon" else name
        table.append([label, r["helpfulness_safe"], r["safety_unsafe"], r["false_refusal_rate"],
                      _pm(r.get("win"), r.get("win_se")), _pm(r.get("kl"), r.get("kl_se")),
                      "shared" if name == BASELINE else _one_decimal(r.get("cpu_seconds")),
                      _signed(r.get("gain_per_cpu_minute"))])  # fmt: skip
    out += [md_table(headers, table), ""]
    out.append(
        "The greedy responses to the held-out prompts, judged by the world's gold judges "
        "(the models table's numbers). Gold win rate over SFT: per prompt 1 if the method's response has the higher "
        "gold score (safety on unsafe prompts, helpfulness on the others) than the selected "
        "SFT model's, 1/2 on a tie, 0 below; mean ± standard error over prompts. KL to SFT: "
        "k1 on the model's own samples at temperature 1, ± standard error. Stage CPU-s: the "
        "process time of the method's own stage (`pipeline.json`); the stages every method "
        "shares (sft, label, rm, select) are excluded. Gold gain per CPU-min: helpfulness on "
        "safe prompts minus SFT's, divided by those CPU-minutes."
    )
    if "bon" in rows:
        out += ["", note(
            "bon: the proxy's pick among the bon stage's samples of the SFT model (temperature "
            "1) on its prompts only, against SFT's greedy responses to the same prompts (its "
            "gain too); KL = log N - (N-1)/N, the analytic KL of best-of-N; its CPU time is "
            "the sampling of those prompts at answer time, not training")]  # fmt: skip
    return [*out, "", *section_alpacafarm(rows)]


def section_alpacafarm(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = ["### Beside AlpacaFarm (Dubois et al. 2023)", ""]
    table = [[paper, f"{pct:.1f}", name if name in rows else f"{name} (not run)",
              _pm(rows[name].get("win"), rows[name].get("win_se")) if name in rows else "-"]
             for paper, pct, name in ALPACAFARM]  # fmt: skip
    headers = ["AlpacaFarm method", "simulated win rate vs Davinci003 (%)", "this run",
               "gold win rate over SFT"]  # fmt: skip
    out += [md_table(headers, table), ""]
    sentence = ordering_sentence(rows)
    if sentence:
        out += [sentence, ""]
    out.append(
        "AlpacaFarm's numbers are LLaMA 7B's win rates against Davinci003 judged by its "
        "simulated annotators (prompted API models, with label noise); ours are this run's models against their own SFT "
        "start, judged by the world's gold judges: the orders compare, the values do not. "
        "Expert iteration (fine-tuning on the reward model's best samples) is our rs."
    )
    return [*out, ""]


def _pm(value: Any, se: Any) -> str:
    text = fmt(value)
    return f"{text} ± {fmt(se, 2)}" if value is not None and se is not None else text


def _one_decimal(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def _signed(x: Any) -> str:
    return "-" if x is None else f"{x:+.4f}"
