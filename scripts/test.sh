#!/usr/bin/env bash
# The test suite: set up everything on a fresh machine, lint, build the documentation (warnings are errors), then
# run pytest (extra arguments go to pytest).
#
# Without test selection (no paths, -m or -k), the tests run in four pytest processes at once, so that the 2 cores
# stay busy: the tests that run their own AiiDA daemon (marker `daemon`: the scale-out suites, daemon faults,
# submit to the daemon), those whose jobs go through SLURM (marker `slurm`; the fixture starts the local SLURM of
# scripts/slurm.sh), the in-process campaigns (marker `campaign`, except the benchmark smoke tests) and all the
# others. An in-process run is a serial chain (the test waits on its jobs, the jobs on the test's AiiDA engine) that
# keeps about one core busy, and the daemon and SLURM tests mostly wait on their workers and the scheduler; the
# campaigns and the others take about as long each (~500 s alone on this machine). Their output follows the main
# run's.
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
python -m pytest "$@" -m slurm --durations=5 --basetemp "$scratch/basetemp-slurm" >"$scratch/slurm.log" 2>&1 &
slurm_pid=$!
campaign_tests='campaign and not benchmark and not daemon and not slurm'
python -m pytest "$@" -m "$campaign_tests" --durations=20 --basetemp "$scratch/basetemp-campaign" \
    >"$scratch/campaign.log" 2>&1 &
campaign_pid=$!
main_status=0
python -m pytest "$@" -m "not ($campaign_tests) and not daemon and not slurm" --durations=30 || main_status=$?
campaign_status=0
wait "$campaign_pid" || campaign_status=$?
daemon_status=0
wait "$daemon_pid" || daemon_status=$?
slurm_status=0
wait "$slurm_pid" || slurm_status=$?
echo "--- in-process campaigns (pytest -m '$campaign_tests'), run alongside the above ---"
cat "$scratch/campaign.log"
echo "--- tests with their own AiiDA daemon (pytest -m daemon), run alongside the above ---"
cat "$scratch/daemon.log"
echo "--- tests whose jobs go through SLURM (pytest -m slurm), run alongside the above ---"
cat "$scratch/slurm.log"
if [ "$main_status" != 0 ]; then exit "$main_status"; fi
if [ "$campaign_status" != 0 ]; then exit "$campaign_status"; fi
if [ "$daemon_status" != 0 ]; then exit "$daemon_status"; fi
exit "$slurm_status"
