"""vLLM as a generation engine (`sampling.generator.ENGINES["vllm"]`): colocated, in this process,
with the policy's weights pushed into it in place after every update.

Why in process: vLLM's in-process mode (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the "uni"
executor) runs the model runner in this Python, so `collective_rpc("reload_weights",
weights_iterator=...)` hands it the trainer's tensors directly (no file, no copy through a
socket); the default multi-process mode can only reload from a saved folder.

- Start: the policy's config goes to a temporary folder, vLLM builds the model there with
  dummy weights (`load_format="dummy"`: nothing read from disk), then `sync_weights` loads
  the policy's own. No tokenizer in vLLM (`skip_tokenizer_init`): prompts go in as token
  ids, texts come out of our tokenizer (`models.generate.decode_responses`).
- Sampling: the same options as our path (temperature, 0 = greedy; top-k; top-p; max new
  tokens; stop at EOS or ignore it), one seed per prompt drawn from the caller's generator
  (vLLM's `SamplingParams(seed=...)`), so a seeded run is reproducible on one engine (the
  tokens differ from our path's: other random numbers).
- Log-probs: vLLM's "processed" log-probs, log softmax(logits / T) at the sampled token
  (T = 1 for greedy), as ours; with top-k / top-p vLLM's are of the filtered, renormalised
  distribution, ours of the full vocabulary (PPO refuses filters, so PPO never sees the
  difference). PPO recomputes them with a training forward anyway (`ppo.rollout`).
- `sync_weights`: the policy's state dict (DDP unwrapped; LoRA merged; FSDP2 gathered whole
  on every rank) into the running engine, then its prefix cache is reset (cached KV of old
  weights).
- Several engines in one process (stages in a row, tests): vLLM keeps its process groups
  in module globals; those of an earlier engine whose process group has since been torn
  down are forgotten before a new engine starts (`_forget_stale_groups`).
- vLLM's CPU worker binds its threads and turns `torch.set_num_threads` into a no-op for the
  whole process; both are put back after every call, so training keeps its own.
- Memory: on an accelerator `--vllm-gpu-memory-utilization` is vLLM's own (weights + KV
  cache). On CPU vLLM reads it as a share of host memory that must also hold this whole
  process, training included, so a small share fails at start: there it sizes the KV cache
  alone (share x host memory; `VLLM_CPU_KVCACHE_SPACE`, in GiB, still wins).

Under torchrun (DDP or FSDP2), as TRL's `vllm_mode="colocate"` and verl do: every rank
starts an engine in its own process with vLLM's "external_launcher" executor, which joins
our process group instead of starting workers (engine start is collective: every rank
builds its generator at once). With `--vllm-tensor-parallel-size` 1 (the default) each
rank's engine is whole and independent: it generates for that rank's prompts only, and a
rank may generate alone (PPO's evaluation on rank 0 under DDP). With N > 1, each group of N
consecutive ranks shares one engine sharded N ways (vLLM cuts its tensor-parallel groups
the same way; the number of processes must be a multiple of N, checked in
`validate.check_vllm` before any model loads): the group's engines run in lockstep and must
get the same requests, so `generate` gathers the group's prompts and seeds, generates them
all and keeps this rank's rows; every rank of a group must call it together (so PPO with
`--eval-prompts` under DDP, which evaluates on rank 0 alone, is refused). `sync_weights`
gives every rank the whole weights (FSDP2: an all-gather, one full copy per rank while it
runs); each engine loads the part it holds. Tested on CPU with gloo and 2 processes (DDP,
FSDP2; N = 1 and 2). Without torchrun and with N > 1, vLLM runs its own worker processes
and the weights travel to them pickled (untested here: no GPUs). `GenerationSettings.bf16`
(autocast) does not apply: vLLM's weight copy has its own dtype (`--vllm-dtype`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule

from rlhfkit.errors import UserError
from rlhfkit.models.generate import decode_responses, left_pad
from rlhfkit.models.lora import has_lora, merged_state_dict
from rlhfkit.models.wrap import unwrap
from rlhfkit.sampling.settings import EngineSettings, GenerationSettings
from rlhfkit.types import Generation
from rlhfkit.validate import VLLM_CPU_MIN_HEAD_DIM

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in process: in-place sync


@contextlib.contextmanager
def _keep_threads() -> Iterator[None]:
    """vLLM's CPU worker replaces `torch.set_num_threads` with a no-op for the whole process
    (after binding its threads): the function and the thread count training had come back."""
    n, setter = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = setter
        torch.set_num_threads(n)


@contextlib.contextmanager
def _keep_rng() -> Iterator[None]:
    """In process, vLLM seeds the global RNGs (random, numpy, torch) when it starts; the
    training's streams are put back."""
    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _shutdown(llm: Any) -> None:
    """Stop an engine (its generator was collected, or at exit), before vLLM's own
    finalizer would. The loops may have torn down torch.distributed already (which vLLM's
    in-process worker joined), so vLLM's clean-up of its process groups can fail: nothing
    is left to clean then, so it says nothing."""
    with contextlib.suppress(Exception):
        llm.llm_engine.engine_core.shutdown()


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Warnings of one vLLM logger off (vLLM has no tokenizer here, by design, so its chat
    template warm-up fails with a traceback at every start). A filter, not a level: vLLM's
    first start applies a logging dictConfig, which resets the levels of existing loggers."""
    log = logging.getLogger(name)
    drop = logging.Filter()
    drop.filter = lambda record: record.levelno >= logging.ERROR  # type: ignore[method-assign]
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _forget_stale_groups() -> None:
    """vLLM keeps its process groups in module globals and reuses them for every engine
    of the process; once the process group they came from is gone (a loop's teardown after
    an earlier engine, e.g. `ppo` then another stage in one process), a new engine would
    fail on them. Then they are forgotten (already destroyed: nothing to clean up)."""
    from vllm.distributed import parallel_state as ps

    if ps._WORLD is None:
        return
    try:
        torch.distributed.get_backend(ps._WORLD.device_group)
        return  # alive: vLLM reuses it
    except (ValueError, RuntimeError):
        pass
    for name in ("_WORLD", "_INNER_DP_WORLD", "_NODE_COUNT", "_TP", "_ETP", "_ENGRAM_DP",
                 "_DCP", "_PP", "_DP", "_EP", "_EPLB", "_PCP"):  # fmt: skip
        setattr(ps, name, None)


def policy_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain Hugging Face weights of a training module, whole on every process (each
    has an engine): DDP unwrapped, FSDP2 gathered (collective: every process calls), a LoRA
    adapter merged."""
    module = unwrap(model)
    full = None
    if isinstance(module, FSDPModule):  # not `full_state_dict`: that gathers to rank 0 only
        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    if has_lora(module):
        return merged_state_dict(module, full)
    return full if full is not None else module.state_dict()


