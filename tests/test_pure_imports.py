"""The pure layers stay pure: ops/losses never pull in transformers, ranking never torch.

Each check runs in a fresh interpreter, since this test process may already have
imported anything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(imports: list[str], forbidden: str) -> bool:
    code = "\n".join(
        [
            *(f"import {name}" for name in imports),
            "import sys",
            f"print({forbidden!r} in sys.modules)",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "True"


def test_ops_and_losses_do_not_import_transformers() -> None:
    modules = [
        "rlhfkit.ops.masking",
        "rlhfkit.ops.logprobs",
        "rlhfkit.ops.kl",
        "rlhfkit.ops.advantages",
        "rlhfkit.losses",
    ]
    assert not _loaded_after(modules, "transformers")


@pytest.mark.parametrize("module", ["rlhfkit.data.ranking"])
def test_ranking_does_not_import_torch(module: str) -> None:
    assert not _loaded_after([module], "torch")
