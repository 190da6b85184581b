"""sampling/settings.py: what every engine shares: sampling settings and engine settings read
by name from a stage's own options (what a stage lacks keeps its default)."""

from __future__ import annotations

from types import SimpleNamespace

from rlhfkit.config import PPOConfig, RSConfig
from rlhfkit.sampling.settings import EngineSettings, GenerationSettings


def test_generation_settings_are_read_by_name_from_a_stages_options():
    cfg = RSConfig(max_new_tokens=7, top_k=5, top_p=0.9)
    s = GenerationSettings.of(cfg)
    assert (s.max_new_tokens, s.top_k, s.top_p) == (7, 5, 0.9)
    assert s.stop_at_eos and not s.bf16  # RSConfig has bf16=False; stop_at_eos: the default
    partial = GenerationSettings.of(SimpleNamespace(temperature=0.0))
    assert partial == GenerationSettings(temperature=0.0)


def test_engine_settings_from_a_name_a_config_or_themselves():
    assert EngineSettings.of("vllm") == EngineSettings(generator="vllm")
    cfg = PPOConfig(generator="vllm", vllm_gpu_memory_utilization=0.7, vllm_tensor_parallel_size=2)
    e = EngineSettings.of(cfg)
    assert (e.generator, e.vllm_gpu_memory_utilization, e.vllm_tensor_parallel_size) == (
        "vllm",
        0.7,
        2,
    )
    assert EngineSettings.of(e) is e