def _world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed; (0, 1) when it is not initialised."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _tp_group(rank: int, world: int, tp: int) -> Any:
    """The process group of the `tp` consecutive ranks that share this rank's engine (vLLM
    cuts its tensor-parallel groups the same way); every process must call."""
    groups = [list(range(first, first + tp)) for first in range(0, world, tp)]
    mine, _ = torch.distributed.new_subgroups_by_enumeration(groups, backend="gloo")
    return mine


def _model_class(module: torch.nn.Module) -> type:
    """The module's Hugging Face class; FSDP2 puts its own subclass in front of it."""
    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class VLLMGenerator:
    """Samples with vLLM from its own copy of the policy's weights (module docstring)."""

    name = "vllm"  # prefix of the metrics it adds (vllm/logprob_gap_*)
    exact_logprobs = False  # PPO recomputes the behaviour log-probs with a training forward

    def __init__(self, model: torch.nn.Module, tokenizer: Any, engine: EngineSettings) -> None:
        from vllm import LLM

        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        module = unwrap(model)
        config = copy.deepcopy(module.config)
        on_cpu = self.device.type == "cpu"
        if on_cpu and _head_dim(config) < VLLM_CPU_MIN_HEAD_DIM:
            raise UserError(
                f"--generator vllm: this model has head_dim {_head_dim(config)}; vLLM's CPU "
                f"attention needs >= {VLLM_CPU_MIN_HEAD_DIM} (use --generator hf)"
            )
        rank, world = _world()
        tp = engine.vllm_tensor_parallel_size
        self._group = None  # the ranks that share this engine, when more than one
        if world > 1:  # under torchrun: one engine per rank, or per group of tp ranks
            if world % tp:
                raise UserError(f"--vllm-tensor-parallel-size {tp}: must divide {world} processes")
            backend = "external_launcher"  # vLLM joins our process group, no process of its own
            self._group = _tp_group(rank, world, tp) if tp > 1 else None
        else:
            backend = "uni" if tp == 1 else None  # None: vLLM's own worker processes
        self._pickled = backend is None  # weights cross to worker processes
        config.architectures = [_model_class(module).__name__]
        self._folder = tempfile.TemporaryDirectory(prefix="rlhfkit-vllm-")
        config.save_pretrained(self._folder.name)
        dtype = engine.vllm_dtype
        if dtype == "auto":
            dtype = str(next(module.parameters()).dtype).removeprefix("torch.")
        memory: dict[str, Any] = {"gpu_memory_utilization": engine.vllm_gpu_memory_utilization}
        if on_cpu:  # vLLM's CPU share counts this whole process (training too): size the cache
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            memory = {"kv_cache_memory_bytes": int(engine.vllm_gpu_memory_utilization * total)}
        _forget_stale_groups()
        with _keep_threads(), _keep_rng(), _quiet("vllm.renderers.base"):
            self.llm = LLM(
                model=self._folder.name,
                load_format="dummy",  # the real weights come from the policy (sync_weights)
                skip_tokenizer_init=True,
                dtype=dtype,
                seed=rank // tp,  # one per engine: a group's ranks must sample alike
                enforce_eager=engine.vllm_enforce_eager,
                **memory,
                tensor_parallel_size=tp,
                distributed_executor_backend=backend,
                logprobs_mode="processed_logprobs",  # after temperature, as ours (module doc)
                enable_prefix_caching=True,
            )
        weakref.finalize(self, _shutdown, self.llm)
        self.sync_weights()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        rng: torch.Generator | None = None,
    ) -> Generation:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids, mask = left_pad(prompt_ids, pad, self.device)
        if settings.max_new_tokens == 0:
            empty = torch.zeros(len(prompt_ids), 0, device=self.device)
            none = torch.zeros(len(prompt_ids), dtype=torch.bool, device=self.device)
            return Generation(ids, mask, empty.long(), empty.bool(), empty, none, [""] * len(none))
        rows, seeds, first = [list(p) for p in prompt_ids], _seeds(len(prompt_ids), rng), 0
        if self._group is not None:  # one engine, several ranks: all their prompts, once
            rows, seeds, first = _gather(self._group, rows, seeds)
        params = [
            SamplingParams(
                n=1,
                temperature=settings.temperature,
                top_k=settings.top_k if settings.top_k > 0 else -1,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=seed,
                logprobs=0,  # the sampled token's only
                ignore_eos=not settings.stop_at_eos,
                stop_token_ids=[eos] if settings.stop_at_eos else None,
                detokenize=False,
            )
            for seed in seeds
        ]
        prompts = [TokensPrompt(prompt_token_ids=r) for r in rows]
        with _keep_threads():
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        outs = outs[first : first + len(prompt_ids)]
        gen = _to_generation(ids, mask, [o.outputs[0] for o in outs], eos, pad, settings)
        gen.texts = decode_responses(self.tokenizer, gen)
        return gen

    def sync_weights(self) -> None:
        """The policy's current weights into the engine, in place; then the prefix cache
        (KV of the old weights) is dropped."""
        state = policy_state_dict(self.model)
        weights: Any = ((k, v.detach()) for k, v in state.items())
        if self._pickled:  # sent to vLLM's worker processes: a list
            weights = list(weights)
        with _keep_threads(), torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            self.llm.reset_prefix_cache()


