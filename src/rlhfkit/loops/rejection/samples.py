"""Rejection sampling, the sampling half: K responses per prompt from the current policy,
scored by the reward, saved as `round-N/samples.jsonl`.

One record per prompt: {"prompt", "safety", "responses": [K], "scores": [K], "best": index,
"response_tokens": [K], "ended": [K], "per_rm": {name: [K]}, "logprobs": [K]} ("per_rm"
only with reward models; "logprobs", log pi(y | x) under the policy that drew them, at
temperature 1, EOS included, only with --kl-coef; "ended": whether each response produced
EOS within --max-new-tokens, absent from files written before it existed: read back, it is
inferred from "response_tokens" when the reader knows max_new_tokens, else taken as True).

With --add-greedy, the policy's greedy response to every prompt is drawn too and saved
the same way as `round-N/greedy.jsonl` (K = 1): one more candidate for the keep rule.

Resumable without redrawing: prompts are sampled in batches of `prompts_per_batch`, each
batch with its own generator seeded by (seed, round, batch), and every finished batch is
appended (flushed, fsynced) to a hidden `.samples.jsonl.partial`. A killed run keeps the
finished batches and samples the rest, drawing exactly what an uninterrupted run draws;
`samples.jsonl` appears, by one rename, only once every prompt is sampled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from rlhfkit.data.ranking import best_of_k
from rlhfkit.data.records import PromptRecord
from rlhfkit.errors import UserError
from rlhfkit.files import write_jsonl
from rlhfkit.logging import progress
from rlhfkit.sampling.generator import GenerationSettings, ResponseGenerator, make_generator
from rlhfkit.sampling.sample_score import sample_and_score


@dataclass
class SampleRecord:
    """One prompt's K samples of one round and their rewards."""

    prompt: str
    responses: list[str]
    scores: list[float]  # the combined reward of each response (unwhitened)
    best: int  # best_of_k(scores): the highest score, ties to the lowest index
    safety: bool = False
    response_tokens: list[int] = field(default_factory=list)  # per response, EOS not counted
    per_rm: dict[str, list[float]] = field(default_factory=dict)  # raw score of each RM
    ended: list[bool] = field(default_factory=list)  # per response: produced EOS ([]: unknown)
    messages: list[dict[str, str]] | None = None  # a conversational prompt's messages
    logprobs: list[float] = field(default_factory=list)  # per response: log pi(y|x) ([]: none)

    def response_ended(self, i: int) -> bool:
        """Whether response i produced EOS (unknown, as in old files: True)."""
        return self.ended[i] if self.ended else True

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "prompt": self.prompt,
            "safety": self.safety,
            "responses": self.responses,
            "scores": self.scores,
            "best": self.best,
            "response_tokens": self.response_tokens,
        }
        if self.ended:
            row["ended"] = self.ended
        if self.messages is not None:
            row["messages"] = self.messages
        if self.per_rm:
            row["per_rm"] = self.per_rm
        if self.logprobs:
            row["logprobs"] = self.logprobs
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any], max_new_tokens: int | None = None) -> SampleRecord:
        """A record from its JSON row. A row without "ended" (written before it existed)
        gets it from its token counts when `max_new_tokens` is given (a response that
        ended has at most max_new_tokens - 1 tokens besides its EOS), else none."""
        tokens = [int(t) for t in row.get("response_tokens", [])]
        ended = [bool(e) for e in row.get("ended", [])]
        if "ended" not in row and max_new_tokens is not None and tokens:
            ended = [t < max_new_tokens for t in tokens]
        return cls(
            prompt=row["prompt"],
            responses=list(row["responses"]),
            scores=[float(s) for s in row["scores"]],
            best=int(row["best"]),
            safety=bool(row.get("safety", False)),
            response_tokens=tokens,
            per_rm={k: [float(s) for s in v] for k, v in (row.get("per_rm") or {}).items()},
            ended=ended,
            messages=row.get("messages"),
            logprobs=[float(x) for x in row.get("logprobs", [])],
        )


@dataclass(frozen=True)
class SamplingSettings:
    """How one round samples."""

    k: int = 8
    temperature: float = 1.0  # 0 = greedy (then the K samples are identical)
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32
    prompts_per_batch: int = 8  # K x this many sequences per generation batch
    seed: int = 0
    bf16: bool = False
    engine: Any = "hf"  # --generator and --vllm-* (generation.EngineSettings.of)
    logprobs: bool = False  # also each response's log pi(y|x) under the sampling policy

    def generation(self) -> GenerationSettings:
        """The same sampling, as the generation seam takes it (stops at EOS)."""
        return GenerationSettings.of(self)


