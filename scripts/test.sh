#!/usr/bin/env bash
# The test suite: set up everything on a fresh machine, lint, build the documentation (warnings are errors), then
# run pytest (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
ruff check .
ruff format --check .
bash "$ROOT/scripts/docs.sh" -q
exec python -m pytest "$@"