def _gather(group: Any, rows: list[list[int]], seeds: list[int | None]) -> tuple[list, list, int]:
    """The prompts and seeds of every rank in `group`, in rank order, and where this rank's
    start: the group's engines are one engine sharded, run in lockstep, so each must get
    the same requests (vLLM's external-launcher contract); every rank of the group calls."""
    parts: list[Any] = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(parts, (rows, seeds), group=group)
    first = sum(len(r) for r, _ in parts[: torch.distributed.get_rank(group)])
    return [r for rs, _ in parts for r in rs], [x for _, xs in parts for x in xs], first


def _seeds(n: int, rng: torch.Generator | None) -> list[int | None]:
    """One vLLM seed per prompt, drawn from the caller's generator (None: unseeded)."""
    if rng is None:
        return [None] * n
    return torch.randint(0, 2**31 - 1, (n,), generator=rng, device=rng.device).tolist()


def _to_generation(
    ids: torch.Tensor,
    mask: torch.Tensor,
    outputs: Sequence[Any],
    eos: int,
    pad: int,
    settings: GenerationSettings,
) -> Generation:
    """vLLM's completions -> the tensors our path returns: (B, R) ids right-padded, R the
    longest response; the mask True up to and including EOS; log-probs 0 at padding."""
    rows = [list(o.token_ids) for o in outputs]
    width = max(len(r) for r in rows)
    response = torch.full((len(rows), width), pad, dtype=torch.long)
    response_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    logprobs = torch.zeros(len(rows), width)
    ended = torch.tensor([eos in row for row in rows], dtype=torch.bool)
    for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
        if settings.stop_at_eos and eos in row:  # nothing after EOS (vLLM stops there)
            row = row[: row.index(eos) + 1]
        response[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        response_mask[i, : len(row)] = True
        logprobs[i, : len(row)] = torch.tensor(
            [step[t].logprob for step, t in zip(out.logprobs, row, strict=False)]
        )
    device = ids.device
    return Generation(
        prompt_ids=ids,
        prompt_mask=mask,
        response_ids=response.to(device),
        response_mask=response_mask.to(device),
        logprobs=logprobs.to(device),
        ended=ended.to(device),
    )