def batch_generator(seed: int, round_index: int, batch_index: int) -> torch.Generator:
    """A CPU generator per (seed, round, batch): a resumed round draws what an uninterrupted
    one draws, and the tokens do not depend on the device (`models.generate._draw`)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + round_index) * 1_009 + batch_index)


@torch.no_grad()
def sample_batch(
    generator: ResponseGenerator,
    tokenizer: Any,
    prompts: Sequence[PromptRecord],
    prompt_ids: Sequence[Sequence[int]],
    scorer: Any,
    s: SamplingSettings,
    rng: torch.Generator | None,
    policy: torch.nn.Module | None = None,
) -> list[SampleRecord]:
    """K samples of each prompt in one generation batch, scored in one scorer call (with
    `s.logprobs`, also their log-probs under `policy`, the module `generator` samples)."""
    k = s.k
    if s.logprobs and policy is None:
        raise ValueError("s.logprobs needs the policy module")
    r = sample_and_score(
        generator,
        prompts,
        prompt_ids,
        s.generation(),
        rng,
        n=k,
        scorer=scorer,
        tokenizer=tokenizer,
        logprob_model=policy if s.logprobs else None,
    )
    texts, scores_l, tokens = r.texts, r.scores.tolist(), r.tokens
    logprobs = r.logprob.tolist() if r.logprob is not None else []
    per = {name: v.tolist() for name, v in r.per_rm.items()}
    check_rewards(prompts, scores_l, k)
    out = []
    for i, p in enumerate(prompts):
        lo, hi = i * k, (i + 1) * k
        out.append(
            SampleRecord(
                prompt=p.prompt,
                responses=texts[lo:hi],
                scores=scores_l[lo:hi],
                best=best_of_k(scores_l[lo:hi]),
                safety=p.safety,
                response_tokens=tokens[lo:hi],
                per_rm={name: v[lo:hi] for name, v in per.items()},
                ended=r.ended[lo:hi],
                messages=p.messages,
                logprobs=logprobs[lo:hi],
            )
        )
    return out


def check_rewards(prompts: Sequence[PromptRecord], scores: Sequence[float], k: int) -> None:
    """A UserError naming the first prompt with a NaN reward (`scores`: K per prompt, in
    prompt order), before a NaN reaches the keep rule's comparisons and the means."""
    for i, p in enumerate(prompts):
        if any(math.isnan(x) for x in scores[i * k : (i + 1) * k]):
            raise UserError(f"the reward is NaN for a response to {p.prompt[:60]!r}")


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def _check_record(
    rec: SampleRecord, prompt: PromptRecord, k: int, where: str, logprobs: bool = False
) -> None:
    same_prompt = rec.prompt == prompt.prompt and rec.messages == prompt.messages
    if not same_prompt or len(rec.responses) != k or len(rec.scores) != k:
        raise UserError(
            f"{where}: drawn for other prompts or another --k than this run's; resume with "
            "the same options, or start again with --overwrite"
        )
    if logprobs and len(rec.logprobs) != k:
        raise UserError(
            f"{where}: drawn without log-probs, which --kl-coef needs; resume with the "
            "same options, or start again with --overwrite"
        )


def read_samples(
    path: Path,
    prompts: Sequence[PromptRecord],
    k: int,
    max_new_tokens: int | None = None,
    logprobs: bool = False,
) -> list[SampleRecord]:
    """A finished round's samples, checked against this run's prompts and K (and that they
    have log-probs, with `logprobs`); `max_new_tokens`: to tell which responses ended in
    files without "ended"."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != len(prompts):
        raise UserError(
            f"{path}: {len(lines)} records for {len(prompts)} prompts; resume with the same "
            "options, or start again with --overwrite"
        )
    out = []
    for i, (line, prompt) in enumerate(zip(lines, prompts, strict=True)):
        rec = SampleRecord.from_json(json.loads(line), max_new_tokens)
        _check_record(rec, prompt, k, f"{path}:{i + 1}", logprobs)
        out.append(rec)
    return out


def _read_partial(
    partial: Path, prompts: Sequence[PromptRecord], s: SamplingSettings
) -> list[SampleRecord]:
    """The whole batches a killed run left in `partial` (a torn last batch is dropped)."""
    if not partial.exists():
        return []
    done: list[SampleRecord] = []
    for i, line in enumerate(partial.read_text(encoding="utf-8").splitlines()):
        if i >= len(prompts):
            break
        try:
            rec = SampleRecord.from_json(json.loads(line), s.max_new_tokens)
        except (ValueError, KeyError, TypeError):
            break  # the line being written when the run was killed
        _check_record(rec, prompts[i], s.k, f"{partial}:{i + 1}", s.logprobs)
        done.append(rec)
    if len(done) < len(prompts):
        done = done[: len(done) // s.prompts_per_batch * s.prompts_per_batch]
    write_jsonl(partial, [r.to_json() for r in done])
    return done


def sample_round(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptRecord],
    prompt_ids: Sequence[Sequence[int]],
    scorer: Any,
    s: SamplingSettings,
    *,
    round_index: int,
    path: Path,
    what: str = "sample",
) -> list[SampleRecord]:
    """Every prompt's K samples for round `round_index`, written to `path` (read back if it
    exists; continued from its `.partial` file if a run was killed while sampling); `what`
    names them on the progress bar."""
    if path.exists():
        return read_samples(path, prompts, s.k, s.max_new_tokens, s.logprobs)
    partial = path.with_name(f".{path.name}.partial")
    done = _read_partial(partial, prompts, s)
    n, per = len(prompts), s.prompts_per_batch
    bar = progress(n, desc=f"round {round_index} {what}", initial=len(done))
    generator = make_generator(model, tokenizer, s.engine)
    with partial.open("a", encoding="utf-8") as f:
        for b in range(math.ceil(len(done) / per), math.ceil(n / per)):
            lo, hi = b * per, min(n, (b + 1) * per)
            rng = batch_generator(s.seed, round_index, b)
            recs = sample_batch(
                generator, tokenizer, prompts[lo:hi], prompt_ids[lo:hi], scorer, s, rng, model
            )
            f.writelines(json.dumps(r.to_json()) + "\n" for r in recs)
            f.flush()
            os.fsync(f.fileno())
            done += recs
            bar.update(hi - lo)
            bar.set_postfix(
                mean=f"{fmean(x for r in done for x in r.scores):.3g}",
                best=f"{fmean(r.scores[r.best] for r in done):.3g}",
            )
    bar.close()
    os.replace(partial, path)
    return done
