"""Scale-out throughput (issue "Run on a real batch scheduler...", item 4): ``--campaigns`` campaigns and
``--label-jobs`` independent label jobs at once through a ``--workers``-worker daemon on PostgreSQL + RabbitMQ, the
label jobs submitted with at most ``--max-concurrent`` of them active at a time (a simple submission controller:
a new one is submitted when one terminates, as a user feeding a cluster queue does).

The profile is a fresh one in a temporary ``AIIDA_PATH``, created by ``alkit setup --postgres --rabbitmq`` and dropped
afterwards (the helpers of ``tests/scaleout/conftest.py``); its daemon keeps AiiDA's ``daemon.worker_process_slots``
(200 per worker), more than the processes one worker holds here (the campaigns and their sub-processes plus at most
``--max-concurrent`` label jobs split over the workers). Campaigns: the tiny 2-round gradient campaign of the tests
(EMT labels). One JSON line: wall time (first submission until every process terminated), label jobs per minute,
the most label jobs active at once, node counts, and the lost nodes: processes not finished with status 0 and
processes still active.

    python benchmarks/bench_scaleout.py --campaigns 5 --label-jobs 200 --max-concurrent 20 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scaleout.conftest import (  # noqa: E402  (the repository root on the path first)
    PSQL_RABBITMQ,
    TERMINATED,
    active_process_count,
    all_processes,
    campaign_overrides,
    daemon_profile,
    node_counts,
    process_states,
    submit_campaign,
    submit_label_jobs,
)


def run_limited_load(overrides: list[dict], label_jobs: int, limit: int, timeout: float) -> dict[str, Any]:
    """*(in the profile)* Submit the campaigns, then the label jobs with at most ``limit`` active; wait for all."""
    start = time.monotonic()
    campaigns = [submit_campaign(item)['campaign'] for item in overrides]
    jobs: list[int] = []
    most_active = 0
    while True:
        states = process_states(campaigns + jobs)
        active_jobs = [pk for pk in jobs if states[str(pk)][0] not in TERMINATED]
        most_active = max(most_active, len(active_jobs))
        room = min(limit - len(active_jobs), label_jobs - len(jobs))
        if room > 0:
            jobs += submit_label_jobs(room, first_seed=1000 + len(jobs))
            continue
        pending = [pk for pk, (state, _) in states.items() if state not in TERMINATED]
        if (len(jobs) == label_jobs and not pending) or time.monotonic() - start > timeout:
            break
        time.sleep(1.0)
    return {
        'campaigns': campaigns,
        'jobs': jobs,
        'most_active_label_jobs': most_active,
        'pending': pending,
        'wall_s': time.monotonic() - start,
        'processes': all_processes(),
        'counts': node_counts(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--campaigns', type=int, default=5)
    parser.add_argument('--label-jobs', type=int, default=200)
    parser.add_argument('--max-concurrent', type=int, default=20, help='label jobs active at once, at most')
    parser.add_argument('--workers', type=int, default=2, help='daemon workers')
    parser.add_argument('--timeout', type=float, default=3600.0, help='seconds to wait for the load')
    args = parser.parse_args()

    from importlib import import_module

    load = import_module('benchmarks.bench_scaleout').run_limited_load  # importable by the profile's subprocess
    overrides = [campaign_overrides(seed=100 + index, max_rounds=2) for index in range(args.campaigns)]
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as folder,
        daemon_profile(pathlib.Path(folder), PSQL_RABBITMQ, args.workers) as env,
    ):
        ready = time.monotonic()
        result = env.call(
            load, overrides, args.label_jobs, args.max_concurrent, args.timeout, timeout=args.timeout + 600
        )
        still_active = active_process_count(env)
        slots = env.verdi('config', 'get', 'daemon.worker_process_slots').stdout.strip()
    not_ok = result['processes']['not_ok']
    line = {
        'benchmark': 'scaleout',
        'backend': PSQL_RABBITMQ,
        'campaigns': args.campaigns,
        'label_jobs': len(result['jobs']),
        'max_concurrent_label_jobs': args.max_concurrent,
        'most_active_label_jobs': result['most_active_label_jobs'],
        'workers': args.workers,
        'worker_process_slots': int(slots) if slots.isdigit() else slots,
        'setup_s': round(ready - started, 1),
        'wall_s': round(result['wall_s'], 1),
        'label_jobs_per_min': round(len(result['jobs']) / result['wall_s'] * 60, 1),
        'counts': result['counts'],
        'processes_by_state': result['processes']['counts'],
        'lost': {'not_finished_ok': not_ok, 'still_active': still_active, 'pending_at_timeout': result['pending']},
        'cpus': os.cpu_count(),
        'loadavg_1min': round(os.getloadavg()[0], 2),
        'command': 'python ' + ' '.join(sys.argv),
    }
    print(json.dumps(line))


if __name__ == '__main__':
    main()
