#!/usr/bin/env bash
# The documentation: set up everything on a fresh machine, then build the HTML into docs/_build/html (git-ignored).
# Warnings are errors (-W, all reported thanks to --keep-going) and every cross-reference must resolve (-n).
# Extra arguments go to sphinx-build (e.g. -E for a clean rebuild, -j 2 for parallel reading).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
exec sphinx-build -W --keep-going -n -b html docs docs/_build/html "$@"
