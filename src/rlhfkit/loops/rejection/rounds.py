"""`rlhfkit rs`, one round at a time: `RSRun` holds the state between rounds (the roles,
the prompts, every round's samples, where the current policy is) and runs round r: sample,
keep, fine-tune, write round-N/ (the steps in `loop.py`'s docstring); `encode_kept` turns
the kept set into SFT examples."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from rlhfkit.config import RSConfig
from rlhfkit.data.chat import resolve_chat
from rlhfkit.data.records import PromptRecord, SFTRecord
from rlhfkit.data.tokenize import EncodedExample, EncodeStats, encode_sft
from rlhfkit.distributed import pick_device
from rlhfkit.errors import UserError
from rlhfkit.files import write_json, write_jsonl
from rlhfkit.loops.common import seed_everything
from rlhfkit.loops.lm import LMRun, choose_packing, fit_lm
from rlhfkit.loops.rejection.keep import (
    KEEP_RULES,
    Kept,
    confident,
    drop_truncated,
    greedy_stats,
    round_stats,
    with_greedy,
)
from rlhfkit.loops.rejection.samples import (
    SampleRecord,
    SamplingSettings,
    check_rewards,
    read_samples,
    sample_round,
)
from rlhfkit.models.checkpoint import export_hf
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.sampling.generator import make_generator
from rlhfkit.sampling.held_out import sample_held_out
from rlhfkit.sampling.sample_score import encode_prompts, gold_metrics
from rlhfkit.scoring.build import build_scorer

RS_INFO = "rlhfkit_rs.json"
SAMPLES, GREEDY, KEPT, STATS = "samples.jsonl", "greedy.jsonl", "kept.jsonl", "stats.json"


def encode_kept(
    kept: Sequence[Kept], tokenizer: Any, cfg: RSConfig, source: str
) -> list[EncodedExample]:
    """The kept set as SFT examples: [bos?] + prompt + response + EOS, prompt masked (a
    conversational prompt, or any prompt for a policy in chat format: the prompt's
    messages + the response as the assistant turn, through the chat template, as `rlhfkit
    sft` encodes kept.jsonl for this policy); a response cut before EOS (kept with
    --keep-truncated) without the EOS it never had (nor what a template puts after it)."""
    stats = EncodeStats()
    examples = []
    eos = tokenizer.eos_token_id
    for line, k in enumerate(kept, start=1):
        rec = SFTRecord(k.prompt, k.completion, k.messages, line=line, source=source)
        ex = encode_sft(rec, tokenizer, cfg.max_len, overlong=cfg.overlong, stats=stats)
        if ex is not None and not k.ended and not ex.truncated:  # (a cut one lost its EOS)
            end = len(ex.input_ids) - 1 - ex.input_ids[::-1].index(eos)  # the last EOS
            ex = EncodedExample(ex.input_ids[:end], ex.labels[:end])
        if ex is not None:
            examples.append(ex)
    if stats.truncated or stats.dropped:
        print(f"{source}: {stats} (--max-len {cfg.max_len}, --overlong {cfg.overlong})")
    if not examples:
        raise UserError(f"{source}: no usable examples after tokenization")
    return examples


def prune_training_checkpoints(round_dir: Path) -> None:
    """A finished round's policy is `round-N/` itself: its resumable training checkpoints
    (weights + optimizer state, per epoch) are not needed any more."""
    train = round_dir / "train"
    for p in [*train.glob("epoch-*"), train / "checkpoints"]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The rounds
# ---------------------------------------------------------------------------------------


@dataclass
class RSRun:
    """The state of a run between rounds: the roles, the prompts, every round's samples,
    and where the current policy is (in memory after training, else a folder)."""

    cfg: RSConfig
    out: Path
    device: torch.device
    tokenizer: Any
    scorer: Any
    prompts: list[PromptRecord]
    prompt_ids: list[list[int]]
    eval_prompts: list[PromptRecord]
    eval_ids: list[list[int]]
    policy_path: Path
    model: torch.nn.Module | None = None
    history: list[list[SampleRecord]] = field(default_factory=list)

    @classmethod
    def build(
        cls, cfg: RSConfig, prompts: list[PromptRecord], eval_prompts: list[PromptRecord]
    ) -> RSRun:
        device = pick_device(cfg.device)
        tokenizer = load_tokenizer(cfg.policy, trust_remote_code=cfg.trust_remote_code)
        # the policy's prompt format: for sampling, fine-tuning and every round's saved policy
        resolve_chat(tokenizer, cfg.chat, what=cfg.policy)
        return cls(
            cfg=cfg,
            out=Path(cfg.out),
            device=device,
            tokenizer=tokenizer,
            scorer=build_scorer(cfg, device, whiten=False),
            prompts=prompts,
            prompt_ids=encode_prompts(prompts, tokenizer, cfg.max_prompt_len),
            eval_prompts=eval_prompts,
            eval_ids=encode_prompts(eval_prompts, tokenizer, cfg.max_prompt_len),
            policy_path=Path(cfg.policy),
        )

    def settings(self, temperature: float) -> SamplingSettings:
        c = self.cfg
        return SamplingSettings(
            k=c.k,
            temperature=temperature,
            top_k=c.top_k,
            top_p=c.top_p,
            max_new_tokens=c.max_new_tokens,
            prompts_per_batch=max(1, c.sample_batch_size // c.k),
            seed=c.seed,
            bf16=c.bf16,
            engine=c,
            logprobs=c.kl_coef > 0,
        )

    def policy(self) -> torch.nn.Module:
        if self.model is None:
            self.model = load_causal_lm(
                self.policy_path, self.device, trust_remote_code=self.cfg.trust_remote_code
            )
        return self.model

    def evaluate(self) -> dict[str, Any]:
        """The policy on --eval-prompts: one response per prompt (`sample_held_out`, greedy
        at --eval-temperature 0), their mean reward and length, and the world's gold
        metrics when the prompts are its. The same CPU-seeded draw every call: comparable."""
        c, prompts = self.cfg, self.eval_prompts
        r = sample_held_out(
            make_generator(self.policy(), self.tokenizer, c),
            prompts,
            self.eval_ids,
            self.settings(c.eval_temperature).generation(),
            batch_size=c.sample_batch_size,
            seed=c.seed,
            device=torch.device("cpu"),  # as the rounds' draws: tokens independent of device
            scorer=self.scorer,
            tokenizer=self.tokenizer,
        )
        scores = r.scores.tolist()
        check_rewards(prompts, scores, k=1)
        out = {"score": fmean(scores), "n": len(scores), "response_tokens": fmean(r.tokens)}
        texts, safety = [p.prompt for p in prompts], [p.safety for p in prompts]
        return {**out, **gold_metrics(texts, r.texts, safety, r.tokens)}

    def initial_eval(self) -> dict[str, Any] | None:
        """The starting policy on --eval-prompts (computed once, kept in eval_initial.json)."""
        if not self.eval_prompts:
            return None
        path = self.out / "eval_initial.json"
        if path.is_file():
            return json.loads(path.read_text())
        result = self.evaluate()
        write_json(path, result)
        print(_eval_line("initial policy", result), flush=True)
        return result

    def finished(self, r: int) -> bool:
        """Round r wrote its stats.json: its policy and samples are complete."""
        return (self.out / f"round-{r}" / STATS).is_file()

    def skip(self, r: int) -> dict[str, Any]:
        """Take a round finished earlier as it is: its samples (for best-of-all-rounds) and
        its policy (where the next round starts). Returns its stats."""
        rdir = self.out / f"round-{r}"
        s = self.settings(1.0)
        records = read_samples(rdir / SAMPLES, self.prompts, s.k, s.max_new_tokens, s.logprobs)
        if self.cfg.add_greedy:
            greedy = read_samples(rdir / GREEDY, self.prompts, 1, s.max_new_tokens, s.logprobs)
            records = with_greedy(records, greedy)
        self.history.append(records)
        prune_training_checkpoints(rdir)  # in case a kill came between stats and pruning
        self.policy_path, self.model = rdir, None
        print(f"round {r}: finished earlier, skipped", flush=True)
        return json.loads((rdir / STATS).read_text())

    def round(self, r: int, temperature: float) -> dict[str, Any]:
        """Round r (1-based): sample, keep, fine-tune, write round-N/. Returns its stats."""
        rdir = self.out / f"round-{r}"
        rdir.mkdir(parents=True, exist_ok=True)
        model = self.policy()
        records = sample_round(
            model,
            self.tokenizer,
            self.prompts,
            self.prompt_ids,
            self.scorer,
            self.settings(temperature),
            round_index=r,
            path=rdir / SAMPLES,
        )
        greedy = self.greedy(model, r) if self.cfg.add_greedy else None
        self.history.append(records if greedy is None else with_greedy(records, greedy))
        best = KEEP_RULES[self.cfg.keep](self.history, self.cfg.kl_coef)
        ended = best if self.cfg.keep_truncated else drop_truncated(best)
        kept = confident(ended, self.cfg.min_gap)
        write_jsonl(rdir / KEPT, [k.to_json() for k in kept])
        if not kept:
            raise UserError(
                f"rs: round {r}: no prompt kept: {len(best) - len(ended)} of {len(best)} best "
                f"samples hit --max-new-tokens {self.cfg.max_new_tokens} before EOS (raise it, "
                f"or --keep-truncated), the others beat the median of their samples by less "
                f"than --min-gap {self.cfg.min_gap} (lower it, or raise --k)"
            )
        stats = {"round": r, "temperature": temperature, **round_stats(records, kept, r)}
        stats["kept_prompts"] = len(kept)
        stats["truncated_dropped"] = len(best) - len(ended)
        if greedy is not None:
            stats.update(greedy_stats(greedy, kept, self.cfg.k))
        print(
            f"round {r}: mean reward of all samples {stats['mean_reward_all']:.4f}, of the "
            f"kept {stats['mean_reward_kept']:.4f} (best of {self.cfg.k}: "
            f"{stats['mean_reward_best_of_round']:.4f}); fine-tuning on {len(kept)} of "
            f"{len(best)} prompts"
            + (f" ({stats['kept_greedy']} of them the greedy response)" if greedy else ""),
            flush=True,
        )
        stats["train"] = self.finetune(model, kept, rdir, r)
        export_hf(model, self.tokenizer, rdir, extra_json={RS_INFO: {"round": r}})
        if self.eval_prompts:
            stats["eval"] = self.evaluate()
            print(_eval_line(f"after round {r}", stats["eval"]), flush=True)
        write_json(rdir / STATS, stats)  # the round is finished
        prune_training_checkpoints(rdir)
        self.policy_path = rdir
        return stats

    def greedy(self, model: torch.nn.Module, r: int) -> list[SampleRecord]:
        """Round r's greedy response to every prompt (--add-greedy), scored like the
        samples and saved in round-N/greedy.jsonl."""
        s = dataclasses.replace(
            self.settings(0.0), k=1, prompts_per_batch=self.cfg.sample_batch_size
        )
        return sample_round(
            model,
            self.tokenizer,
            self.prompts,
            self.prompt_ids,
            self.scorer,
            s,
            round_index=r,
            path=self.out / f"round-{r}" / GREEDY,
            what="greedy",
        )

    def finetune(
        self, model: torch.nn.Module, kept: list[Kept], rdir: Path, r: int
    ) -> dict[str, Any]:
        """SFT of `model` on the kept set with the shared LM loop; resumes in round-N/train."""
        examples = encode_kept(kept, self.tokenizer, self.cfg, str(rdir / KEPT))
        train_dir = rdir / "train"
        opts = dataclasses.replace(self.cfg, out=str(train_dir), resume=True)
        seed_everything(self.cfg.seed + r)  # dropout, if any (a resume restores the RNG)
        lm_run = LMRun(
            model=model,
            tokenizer=self.tokenizer,
            train=examples,
            out=train_dir,
            device=self.device,
            packing=choose_packing(model, self.cfg.packing, "rs"),
            row_tokens=self.cfg.max_len,
            epoch_checkpoints=True,
            desc=f"round {r} train",
        )
        summary = fit_lm(lm_run, opts)
        keys = ("final_loss", "steps", "train_tokens", "wall_time_s", "tokens_per_s")
        return {k: summary.get(k) for k in keys}

    def export_final(self, out: Path, extra_json: dict[str, Any]) -> None:
        export_hf(self.policy(), self.tokenizer, out, extra_json=extra_json)


def _eval_line(what: str, r: dict[str, Any]) -> str:
    parts = [f"eval ({what}): reward {r['score']:.4f}"]
    if r.get("gold_score") is not None:
        parts.append(f"gold {r['gold_score']:.4f}")
    return ", ".join(parts)
