#!/usr/bin/env bash
# The test suite: set up everything on a fresh machine, lint, build the documentation (warnings are errors), then
# run pytest (extra arguments go to pytest).
#
# Without test selection (no paths, -m or -k), the tests that run their own AiiDA daemon (marker `daemon`: the
# scale-out suites, daemon faults, submit to the daemon) run in a second pytest process, and those whose jobs go
# through SLURM (marker `slurm`; the fixture starts the local SLURM of scripts/slurm.sh) together with the smoke tests
# of the benchmark scripts (marker `benchmark`, campaigns in subprocesses) in a third, alongside the in-process tests:
# those keep one core busy while the others mostly wait on their daemon workers, the scheduler and the job polling,
# so the suite takes about half as long on 2 cores. Their output follows the main run's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
ruff check .
ruff format --check .
bash "$ROOT/scripts/docs.sh" -q

split=1
for arg in "$@"; do
    case "$arg" in
        -m | -m* | -k | -k* | tests* | *.py | *::* | */*) split=0 ;;
    esac
done
if [ "$split" = 0 ]; then
    exec python -m pytest "$@"
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python -m pytest "$@" -m daemon --durations=10 --basetemp "$scratch/basetemp" >"$scratch/daemon.log" 2>&1 &
daemon_pid=$!
python -m pytest "$@" -m "slurm or benchmark" --durations=8 --basetemp "$scratch/basetemp-side" >"$scratch/side.log" 2>&1 &
side_pid=$!
main_status=0
python -m pytest "$@" -m "not daemon and not slurm and not benchmark" --durations=50 || main_status=$?
daemon_status=0
wait "$daemon_pid" || daemon_status=$?
side_status=0
wait "$side_pid" || side_status=$?
echo "--- tests with their own AiiDA daemon (pytest -m daemon), run alongside the above ---"
cat "$scratch/daemon.log"
echo "--- tests whose jobs go through SLURM and the benchmark smoke tests (pytest -m 'slurm or benchmark'), run alongside the above ---"
cat "$scratch/side.log"
if [ "$main_status" != 0 ]; then exit "$main_status"; fi
if [ "$daemon_status" != 0 ]; then exit "$daemon_status"; fi
exit "$side_status"
