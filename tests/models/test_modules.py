"""models/modules.py: the Hugging Face module under a wrapper, eval mode for a block (each
submodule's own mode restored), and the bias a head reads, found by a probe."""

import torch
from tests.helpers import gpt2_lm

from rlhfkit.models.modules import bias_feeding, eval_mode
from rlhfkit.models.presets import build_model
from rlhfkit.models.wrap import unwrap


def test_unwrap_model_compiled(tiny_model):
    class Wrapper(torch.nn.Module):  # what torch.compile's OptimizedModule looks like
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert unwrap(Wrapper(tiny_model)) is tiny_model
    assert unwrap(tiny_model) is tiny_model


def test_eval_mode_restores_each_submodules_own_mode(tiny_model):
    tiny_model.train()
    frozen = tiny_model.model.layers[0]
    frozen.eval()  # a part kept in eval mode by its owner
    with eval_mode(tiny_model):
        assert not any(m.training for m in tiny_model.modules())
    assert tiny_model.training and not frozen.training
    assert all(m.training for m in tiny_model.model.layers[1].modules())


def test_the_bias_a_head_reads_is_found_by_a_probe(tiny_tokenizer):
    """GPT-2's final LayerNorm has a bias and feeds the LM head; Llama's RMSNorm has none."""
    gpt2 = gpt2_lm(tiny_tokenizer)
    name, bias = bias_feeding(gpt2, gpt2.lm_head)
    assert name == "transformer.ln_f" and bias is gpt2.transformer.ln_f.bias
    assert gpt2.training  # the probe left the model's mode as it was
    llama = build_model("test", tiny_tokenizer, seed=0)
    assert bias_feeding(llama, llama.lm_head) is None
