#!/usr/bin/env bash
# The code checks, as CI (.ci/run) and pre-commit (.pre-commit-config.yaml) run them; the rules,
# the formatter's settings and mypy's scope are in pyproject.toml, the tool versions in its dev extra.
#   bash deploy/lint.sh          ruff check, ruff format --check, mypy: non-zero if any fails
#   bash deploy/lint.sh --fix    first apply ruff's safe fixes and the formatter
# Every check runs even after one fails, so that one run shows everything.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
if [[ "${1:-}" == "--fix" ]]; then
  "$BIN/ruff" check --fix --quiet . || true
  "$BIN/ruff" format --quiet .
fi
failed=()
step() {
  printf '\033[1m[lint]\033[0m %s\n' "$*"
  "$@" || failed+=("$(basename "$1")${2:+ $2}")
}
step "$BIN/ruff" check --output-format concise .
step "$BIN/ruff" format --check --output-format concise .   # `ruff format --diff .` shows the changes
step "$BIN/mypy"
if (( ${#failed[@]} )); then
  printf '\033[1m[lint]\033[0m failed: %s\n' "${failed[*]}"
  exit 1
fi
