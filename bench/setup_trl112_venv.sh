#!/usr/bin/env bash
# Create bench/.venv-trl112: TRL 1.12.0 (the last release with PPOTrainer, under
# trl.experimental.ppo) for bench/ppo_vs_trl.py, in its own venv so it never touches the
# project's pins or bench/.venv-trl (TRL 1.16, SFT bench). torch goes in first from the
# CPU wheel, so pip never resolves a CUDA build for TRL's dependency on torch.
# trl 1.12.0 requires transformers>=4.56.2, so the project's transformers 5.23.0 is used
# and rlhfkit is installed editable: both sides of the benchmark can run in this venv
# (ppo_vs_trl.py still runs each side in its own process).
#
#   bash bench/setup_trl112_venv.sh         # create (or update) bench/.venv-trl112
#   PYTHON=python3.11 bash bench/setup_trl112_venv.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash bench/setup_trl112_venv.sh
#       (elsewhere: where no local +cpu wheel is on pip's find-links; the check at the
#        end refuses a CUDA build)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv-trl112"
PY="${PYTHON:-python3}"

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.23.0}"
TRL_VERSION="${TRL_VERSION:-1.12.0}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# 1. torch first, CPU build only (here a local +cpu wheel via pip's find-links).
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
else
    "${PIP[@]}" "torch==$TORCH_VERSION"
fi
# 2. TRL 1.12 with transformers held at the project's version (torch already satisfied).
"${PIP[@]}" "trl==$TRL_VERSION" "transformers==$TRANSFORMERS_VERSION" "torch==$TORCH_VERSION"
# 3. rlhfkit itself, editable, from this checkout.
"${PIP[@]}" -e "$ROOT"

TRL_EXPERIMENTAL_SILENCE=1 "$VENV/bin/python" - <<'PY'
import torch, transformers, trl, rlhfkit  # noqa: F401
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401
assert torch.version.cuda is None, f"expected a CPU torch, got CUDA {torch.version.cuda}"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
PY
