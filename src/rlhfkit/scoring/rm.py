"""Scoring prompt + response with one or several reward models: the object PPO, rejection
sampling, `rlhfkit select` and `rlhfkit score` call.

Tokenization is training's (`data.reward_data.encode_responses`): `[bos?] + prompt +
response + [eos]`, SFT's sequence, EOS included; an overlong sequence keeps its end.

Two entry points:
- `RewardScorer.score(prompts, responses, safety, ended)`: texts, tokenized per RM with
  its own tokenizer;
- `RewardScorer.score_tokens(prompt_ids, prompt_mask, response_ids, response_mask, ...)`:
  the policy's token ids as sampled (`models.generate.Generation` fields). An RM whose
  tokenizer maps every policy token to the same id (checked once per policy tokenizer)
  and reads prompts in the policy's format (`data.chat`: both chat, or both plain)
  scores those ids directly: no decode / re-encode, and exactly the tokens the policy
  produced. Other RMs get decoded text, with `ended` read off the ids; given `prompts`
  (as read: strings or lists of messages), those replace the decoded prompts, so that
  each RM encodes a prompt in its own format, not the policy's rendering of it.

A conversational prompt (a list of messages) is encoded as the RM was trained on it
(`encode_responses`): the conversation + the response as an assistant turn, through the
RM tokenizer's chat template; a plain prompt too where the RM is in chat format (its own
mark, or its tokenizer's own template: `data.chat.chat_format`).

A response without EOS (sampling cut it at max_new_tokens) is scored as it was produced,
WITHOUT an EOS, on both paths: the ids path scores the sampled ids, and the text path
appends EOS only to the responses `ended` says finished (None: all of them, for texts
that are whole responses, as in RM training data and `rlhfkit score` files). Appending
one would have the RM judge a cut-off answer as if the policy had chosen to stop there;
read at its last real token instead, the RM sees an unfinished answer (a position it
was not trained on: use `--missing-eos-penalty` in PPO, and RS drops such samples, to
treat them on purpose). Before this rule the two paths disagreed on such responses by up
to 3.5 on a tiny random-head RM (now < 1e-6).

Padding-free: where an RM keeps packed sequences apart (probed once per model,
`models.probe.packing_error` on `HeadInputView`), its forwards run on packed rows
(`data.reward_data.pack_sequences`) and each score is read at its sequence's last token;
elsewhere (OPT, Falcon, Bloom ...) on padded batches, with a one-line note. Scores agree
to float rounding (tests/models/test_reward_packed.py).

Served reward models (`--rm NAME=URL`, `scoring.remote.RemoteRM`) sit beside the local
ones: their requests go out first, the local RMs score while the servers answer, and the
combination is the same. A served RM reads the policy's ids where its tokenizer matches
(`RemoteRM.reads_tokens_of`), else the decoded text, exactly as a local one.

The combined score is computed over the call's batch (`scoring.combine`; whitening is over
it); `ScoreResult.unwhitened` keeps it before whitening.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import torch

from rlhfkit.config.base import is_url, parse_rm_spec
from rlhfkit.data.chat import chat_format, resolve_chat
from rlhfkit.data.reward_data import Prompt, encode_responses, pack_sequences, pad_right
from rlhfkit.errors import UserError
from rlhfkit.models.probe import packing_error
from rlhfkit.models.reward import load_reward_model, reward_scores
from rlhfkit.models.reward_packed import HeadInputView, attention_cost, packed_reward_scores
from rlhfkit.models.wrap import eval_mode
from rlhfkit.scoring.combine import Combiner, batch_whiten, split_whitening
from rlhfkit.scoring.remote import Pending, RemoteRM, RemoteSettings, tokens_alike
from rlhfkit.scoring.tokens import decode_pairs, ends_with_eos, real_tokens

log = logging.getLogger("rlhfkit")

RM_INFO = "rlhfkit_reward.json"  # written beside a trained RM: tokenization settings

# ---------------------------------------------------------------------------------------
# One reward model
# ---------------------------------------------------------------------------------------


def packs_exactly(model: torch.nn.Module) -> bool:
    """Whether reward model `model` keeps packed sequences apart (probed once per model;
    a one-line note when it does not: its scores then use padded batches)."""
    if model not in _PACKS:
        diff, tol = packing_error(HeadInputView(model))
        _PACKS[model] = diff <= tol
        if not _PACKS[model]:
            log.info(
                "scoring: %s mixes packed sequences: padded batches instead",
                type(HeadInputView(model)).__name__,
            )
    return _PACKS[model]


_PACKS: WeakKeyDictionary[torch.nn.Module, bool] = WeakKeyDictionary()


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 32,
    packing: bool = False,
) -> torch.Tensor:
    """(N,) float32 CPU scores of token sequences, batched by similar length (less padding);
    with `packing` each batch is packed rows instead (no padding; for RMs that keep packed
    sequences apart, `packs_exactly`)."""
    device = next(model.parameters()).device
    with eval_mode(model):  # each submodule back in its own mode after
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = torch.empty(len(sequences), dtype=torch.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            chunk = [sequences[j] for j in idx]
            if packing:
                rows = pack_sequences(chunk, pad_id, attention_cost=attention_cost(model))
                scores = packed_reward_scores(
                    model,
                    rows.input_ids.to(device),
                    rows.position_ids.to(device),
                    rows.last.to(device),
                )
            else:
                ids, mask = pad_right(chunk, pad_id)
                scores = reward_scores(model, ids.to(device), mask.to(device))
            out[idx] = scores.float().cpu()
    return out


def score_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    *,
    max_len: int = 1024,
    batch_size: int = 32,
    ended: Sequence[bool] | None = None,
    packing: bool = False,
) -> torch.Tensor:
    """(N,) raw RM scores r(prompt_i, response_i) (float32, CPU), in input order; a prompt
    is a string or a list of messages (`encode_responses`). `ended[i]` False scores response
    i without EOS (module docstring); None: all ended. `packing`: see `score_sequences`."""
    if not prompts:
        return torch.zeros(0)
    sequences, _ = encode_responses(tokenizer, prompts, responses, max_len, ended)
    return score_sequences(model, sequences, tokenizer.pad_token_id, batch_size, packing)


# ---------------------------------------------------------------------------------------
# Several reward models, one reward
# ---------------------------------------------------------------------------------------


@dataclass
class ScoreResult:
    """Scores of one batch: the combined reward and each RM's raw score."""

    scores: torch.Tensor
    """(B,) float32: the combined reward (what PPO / rejection sampling maximise)."""
    per_rm: dict[str, torch.Tensor] = field(default_factory=dict)
    """name -> (B,) float32 raw score of that RM (a logit; sigmoid gives Llama 2's R)."""
    unwhitened: torch.Tensor | None = None
    """(B,) float32: the combined reward before batch whitening (`scores` itself when the
    combiner does not whiten; None: not reported, read `scores`). What PPO logs as
    `score/mean`: the whitened reward has mean 0 in every batch."""


