#!/usr/bin/env bash
# Runs pytest from the project venv. pytest's exit code 5 ("no tests ran") is a
# failure here: a suite that selects nothing must not pass as green.
set -u
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
exit "$rc"
