#!/usr/bin/env bash
# The main job: set up everything on a fresh machine, then run the demo on the embedded AiiDA profile.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
alkit setup
alkit demo "$@"