@dataclass
class LoadedRM:
    """One reward model with its tokenizer and tokenization settings."""

    model: torch.nn.Module
    tokenizer: Any
    max_len: int


def saved_max_len(folder: Path, model: torch.nn.Module) -> int:
    info = folder / RM_INFO
    if info.is_file():
        return int(json.loads(info.read_text())["max_len"])
    return int(getattr(model.config, "max_position_embeddings", 1024))


def _as_bool(safety: Sequence[bool] | torch.Tensor | None, n: int) -> torch.Tensor:
    if safety is None:
        return torch.zeros(n, dtype=torch.bool)
    out = torch.as_tensor(safety, dtype=torch.bool).cpu()
    if out.shape != (n,):
        raise ValueError(
            f"safety must have one flag per sample ({n}), got shape {tuple(out.shape)}"
        )
    return out


def _maps_tokens_alike(rm_tok: Any, policy_tok: Any) -> bool:
    """True if every policy token has the same id in the RM's tokenizer (and BOS/EOS agree)."""
    return tokens_alike(rm_tok.get_vocab(), rm_tok.bos_token_id, rm_tok.eos_token_id, policy_tok)


class RewardScorer:
    """Named reward models and a combiner: (prompts, responses, safety) -> `ScoreResult`.

        scorer = RewardScorer.from_specs(["helpfulness=DIR", "safety=DIR"], combine="llama2")
        result = scorer.score(prompts, responses, safety)   # result.scores: (B,)

    `models` maps each name to a `LoadedRM` or a `RemoteRM` (kept apart: `self.models`
    holds the local ones, `self.remote` the served ones; `names` keeps the given order).
    Models are frozen (eval mode, no gradients). `combine_options` go to the combiner
    (e.g. {"threshold": 0.2, "whiten": False}); see `rlhfkit.scoring.combine`. `packing`: None
    (default) scores on packed rows each RM that keeps packed sequences apart
    (`packs_exactly`), False always on padded batches.
    """

    def __init__(
        self,
        models: Mapping[str, LoadedRM | RemoteRM],
        combine: str = "single",
        combine_options: Mapping[str, Any] | None = None,
        batch_size: int = 32,
        packing: bool | None = None,
    ):
        if not models:
            raise UserError("a RewardScorer needs at least one reward model")
        self.models = {n: m for n, m in models.items() if isinstance(m, LoadedRM)}
        self.remote = {n: m for n, m in models.items() if isinstance(m, RemoteRM)}
        self._order = list(models)
        self.combine_name = combine
        try:
            # combined, then whitened here: the score before whitening is reported too
            self.combiner: Combiner
            self.combiner, self.whiten = split_whitening(combine, **dict(combine_options or {}))
        except ValueError as e:
            raise UserError(str(e)) from e
        self.batch_size = batch_size
        self.packing = packing
        self._shared: dict[tuple[int, str], bool] = {}

    def packs(self, name: str) -> bool:
        """Whether RM `name`'s forwards run on packed rows (module docstring)."""
        return self.packing is not False and packs_exactly(self.models[name].model)

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[str] | Mapping[str, str | Path],
        combine: str = "single",
        combine_options: Mapping[str, Any] | None = None,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        max_len: int | None = None,
        trust_remote_code: bool = False,
        chat: bool | None = None,
        remote: RemoteSettings | None = None,
    ) -> RewardScorer:
        """Load RMs from ["NAME=DIR", ...] or {name: DIR}; max_len None = each RM's own;
        `chat` (--chat / --no-chat of `score`): the RMs' prompt format, None = each RM's
        own (`data.chat.resolve_chat`). A URL instead of a folder is a served RM (`remote`: how
        to talk to it)."""
        pairs = (
            list(specs.items()) if isinstance(specs, Mapping) else [parse_rm_spec(s) for s in specs]
        )
        names = [n for n, _ in pairs]
        if len(set(names)) != len(names):
            raise UserError(f"reward model names must be distinct, got {names}")
        models: dict[str, LoadedRM | RemoteRM] = {}
        for name, path in pairs:
            if is_url(str(path)):
                models[name] = RemoteRM(str(path), remote, name)
                continue
            model, tok = load_reward_model(path, device, trust_remote_code=trust_remote_code)
            resolve_chat(tok, chat, what=f"reward model {name!r} ({path})")
            models[name] = LoadedRM(model, tok, max_len or saved_max_len(Path(path), model))
        return cls(models, combine, combine_options, batch_size)

    @property
    def names(self) -> list[str]:
        return list(self._order)

    @property
    def sources(self) -> dict[str, LoadedRM | RemoteRM]:
        """Every RM by name, local and served, in the given order."""
        return {n: self.models[n] if n in self.models else self.remote[n] for n in self._order}

    def _combine(self, per_rm: dict[str, torch.Tensor], safety: torch.Tensor) -> ScoreResult:
        try:
            combined = self.combiner(per_rm, safety.to(next(iter(per_rm.values())).device))
        except ValueError as e:
            raise UserError(f"--combine {self.combine_name}: {e}") from e
        scores = batch_whiten(combined) if self.whiten else combined
        return ScoreResult(scores, per_rm, unwhitened=combined)

    def score(
        self,
        prompts: Sequence[Prompt],
        responses: Sequence[str],
        safety: Sequence[bool] | torch.Tensor | None = None,
        ended: Sequence[bool] | torch.Tensor | None = None,
    ) -> ScoreResult:
        """Score texts (a prompt: a string or a list of messages); `safety` flags prompts tagged possibly unsafe (None = none);
        `ended` flags the responses that finished with EOS (None = all; a response that
        did not is scored without EOS, module docstring). CPU out."""
        flags = _as_bool(safety, len(prompts))
        finished = None if ended is None else _as_bool(ended, len(prompts)).tolist()
        pending = {n: rm.submit(prompts, responses, finished) for n, rm in self.remote.items()}
        local = {
            name: score_texts(
                rm.model,
                rm.tokenizer,
                prompts,
                responses,
                max_len=rm.max_len,
                batch_size=self.batch_size,
                ended=finished,
                packing=self.packs(name),
            )
            for name, rm in self.models.items()
        }
        return PendingScores(self, {**local, **pending}, flags).result()

    def shares_tokenizer(self, name: str, policy_tokenizer: Any) -> bool:
        """Whether RM `name` reads the policy's token ids (the same id for every token,
        BOS and EOS alike; cached): a value model may start from it."""
        if name in self.remote:
            return self.remote[name].reads_tokens_of(policy_tokenizer)
        key = (id(policy_tokenizer), name)
        if key not in self._shared:
            self._shared[key] = _maps_tokens_alike(self.models[name].tokenizer, policy_tokenizer)
        return self._shared[key]

    def scores_ids(self, name: str, policy_tokenizer: Any) -> bool:
        """Whether RM `name` can score the policy's sampled ids directly: it shares the
        tokenizer and reads prompts in the same format (`data.chat`), else the text path."""
        if name in self.remote:
            return self.remote[name].scores_ids_of(policy_tokenizer)
        rm_chat = chat_format(self.models[name].tokenizer)
        return self.shares_tokenizer(name, policy_tokenizer) and rm_chat == chat_format(
            policy_tokenizer
        )

    def score_tokens(self, *args: Any, **kwargs: Any) -> ScoreResult:
        """`start_tokens(...).result()`: the scores of sampled token ids, waited for."""
        return self.start_tokens(*args, **kwargs).result()

    @torch.no_grad()
    def start_tokens(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        policy_tokenizer: Any,
        safety: Sequence[bool] | torch.Tensor | None = None,
        prompts: Sequence[Prompt] | None = None,
    ) -> PendingScores:
        """Score sampled token ids: prompt (B, P) and response (B, R) ids with bool masks,
        any padding. `prompts`, if given, are the prompts as read (strings or messages),
        used instead of the decoded prompt ids by RMs that read text. Served RMs may still
        be answering when this returns: `.result()` waits for them and combines, on the
        device of `response_ids`. See the module docstring."""
        out_device = response_ids.device
        flags = _as_bool(safety, response_ids.shape[0]).to(out_device)
        ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P+R)
        mask = torch.cat([prompt_mask, response_mask], dim=1)  # (B, P+R)
        ended = ends_with_eos(response_ids, response_mask, policy_tokenizer.eos_token_id)
        texts: tuple[list[Prompt], list[str]] | None = None

        def as_text() -> tuple[list[Prompt], list[str]]:
            nonlocal texts
            if texts is None:
                texts = decode_pairs(policy_tokenizer, prompt_ids, prompt_mask, response_ids,
                                response_mask)  # fmt: skip
                texts = (list(prompts), texts[1]) if prompts is not None else texts
            return texts

        per_rm: dict[str, torch.Tensor | Pending] = {}
        for name, served in self.remote.items():  # first: they answer while the rest runs
            if self.scores_ids(name, policy_tokenizer):
                per_rm[name] = served.submit_ids(real_tokens(ids, mask))
            else:
                per_rm[name] = served.submit(*as_text(), ended)
        for name, rm in self.models.items():
            if self.scores_ids(name, policy_tokenizer):
                per_rm[name] = self._score_ids(name, ids, mask).to(out_device)
                continue
            per_rm[name] = score_texts(
                rm.model, rm.tokenizer, *as_text(), max_len=rm.max_len,
                batch_size=self.batch_size, ended=ended, packing=self.packs(name),
            ).to(out_device)  # fmt: skip
        return PendingScores(self, per_rm, flags)

    def _score_ids(self, name: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) scores of (B, T) ids with a bool mask in any padding layout (left-padded
        prompt + right-padded response): packed rows of the real tokens, or as given."""
        rm = self.models[name]
        if self.packs(name):
            sequences = real_tokens(ids, mask)
            pad_id = rm.tokenizer.pad_token_id
            return score_sequences(rm.model, sequences, pad_id, self.batch_size, packing=True)
        model = rm.model
        device = next(model.parameters()).device
        parts = [
            reward_scores(
                model,
                ids[i : i + self.batch_size].to(device),
                mask[i : i + self.batch_size].to(device),
            )
            for i in range(0, ids.shape[0], self.batch_size)
        ]
        return torch.cat(parts).float()


class PendingScores:
    """A `ScoreResult` whose served reward models may still be answering: `result()` waits
    for them, then combines in the scorer's order (on the device of the local scores or of
    `flags`)."""

    def __init__(
        self, scorer: RewardScorer, per_rm: dict[str, torch.Tensor | Pending], flags: torch.Tensor
    ):
        self.scorer, self.per_rm, self.flags = scorer, per_rm, flags

    def result(self) -> ScoreResult:
        device = self.flags.device
        per_rm = {
            name: (s.result() if isinstance(s, Pending) else s).to(device)
            for name, s in ((n, self.per_rm[n]) for n in self.scorer.names)
        }
        return self.scorer._combine(per_rm, self.flags)
