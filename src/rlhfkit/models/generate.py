"""Batched sampling with a KV cache: ids, a response mask cut at EOS, and log-probs.

Prompts are left-padded so that every row's next token sits in the last column; position
ids count real tokens only (0 at each row's first prompt token), so a row's output does not
depend on how much padding the batch gave it. One prefill forward fills the KV cache, then
one forward per new token. Sampling stops when every row has produced EOS (or, with
`stop_at_eos=False`, after exactly `max_new_tokens`).

Two decoders: any Hugging Face causal LM runs its own forward with a DynamicCache
(`_HFDecoder`); a stock LlamaForCausalLM runs `LlamaDecoder`, the same math written out
with fused projections and a preallocated cache, because at RLHF-sized batches on small
models the per-token Python of HF's forward costs more than the arithmetic (~2x tokens/s
here, bench/gen_vs_hf.py). Both give the same tokens and log-probs up to float rounding.

`logprobs` are what PPO needs as `old_logprobs`: log softmax(logits / temperature) over the
FULL vocabulary (before top-k/top-p filtering) at the sampled token, i.e. the same number a
fresh forward pass over prompt + response gives, so rollouts need no second policy pass.
With temperature 0 (greedy) they are log softmax(logits), temperature 1
(`ops.logprobs.logprob_temperature`). With top-k / top-p they are NOT the log-probs of the
distribution the tokens were drawn from (that one is renormalised over the kept tokens):
fine for RS and evaluation, wrong as PPO's behaviour log-probs, so `rlhfkit ppo` refuses
top-k / top-p (`loops.ppo.rollout.check_unfiltered`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from rlhfkit.models.llama_decoder import LlamaDecoder
from rlhfkit.models.wrap import is_sharded, unwrap
from rlhfkit.ops.logprobs import logprob_temperature
from rlhfkit.ops.masking import position_ids_from_mask
from rlhfkit.types import Generation


def left_pad(
    prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (B, P) ids left-padded with `pad_token_id`, and the (B, P) bool mask."""
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("sample() needs at least one prompt, and every prompt needs a token")
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.bool)
    for row, p in enumerate(prompt_ids):
        ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = True
    return ids.to(device), mask.to(device)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) -> (B, V) with tokens outside top-k / the top-p nucleus set to -inf.

    top_k = 0 and top_p = 1 keep everything. The nucleus is the smallest set of most likely
    tokens whose probability reaches top_p; the most likely token is always kept.
    """
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # (B, V) probability of strictly better tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) probabilities -> (B,) token ids by inverse-CDF sampling.

    One uniform per row from `generator` (on whatever device it lives), so a seeded CPU
    generator gives the same tokens whether the model runs on CPU or GPU up to float noise.
    A token with probability 0 is never drawn (the first index whose cumulative mass
    exceeds u has positive mass).
    """
    gen_device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[0], 1, generator=generator, device=gen_device).to(probs.device)
    cdf = probs.cumsum(-1)  # (B, V)
    target = u * cdf[:, -1:]  # (B, 1), below the total mass even if it rounds under 1
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def sample(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
) -> Generation:
    """Sample up to `max_new_tokens` tokens after each prompt; greedy when temperature == 0.

    Rows that produced EOS get `pad_token_id`, mask False and logprob 0 afterwards. With
    `stop_at_eos=False` EOS is an ordinary token: every row gets exactly `max_new_tokens`
    tokens, all of them in the mask (`ended` still says whether a row produced EOS); the
    sampled distribution is the same either way (EOS is never masked out). Runs under
    inference mode with the model in eval mode (its training flag is restored after). Returned
    tensors are on the model's device.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    model = unwrap(model)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, pad_token_id, device)
    was_training = model.training
    model.eval()
    try:
        # inference_mode skips autograd bookkeeping on every op (~10% of a small step); its
        # tensors cannot enter autograd, so the two outputs are cloned out of it. Not for a
        # sharded (FSDP2) module: it would leave inference tensors in its gathered weights.
        with torch.no_grad() if is_sharded(model) else torch.inference_mode():
            decoder = LlamaDecoder.build(model, mask, max_new_tokens) or _HFDecoder(model, mask)
            picker = _Picker(temperature, top_k, top_p, generator)
            response, logprobs = _sample_loop(
                decoder,
                picker,
                ids,
                mask,
                max_new_tokens,
                eos_token_id,
                pad_token_id,
                stop_at_eos,
            )
        response, logprobs = response.clone(), logprobs.clone()
    finally:
        model.train(was_training)
    is_eos = response == eos_token_id
    ended = is_eos.any(-1)
    if not stop_at_eos:
        return Generation(ids, mask, response, torch.ones_like(is_eos), logprobs, ended)
    # True up to and including EOS: a token is real unless EOS came strictly before it.
    eos_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    response_mask = ~eos_before
    return Generation(
        prompt_ids=ids,
        prompt_mask=mask,
        response_ids=response.masked_fill(~response_mask, pad_token_id),
        response_mask=response_mask,
        logprobs=logprobs.masked_fill(~response_mask, 0.0),
        ended=ended,
    )


class _Picker:
    """(B, V) logits -> (B,) tokens and their (B,) log softmax(logits / T) over the full
    vocabulary. Filtering (top-k / top-p) changes the draw, never the log-prob: with a
    filter the log-prob is not the sampler's (module docstring)."""

    def __init__(self, temperature, top_k, top_p, generator) -> None:
        self.temperature, self.generator = temperature, generator
        self.top_k, self.top_p = top_k, top_p
        self.filtered = bool(top_k) or top_p < 1.0

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        t = logprob_temperature(self.temperature)  # greedy: the log-probs at temperature 1
        scaled = logits if t == 1.0 else logits / t
        logp = torch.log_softmax(scaled, dim=-1)  # (B, V)
        if self.temperature == 0:
            token = logits.argmax(-1)  # (B,)
        elif self.filtered:
            probs = torch.softmax(filter_logits(scaled, self.top_k, self.top_p), dim=-1)
            token = _draw(probs, self.generator)
        else:  # logp.exp(): the same distribution, one op instead of a softmax
            token = _draw(logp.exp(), self.generator)
        return token, logp.gather(-1, token[:, None]).squeeze(-1)


