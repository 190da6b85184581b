"""scripts/compare_seeds.py on synthetic run folders: per-seed gains, the standard errors
across seeds and pooled (checked by hand), the verdicts and the exit status."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_seeds.py"


@pytest.fixture
def cs(monkeypatch):
    spec = importlib.util.spec_from_file_location("compare_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "compare_seeds", module)  # dataclasses look it up
    spec.loader.exec_module(module)

    def fake_judge(prompt, response):  # the response says its own scores: "h s r"
        h, s, r = (float(x) for x in response.split())
        return {"helpfulness": h, "safety": s, "refusal": r}

    monkeypatch.setattr(module, "judge", fake_judge)
    return module


UNSAFE = (False, False, False, True, True)  # prompts p0..p4


def _run(root: Path, models: dict[str, list[tuple[float, float, float]]]) -> Path:
    (root / "world").mkdir(parents=True)
    lines = [json.dumps({"prompt": f"p{i}", "safety": u}) for i, u in enumerate(UNSAFE)]
    (root / "world" / "prompts_eval.jsonl").write_text("\n".join(lines) + "\n")
    (root / "eval").mkdir()
    for name, scores in models.items():
        responses = [" ".join(str(x) for x in row) for row in scores]
        (root / "eval" / f"{name}.json").write_text(json.dumps({"responses": responses}))
    return root


SFT = [(0.4, 1, 0), (0.5, 1, 0), (0.2, 1, 1), (0.0, 0, 0), (0.1, 1, 1)]


def _runs(tmp_path: Path) -> list[Path]:
    runs = []
    for seed, (dh, rs_dh) in enumerate(((0.1, 0.05), (0.2, -0.05), (0.15, 0.02))):
        ppo = [(h + dh, s, r) for h, s, r in SFT[:3]] + [(0.0, 1, 1), (0.1, 1, 1)]
        rs = [(h + rs_dh, s, 1) for h, s, _ in SFT[:3]] + SFT[3:]
        runs.append(_run(tmp_path / f"seed{seed}", {"sft-selected": SFT, "ppo": ppo, "rs": rs}))
    return runs


def test_gains_and_standard_errors_by_hand(tmp_path, cs):
    runs = _runs(tmp_path)
    rows = {(c.model, c.metric): c for c in cs.compare(runs)}
    help_ppo = rows[("ppo", "gold helpfulness (safe prompts)")]
    assert help_ppo.seed_gains == pytest.approx([0.1, 0.2, 0.15])
    m = 0.15
    sd = math.sqrt(((0.1 - m) ** 2 + (0.2 - m) ** 2 + (0.15 - m) ** 2) / 2)
    assert help_ppo.se_seeds == pytest.approx(sd / math.sqrt(3))
    assert len(help_ppo.pooled) == 9  # 3 safe prompts x 3 seeds
    safety_ppo = rows[("ppo", "gold safety (unsafe prompts)")]
    assert safety_ppo.seed_gains == pytest.approx([0.5, 0.5, 0.5])  # p3: 0 -> 1, p4: 1 -> 1
    # pooled: per-prompt gains 1, 0 on each seed
    assert safety_ppo.se_pooled == pytest.approx(math.sqrt(0.5 * 6 / 5 * 0.5) / math.sqrt(6))
    refusals_rs = rows[("rs", "fewer false refusals (safe prompts)")]  # 1/3 -> 3/3 refused
    assert refusals_rs.seed_gains == pytest.approx([-2 / 3] * 3)  # a rise is a loss


def test_verdicts_table_and_exit_status(tmp_path, cs, capsys):
    runs = _runs(tmp_path)
    assert cs.main(runs) == 1  # RS does not beat SFT
    out = capsys.readouterr().out
    assert "| seed0 | seed1 | seed2 |" in out
    assert "| ppo | gold helpfulness (safe prompts) | +0.100 | +0.200 | +0.150 |" in out
    assert (
        "PPO beats SFT on gold helpfulness (safe prompts) on 3/3 seeds; mean gain +0.150 > 2 SE"
        in out
    )
    # safety: +0.5 on every seed, SE across seeds 0 -> beats
    assert "PPO beats SFT on gold safety (unsafe prompts) on 3/3 seeds" in out
    assert "RS vs SFT on gold helpfulness (safe prompts): not significant (better on 2/3" in out
    assert "RS vs SFT on fewer false refusals (safe prompts): not significant (better on 0/3" in out
    assert cs.main(runs[:1]) == 1  # one seed: judged on the pooled SE
    assert "pooled)" in capsys.readouterr().out


def test_the_models_every_run_has_and_their_gold_win_rates_by_hand(tmp_path, cs, capsys):
    """dpo in every run, rloo in none: the comparisons cover ppo, rs and dpo. Gold per
    prompt: helpfulness on the safe prompts p0-p2, safety on the unsafe p3, p4."""
    runs = []
    for seed, h0 in enumerate((0.5, 0.3, 0.5)):
        # SFT's gold: 0.4 0.5 0.2 | 0 1; DPO's: h0 0.5 0.1 | 1 0
        dpo = [(h0, 1, 0), (0.5, 1, 0), (0.1, 1, 0), (0.0, 1, 0), (0.3, 0, 0)]
        runs.append(_run(tmp_path / f"seed{seed}", {"sft-selected": SFT, "ppo": SFT, "rs": SFT,
                                                     "dpo": dpo}))  # fmt: skip
    assert cs.models_in(runs) == ("ppo", "rs", "dpo")
    assert {c.model for c in cs.compare(runs)} == {"ppo", "rs", "dpo"}
    rates = {w.model: w for w in cs.win_rates(runs)}
    # ppo and rs answer as SFT does: every prompt a tie
    assert rates["ppo"].seed_rates == [0.5, 0.5, 0.5]
    # dpo, seed 0: win (0.5 > 0.4), tie, loss, win (safety 1 > 0), loss -> 2.5 / 5;
    # seed 1: p0 0.3 < 0.4 is a loss -> 1.5 / 5
    dpo = rates["dpo"]
    assert dpo.seed_rates == pytest.approx([0.5, 0.3, 0.5])
    assert dpo.mean == pytest.approx(1.3 / 3)
    assert cs.se(dpo.seed_rates) == pytest.approx(0.2 / math.sqrt(3) / math.sqrt(3))
    assert len(dpo.pooled) == 15 and sum(dpo.pooled) == pytest.approx(6.5)
    cs.main(runs)
    out = capsys.readouterr().out
    assert "Gold win rate over sft-selected" in out
    assert "| dpo | 0.500 | 0.300 | 0.500 | 0.433 ± 0.067 | 0.433 ± " in out
