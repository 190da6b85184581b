"""`rlhfkit plan STAGE`: memory per device of a stage, from its models' config.json alone.

Parameters are counted exactly, not by formula: each model is built from its config on
PyTorch's `meta` device (`AutoModelForCausalLM` / `AutoModelForSequenceClassification
.from_config`, or rlhfkit's backbone + score head for a family with no such class, under
`torch.device("meta")`: shapes only, no memory, no weights read), so
any architecture transformers knows is counted as it will be loaded (tied embeddings once,
biases, norms, a reward model's one-output head). What the loops then hold per process:

- weights: fp32 (4 B) for every role, `--bf16` included: it is autocast, and FSDP2's
  `MixedPrecisionPolicy` keeps fp32 shards, casting to bf16 only the layers it gathers;
- gradients: fp32, one per trained parameter; optimizer: AdamW's two fp32 states per
  trained parameter plus its fp32 `step` scalar per trained tensor;
- LoRA (`--lora-r`): the base frozen (weights only); trained: A (r x in) and B (out x r)
  per targeted linear layer (PEFT's matching: 'all-linear' = every Linear/Conv1D but the
  output head); a reward model also trains a copy of its score head (`modules_to_save`).
  In ppo the reference is the policy with its adapter off: 0 extra bytes;
- `--strategy fsdp2` with `--nproc N > 1`: every tensor's shard, ceil(dim0 / N) rows
  (FSDP2 pads shards to equal size), plus a working set: the root's parameters
  (embeddings, final norm, head) and two decoder layers gathered (prefetch), in bf16 with
  `--bf16`, and one layer's unreduced gradients; `ddp` with N > 1: every process holds
  everything, plus DDP's gradient buckets (a second copy of the gradients).
  `--cpu-offload` moves the sharded states to host memory (listed, not in the device total).

Activations (estimates; A = 2 B per value with `--bf16`, else 4): per decoder layer and
token, the tensors autograd keeps: 6h + 2kv + 4i values for a gated MLP (Llama, Qwen:
gate, up, act, product), 6h + 2kv + 2i otherwise (GPT-2), with h the hidden size, kv the
key/value width (kv heads x head dim), i the MLP width; attention by SDPA/flash (no s x s
scores kept). So per layer ~ batch * seq * h * K bytes, K = A (6 + 2kv/h + 4i/h). With
`--gradient-checkpointing` only each layer's fp32 input is kept (batch * seq * h * 4 per
layer) plus one layer's activations during its recompute. LM logits: tokens * vocab *
(A + 4) (logits and their fp32 log-softmax). Generation: the KV cache, layers * 2 * batch
* seq * kv * A. Per stage, the peak of its phases (ppo: rollout, policy step, value step).
"""

from rlhfkit.plan.command import format_plan, make_plan, parse_bytes, run_plan

__all__ = ["format_plan", "make_plan", "parse_bytes", "run_plan"]
