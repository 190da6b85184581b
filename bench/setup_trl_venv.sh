#!/usr/bin/env bash
# Create bench/.venv-trl: TRL + rlhfkit importable in one process, without touching the
# project venv's pins. torch goes in first from the CPU wheel so that pip never resolves
# a CUDA build for TRL's dependency on torch; transformers is pinned to the project's.
#
#   bash bench/setup_trl_venv.sh            # create (or update) bench/.venv-trl
#   PYTHON=python3.11 bash bench/setup_trl_venv.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash bench/setup_trl_venv.sh
#       (elsewhere: where no local +cpu wheel is on pip's find-links, plain PyPI would
#        give Linux a CUDA build; the check at the end refuses one)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv-trl"
PY="${PYTHON:-python3}"

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.23.0}"
TRL_VERSION="${TRL_VERSION:-1.16.0}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# 1. torch first, CPU build only (here a local +cpu wheel via pip's find-links).
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
else
    "${PIP[@]}" "torch==$TORCH_VERSION"
fi
# 2. TRL with transformers held at the project's version (torch is already satisfied).
"${PIP[@]}" "trl==$TRL_VERSION" "transformers==$TRANSFORMERS_VERSION" "torch==$TORCH_VERSION"
# 3. rlhfkit itself, editable, from this checkout.
"${PIP[@]}" -e "$ROOT"

"$VENV/bin/python" - <<'PY'
import torch, transformers, trl, rlhfkit  # noqa: F401
assert torch.version.cuda is None, f"expected a CPU torch, got CUDA {torch.version.cuda}"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
PY
