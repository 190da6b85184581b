"""`rlhfkit plan STAGE`: the roles of a stage, the plan per device, and its table."""

from __future__ import annotations

import json
import re
from typing import Any

from rlhfkit.config import PLAN_CONFIGS, PLAN_STAGES
from rlhfkit.config.base import is_url, parse_rm_spec
from rlhfkit.config.checks import check_options
from rlhfkit.config.rl import estimator_options, needs_value_model
from rlhfkit.errors import UserError
from rlhfkit.plan.count import (
    Role,
    count_model,
    gathered,
    kv_cache,
    layer_act,
    logits_act,
    read_config,
    role_bytes,
)

GB = 10**9
FP32 = 4

# --- the stages ----------------------------------------------------------------------------


def _per_proc(total: int, n: int) -> int:
    return max(1, -(-total // n))


def stage_roles(cfg: Any) -> tuple[list[Role], dict[str, int]]:
    """The roles of `cfg.stage` and its activation peaks per phase (bytes per process)."""
    a, gc, n = (2 if cfg.bf16 else FP32), cfg.gradient_checkpointing, cfg.nproc
    trust = getattr(cfg, "trust_remote_code", False)
    lora = cfg if cfg.lora_r else None
    if cfg.stage == "pretrain":
        from rlhfkit.models.presets import _resolve_config

        config = _resolve_config(cfg.model_config or cfg.preset)
        if cfg.tokenizer is None:
            config.vocab_size = cfg.vocab_size
        s = count_model(config, seq_cls=False, lora=lora)
        source = cfg.model_config or f"preset {cfg.preset}"
        act = layer_act(s, cfg.batch_size, cfg.seq_len, a, gc) + logits_act(
            s, cfg.batch_size, cfg.seq_len, a
        )
        return [Role("model", source, s, True)], {"train": act}
    if cfg.stage in ("sft", "rs"):
        source = cfg.model if cfg.stage == "sft" else cfg.policy
        s = count_model(
            read_config(source, "--model" if cfg.stage == "sft" else "--policy", trust),
            seq_cls=False,
            lora=lora,
            trust_remote_code=trust,
        )
        b, seq = cfg.batch_size, cfg.max_len
        phases = {"train": layer_act(s, b, seq, a, gc) + logits_act(s, b, seq, a)}
        if cfg.stage == "rs":
            gen = _per_proc(cfg.sample_batch_size, n)
            phases["sample"] = kv_cache(s, gen, cfg.max_prompt_len + cfg.max_new_tokens, a)
        return [Role("model" if cfg.stage == "sft" else "policy", source, s, True)], phases
    if cfg.stage == "rm":
        s = count_model(
            read_config(cfg.model, "--model", trust),
            seq_cls=True,
            lora=lora,
            trust_remote_code=trust,
        )
        # a ranking prompt brings K responses; counted as a pair (K = 2) per prompt
        act = layer_act(s, 2 * cfg.batch_size, cfg.max_len, a, gc)
        return [Role("reward model", cfg.model, s, True, "head: 1 output")], {"train": act}
    if cfg.stage == "ppo":
        return _ppo_roles(cfg, a, gc, n, trust)
    if cfg.stage == "dpo":
        return _dpo_roles(cfg, a, gc, trust)
    raise UserError(f"unknown stage {cfg.stage!r}: choose from {', '.join(PLAN_STAGES)}")


def _ppo_roles(
    cfg: Any, a: int, gc: bool, n: int, trust: bool
) -> tuple[list[Role], dict[str, int]]:
    policy_cfg = read_config(cfg.policy, "--policy", trust)
    policy = count_model(
        policy_cfg, seq_cls=False, lora=cfg if cfg.lora_r else None, trust_remote_code=trust
    )
    roles = [Role("policy", cfg.policy, policy, True, f"LoRA r={cfg.lora_r}" if cfg.lora_r else "")]
    if cfg.lora_r and cfg.reference in (None, "", cfg.policy):
        roles.append(Role("reference", cfg.policy, None, False, "the policy, adapter off"))
    else:
        ref = cfg.reference or cfg.policy
        shape = count_model(
            read_config(ref, "--reference", trust), seq_cls=False, trust_remote_code=trust
        )
        roles.append(Role("reference", ref, shape, False))
    rms = {} if cfg.rule_reward else dict(parse_rm_spec(s) for s in cfg.rm)
    rms = {name: path for name, path in rms.items() if not is_url(path)}  # served: not here
    rm_shapes = {
        name: count_model(
            read_config(path, f"--rm {name}=", trust), seq_cls=True, trust_remote_code=trust
        )
        for name, path in rms.items()
    }
    if not needs_value_model(cfg):  # a critic-free --estimator: no value model at all
        roles += [Role(f"rm:{n}", rms[n], s, False) for n, s in rm_shapes.items()]
        return roles, _ppo_phases(cfg, policy, None, a, gc, n)
    # With LoRA the value model trains an adapter too; started from an RM it IS that RM
    # (roles.share_reward_base), which then costs nothing more as a reward model.
    init, lora, shared = cfg.value_init, (cfg if cfg.lora_r else None), None
    note = f"LoRA r={cfg.lora_r}" if cfg.lora_r else ""
    if init == "policy" or (cfg.rule_reward and init == "rm") or (init == "rm" and not rms):
        value = count_model(policy_cfg, seq_cls=True, lora=lora, trust_remote_code=trust)
        vsrc = cfg.policy
    elif init == "rm" or init in rms:
        name = next(iter(rms)) if init == "rm" else init
        cfg_rm = read_config(rms[name], f"--rm {name}=", trust)
        value = count_model(cfg_rm, seq_cls=True, lora=lora, trust_remote_code=trust)
        vsrc, shared = rms[name], (name if lora else None)
        note = f"LoRA r={cfg.lora_r} of rm:{name}" if lora else ""
    else:
        value = count_model(read_config(init, "--value-init", trust), seq_cls=True, lora=lora)
        vsrc = init
    roles.append(Role("value", vsrc, value, True, note))
    roles += [
        Role(f"rm:{n}", rms[n], None, False, "the value model, adapter off")
        if n == shared
        else Role(f"rm:{n}", rms[n], s, False)
        for n, s in rm_shapes.items()
    ]
    return roles, _ppo_phases(cfg, policy, value, a, gc, n)


def _ppo_phases(cfg: Any, policy: Any, value: Any, a: int, gc: bool, n: int) -> dict[str, int]:
    """Activation bytes per phase of a PPO step; no value step without a value model."""
    # rollout: prompts split over processes, --samples-per-prompt rows each; a PPO step: a
    # minibatch or --micro-batch-size
    rollout = _per_proc(cfg.batch_size, n) * estimator_options(cfg)[2]
    micro = cfg.micro_batch_size or _per_proc(rollout, cfg.num_mini_batches)
    seq, resp = cfg.max_prompt_len + cfg.max_new_tokens, cfg.max_new_tokens + 1
    phases = {
        "rollout": kv_cache(policy, rollout, seq, a) + logits_act(policy, rollout, resp, a),
        "policy step": layer_act(policy, micro, seq, a, gc) + logits_act(policy, micro, resp, a),
    }
    if value is not None:
        phases["value step"] = layer_act(value, micro, seq, a, gc)
    if cfg.ptx_coef > 0:
        ptx = _per_proc(cfg.ptx_batch_size, n)
        phases["ptx step"] = layer_act(policy, ptx, cfg.ptx_seq_len, a, gc) + logits_act(
            policy, ptx, cfg.ptx_seq_len, a
        )
    return phases


def _dpo_roles(cfg: Any, a: int, gc: bool, trust: bool) -> tuple[list[Role], dict[str, int]]:
    policy = count_model(
        read_config(cfg.model, "--model", trust),
        seq_cls=False,
        lora=cfg if cfg.lora_r else None,
        trust_remote_code=trust,
    )
    roles = [Role("policy", cfg.model, policy, True, f"LoRA r={cfg.lora_r}" if cfg.lora_r else "")]
    if cfg.reference in (None, "", cfg.model):  # its log-probs come from the starting policy
        note = "the policy, adapter off" if cfg.lora_r else "the policy before its first step"
        roles.append(Role("reference", cfg.model, None, False, note))
    else:  # counted though freed before training: an upper bound
        ref = count_model(
            read_config(cfg.reference, "--reference", trust), seq_cls=False, trust_remote_code=trust
        )
        roles.append(
            Role("reference", cfg.reference, ref, False, "one pass, freed before training")
        )
    # a prompt brings K responses; counted as a pair (K = 2) per prompt, as the RM's plan
    b, seq = 2 * cfg.batch_size, cfg.max_len
    return roles, {"train": layer_act(policy, b, seq, a, gc) + logits_act(policy, b, seq, a)}


# --- the plan --------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    """'80GB' -> 80e9, '80GiB' -> 80 * 2^30, '1.5TB', '123456' (bytes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?b?|b)?\s*", text, re.IGNORECASE)
    if not m:
        raise UserError(
            f"--device-memory {text!r}: expected e.g. 80GB, 141GiB or a number of bytes"
        )
    unit = (m.group(2) or "b").lower().rstrip("b")
    scale = 1 if not unit else (1024 if "i" in unit else 1000) ** ("kmgt".index(unit[0]) + 1)
    return int(float(m.group(1)) * scale)


def make_plan(cfg: Any) -> dict[str, Any]:
    """The plan of a `Plan<Stage>Config` as a JSON-ready dict (what --json prints)."""
    capacity = parse_bytes(cfg.device_memory)
    roles, phases = stage_roles(cfg)
    sharded = cfg.strategy == "fsdp2" and cfg.nproc > 1
    offload = sharded and cfg.cpu_offload
    states = device = 0
    for r in roles:
        r.bytes = role_bytes(r, cfg.nproc if sharded else 1)
        states += sum(r.bytes.values())
    extra: dict[str, int] = {}
    if sharded:
        extra["fsdp2 gathered"] = max(
            gathered(r.shape, r.trained, cfg.bf16) for r in roles if r.shape is not None
        )
    elif cfg.nproc > 1:
        extra["ddp buckets"] = sum(r.bytes["grads"] for r in roles)
    peak = max(phases, key=phases.__getitem__)
    device = (0 if offload else states) + phases[peak] + sum(extra.values())
    return {
        "stage": cfg.stage,
        "nproc": cfg.nproc,
        "strategy": cfg.strategy,
        "bf16": cfg.bf16,
        "lora_r": cfg.lora_r,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "cpu_offload": offload,
        "roles": [
            {
                "role": r.name,
                "source": r.source,
                "params": r.shape.n_params if r.shape else 0,
                "trained_params": r.shape.n_trained if r.shape and r.trained else 0,
                "note": r.note,
                **r.bytes,
                "total": sum(r.bytes.values()),
            }
            for r in roles
        ],
        "states": states,
        "activations": phases,
        "activation_peak": peak,
        **{k.replace(" ", "_"): v for k, v in extra.items()},
        "host": states if offload else 0,
        "total_per_device": device,
        "device_memory": capacity,
        "fits": device <= capacity,
    }


def _gb(x: int) -> str:
    """Decimal units, as --device-memory's GB: '7.90 GB', '252.1 MB', '0'."""
    if x >= GB:
        return f"{x / GB:.2f} GB"
    return f"{x / 1e6:.1f} MB" if x >= 1e5 else f"{x / 1e3:.1f} kB" if x else "0"


def _count(x: int) -> str:
    return f"{x / 1e9:.2f}B" if x >= 1e9 else f"{x / 1e6:.1f}M" if x >= 1e5 else f"{x}"


def format_plan(p: dict[str, Any]) -> str:
    how = [f"{p['nproc']} process{'es' if p['nproc'] > 1 else ''}", f"strategy {p['strategy']}"]
    how += ["bf16 autocast" if p["bf16"] else "fp32"]
    how += [f"LoRA r={p['lora_r']}"] if p["lora_r"] else []
    how += ["gradient checkpointing"] if p["gradient_checkpointing"] else []
    how += ["cpu offload"] if p["cpu_offload"] else []
    head = ("role", "params", "trained", "weights", "grads", "optimizer", "total", "")
    rows = [head] + [
        (r["role"], _count(r["params"]), _count(r["trained_params"]), _gb(r["weights"]),
         _gb(r["grads"]), _gb(r["optimizer"]), _gb(r["total"]), f"({r['note']})" if r["note"] else "")
        for r in p["roles"]
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"rlhfkit plan {p['stage']}: {', '.join(how)}; per device:", ""]
    for row in rows:
        cells = [
            c.ljust(w) if i in (0, 7) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += ["", f"{'states (weights + grads + optimizer)':<40}{_gb(p['states']):>12}"]
    if p["cpu_offload"]:
        lines[-1] += "  (in host memory: --cpu-offload)"
    for k, v in p["activations"].items():
        mark = "  <- peak" if k == p["activation_peak"] else ""
        lines.append(f"{'activations, ' + k:<40}{_gb(v):>12}{mark}")
    for k in ("fsdp2_gathered", "ddp_buckets"):
        if k in p:
            lines.append(f"{k.replace('_', ' '):<40}{_gb(p[k]):>12}")
    verdict = "fits" if p["fits"] else "does NOT fit"
    share = 100 * p["total_per_device"] / p["device_memory"]
    lines.append(
        f"{'total per device':<40}{_gb(p['total_per_device']):>12}"
        f"  of {_gb(p['device_memory'])}: {verdict} ({share:.0f}%)"
    )
    return "\n".join(lines)


def run_plan(cfg: Any) -> int:
    """Print the plan of `rlhfkit plan STAGE ...` (table, or JSON with --json)."""
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    stage = getattr(cfg, "stage", "")
    if stage not in PLAN_CONFIGS:
        what = f"unknown stage {stage!r}" if stage else "name a stage"
        raise UserError(f"{what}: rlhfkit plan {{{','.join(PLAN_STAGES)}}} [its options] (--help)")
    if not hasattr(cfg, "lora_r"):  # `rlhfkit plan --json ppo`: the stage was not first
        raise UserError(f"name the stage first: rlhfkit plan {stage} [its options]")
    plan = make_plan(cfg)
    print(json.dumps(plan, indent=2) if cfg.json else format_plan(plan))
    return 0