def _end_check_interval(device: torch.device) -> int:
    """Tokens between checks that every row has ended. A check is a device sync: free on
    CPU, costly on an accelerator (the surplus tokens are cut, so R does not change)."""
    return 1 if device.type == "cpu" else 8


def _sample_loop(
    decoder: _HFDecoder | LlamaDecoder,
    pick: _Picker,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    stop_at_eos: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R) tokens (pad after a row's EOS when stop_at_eos) and their (B, R) log-probs."""
    batch, device = ids.shape[0], ids.device
    if max_new_tokens == 0:
        empty = torch.zeros(batch, 0, device=device)
        return empty.long(), empty
    check_every = _end_check_interval(device)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    logits = decoder.prefill(ids, mask)  # (B, V)
    for step in range(max_new_tokens):
        token, logp = pick(logits)
        if stop_at_eos:
            token = token.masked_fill(ended, pad_token_id)
            ended = ended | (token == eos_token_id)
        tokens.append(token)
        logps.append(logp)
        if step == max_new_tokens - 1:
            break
        if stop_at_eos and (step + 1) % check_every == 0 and bool(ended.all()):
            break
        logits = decoder.step(token, step)
    response, logprobs = torch.stack(tokens, 1), torch.stack(logps, 1)
    if stop_at_eos and bool(ended.all()):  # cut to the longest response, EOS included
        length = int((response == eos_token_id).long().argmax(-1).max()) + 1
        response, logprobs = response[:, :length], logprobs[:, :length]
    return response, logprobs


class _HFDecoder:
    """Any Hugging Face causal LM: its own forward with a DynamicCache, one token a step."""

    def __init__(self, model: torch.nn.Module, mask: torch.Tensor) -> None:
        self.model = model
        accepted = set(inspect.signature(model.forward).parameters)
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.cache = DynamicCache(config=model.config)
        self.positions = position_ids_from_mask(mask)  # (B, P), then (B, 1)
        self.attention = mask.long()  # (B, P + t), grows by one column per step

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=self.attention,
            position_ids=self.positions,
            past_key_values=self.cache,
            use_cache=True,
            **self.extra,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._forward(ids)

    def step(self, token: torch.Tensor, step: int) -> torch.Tensor:
        self.positions = self.positions[:, -1:] + 1  # (B, 1)
        ones = self.attention.new_ones(token.shape[0], 1)
        self.attention = torch.cat([self.attention, ones], dim=1)
        return self._forward(token[:, None])


def decode_responses(tokenizer: PreTrainedTokenizerBase, gen: Generation) -> list[str]:
    """The response text of each row, without EOS and padding."""
    drop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    texts = []
    for ids, keep in zip(gen.response_ids.tolist(), gen.response_mask.tolist(), strict=True):
        kept = [t for t, k in zip(ids, keep, strict=True) if k and t not in drop]
        texts.append(tokenizer.decode(kept, skip_special_tokens=False))
    return texts
