#!/usr/bin/env bash
# The test suite: set up everything on a fresh machine, lint, then run pytest (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
ruff check .
ruff format --check .
exec python -m pytest "$@"
