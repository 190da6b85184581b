"""The roles of `rlhfkit ppo` (and the reward of `rlhfkit select`), built from a config:
policy, frozen reference, value model (gae only: the critic-free estimators have none), and
the scorer (reward models or a rule)."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.config.rl import needs_value_model
from rlhfkit.data.chat import resolve_chat
from rlhfkit.errors import UserError
from rlhfkit.loops.common import disable_dropout, seed_everything
from rlhfkit.loops.lm import choose_packing
from rlhfkit.models.fast_linear import use_onednn_linears
from rlhfkit.models.load import freeze, load_causal_lm, load_tokenizer
from rlhfkit.models.lora import AdapterOff
from rlhfkit.models.reward import init_reward_model, load_reward_model
from rlhfkit.models.wrap import shard, unwrap
from rlhfkit.scoring.build import build_scorer
from rlhfkit.scoring.rm import RewardScorer
from rlhfkit.validate import check_served_value_init

log = logging.getLogger("rlhfkit")


def packed_roles(
    packing: bool | None, roles: dict[str, tuple[torch.nn.Module, str]], rank: int = 0
) -> frozenset[str]:
    """The names of the roles whose forwards run padding-free (`models/packing.py`).

    roles: name -> (model, "logits" | "values"). Each is resolved as the LM loop resolves
    --packing (`loops/lm.choose_packing`) with this role's probe (`packed_forward_error`):
    --no-packing none; auto each model whose packed forward equals its padded one, a
    one-line note for the others (OPT, Falcon, Bloom: later sequences of a row attend to
    earlier ones); --packing on such a model is a UserError, before any training.
    """
    return frozenset(
        name
        for name, (model, kind) in roles.items()
        if choose_packing(
            model, packing, "ppo", rank, kind=kind,
            what=f"the {name} model ({type(unwrap(model)).__name__})",
        )
    )  # fmt: skip


def value_source(cfg: Any) -> str:
    """Where the value model starts: 'policy' (also for a rule reward with the default
    --value-init rm: there is no RM to copy), else --value-init as given; 'none' for a
    critic-free --estimator."""
    if not needs_value_model(cfg):
        return "none"
    return (
        "policy"
        if cfg.value_init == "policy" or (cfg.rule_reward and cfg.value_init == "rm")
        else cfg.value_init
    )


def build_value_model(
    cfg: PPOConfig, policy: torch.nn.Module, tokenizer: Any, scorer: Any, device: torch.device
) -> torch.nn.Module:
    """The value model, trainable, in eval mode (no dropout).

    --value-init rm (default): a copy of the first --rm (InstructGPT), or of the RM
    named; it must read the policy's token ids. --value-init policy (and any rule reward):
    the policy's backbone with a zero one-output head (values start at 0). Anything else
    is taken as the folder of a saved reward/value model.

    With --lora-r and an RM to start from, the value model is not a copy: it IS that
    reward model, which trains a LoRA adapter (and its own copy of the head), and the
    scorer reads the reward from it with the adapter off (`share_reward_base`): one copy
    of the RM's weights serves both roles.
    """
    init = cfg.value_init
    if value_source(cfg) == "policy":
        model, _ = init_reward_model(
            policy, copy.deepcopy(tokenizer), head_init="zeros", seed=cfg.seed, device=device
        )
    else:
        path, name = init, None
        if init == "rm" or (scorer is not None and init in getattr(scorer, "names", [])):
            from rlhfkit.scoring.rm import parse_rm_spec

            check_served_value_init(cfg)  # a served RM has no weights to copy
            specs = dict(parse_rm_spec(s) for s in cfg.rm)
            name = next(iter(specs)) if init == "rm" else init
            path = specs[name]
        if name is not None and not scorer.shares_tokenizer(name, tokenizer):
            raise UserError(
                f"--value-init {init}: reward model {name!r} uses another tokenizer than the "
                "policy, so it cannot read the policy's tokens; use --value-init policy"
            )
        if cfg.lora_r and name is not None:
            model = share_reward_base(scorer, name)
        else:
            model, _ = load_reward_model(path, device, trust_remote_code=cfg.trust_remote_code)
            model.requires_grad_(True)
    model.eval()
    return model


def share_reward_base(scorer: RewardScorer, name: str) -> torch.nn.Module:
    """Reward model `name` of `scorer`, handed out to become the LoRA value model; the
    scorer keeps it as `AdapterOff(model)`, so its reward stays the RM's own (adapter and
    trained head copy off) while the value model trains (LoRA added by `wrap_for_training`)."""
    loaded = scorer.models[name]
    scorer.models[name] = replace(loaded, model=AdapterOff(loaded.model))
    return loaded.model


def fast_linears(*roles: Any) -> None:
    """oneDNN for the large fp32 CPU linear layers of these models and of a RewardScorer's
    reward models (`models.fast_linear`: same parameters and checkpoints; each call still
    falls back to F.linear off CPU, under autocast or when small). A rule scorer is
    skipped. Off: RLHFKIT_ONEDNN=0."""
    for role in roles:
        if isinstance(role, torch.nn.Module):
            use_onednn_linears(role)
        elif isinstance(role, RewardScorer):
            for rm in role.models.values():
                use_onednn_linears(rm.model)


def dropout_off(*roles: Any) -> list[str]:
    """Dropout 0 in every model of these roles, config included (`common.disable_dropout`;
    N+ details: PPO's log-prob ratios and values are noise under dropout). A rule scorer is
    skipped. Returns the settings that were not 0 before, e.g. ['attn_pdrop=0.1']."""
    changed: set[str] = set()
    for role in roles:
        if isinstance(role, torch.nn.Module):
            changed.update(disable_dropout(role))
        elif isinstance(role, RewardScorer):
            for rm in role.models.values():
                changed.update(disable_dropout(rm.model))
    return sorted(changed)


def lora_reference(cfg: PPOConfig) -> bool:
    """With --lora-r, the reference is the policy with its adapter switched off
    (`lora.AdapterOff`), unless --reference names another model."""
    return bool(cfg.lora_r) and cfg.reference in (None, "", cfg.policy)


def build_roles(cfg: PPOConfig, device: torch.device):
    """(tokenizer, policy, reference, value model, scorer) of a PPO config, on `device`;
    no dropout in any of them (`dropout_off`); large linear layers run oneDNN on CPU
    (`fast_linears`). With --lora-r the adapters are added when the policy is wrapped for
    training (`loop._trainables`), and the reference is the policy with them off. The
    policy's prompt format is resolved first (`data.chat.resolve_chat`)."""
    tokenizer = load_tokenizer(cfg.policy, trust_remote_code=cfg.trust_remote_code)
    # the policy's prompt format, kept by every checkpoint and the exported policy
    resolve_chat(tokenizer, cfg.chat, what=cfg.policy)
    seed_everything(cfg.seed)
    policy = load_causal_lm(cfg.policy, device, trust_remote_code=cfg.trust_remote_code)
    if lora_reference(cfg):  # the policy with its adapter off: one copy of the base weights
        reference = AdapterOff(policy)
    else:
        reference = freeze(
            load_causal_lm(
                cfg.reference or cfg.policy, device, trust_remote_code=cfg.trust_remote_code
            )
        )
    scorer = build_scorer(cfg, device, cfg.whiten)
    value_model = None  # a critic-free --estimator: never built nor loaded
    if needs_value_model(cfg):
        value_model = build_value_model(cfg, policy, tokenizer, scorer, device)
    policy.eval()  # no dropout: sampling and training log-probs agree
    changed = dropout_off(policy, reference, value_model, scorer)
    if changed:
        log.info("ppo: dropout set to 0 in every role (was %s)", ", ".join(changed))
    fast_linears(policy, reference, value_model, scorer)
    return tokenizer, policy, reference, value_model, scorer


def shard_frozen(
    reference: torch.nn.Module,
    scorer: Any,
    device: torch.device,
    *,
    bf16: bool = False,
    cpu_offload: bool = False,
) -> None:
    """FSDP2 on the frozen roles too (the reference, every reward model of a RewardScorer),
    so that four large models fit across the processes. Their forwards become collective:
    every process runs the same ones (the rollout's, and evaluation on every process)."""
    for model in (reference, *(rm.model for rm in getattr(scorer, "models", {}).values())):
        if not isinstance(model, AdapterOff):  # the policy itself, sharded as trained
            shard(model, device, bf16=bf16, cpu_offload=cpu_offload)
