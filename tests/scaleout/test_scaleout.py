"""Scale-out load: three campaigns and fifty label jobs at once through a two-worker daemon on PostgreSQL + RabbitMQ.

The embedded back-end (SQLite + ZeroMQ) runs the daemon tests of ``tests/workflows/`` (one worker); the same load on
it with two workers took four more minutes of the suite's twenty, so it is not part of the suite now (to run it,
parametrize ``backend`` with ``conftest.BACKENDS``, which holds both back-ends).

``pytest -m scaleout -s`` prints one JSON line with the load and the wall time (also written to
``scaleout-load.json`` in the test's ``tmp_path``). Each run uses its own ``AIIDA_PATH`` and profile; the PostgreSQL
database/role and the RabbitMQ queue of the scale-out profile are removed afterwards (see ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import pytest

from .conftest import (
    PSQL_RABBITMQ,
    active_process_count,
    all_processes,
    campaign_facts,
    campaign_overrides,
    daemon_profile,
    label_job_facts,
    node_counts,
    postgres_database_exists,
    process_report,
    submit_campaign,
    submit_label_jobs,
    wait_until_terminated,
)

SEEDS = (11, 12, 13)  # one campaign per seed
ROUNDS = 2
PICKS = 2  # batch_size of campaign_overrides: labels per round
N_INITIAL = 6
LABEL_JOBS = 50
WORKERS = 2
TIMEOUT_S = 900  # generous: the machine is shared; a run takes a few minutes


def run_load(overrides: list[dict], label_jobs: int, timeout: float) -> dict[str, Any]:
    """*(in the profile)* Submit the campaigns and the label jobs in one go and wait until all have terminated."""
    start = time.monotonic()
    campaigns = [submit_campaign(item, n_initial=N_INITIAL)['campaign'] for item in overrides]
    jobs = submit_label_jobs(label_jobs)
    submitted = time.monotonic()
    waited = wait_until_terminated(campaigns + jobs, timeout)
    return {
        'campaigns': campaigns,
        'jobs': jobs,
        'submit_s': submitted - start,
        'wall_s': time.monotonic() - start,
        **waited,
    }


def inspect_load(campaigns: list[int], jobs: list[int]) -> dict[str, Any]:
    """*(in the profile)* Everything the test checks, in one process."""
    return {
        'processes': all_processes(),
        'counts': node_counts(),
        'jobs': label_job_facts(jobs),
        'campaigns': [campaign_facts(pk) for pk in campaigns],
    }


@pytest.mark.scaleout
@pytest.mark.daemon
@pytest.mark.parametrize('backend', [PSQL_RABBITMQ])
def test_three_campaigns_and_fifty_label_jobs(tmp_path, backend):
    started = time.monotonic()
    overrides = [campaign_overrides(seed=seed, max_rounds=ROUNDS) for seed in SEEDS]
    with daemon_profile(tmp_path, backend, workers=WORKERS) as env:
        ready = time.monotonic()
        result = env.call(run_load, overrides, LABEL_JOBS, TIMEOUT_S, timeout=TIMEOUT_S + 300)
        campaigns, jobs = result['campaigns'], result['jobs']
        load = {
            'test': 'scaleout',
            'backend': backend,
            'campaigns': len(campaigns),
            'rounds': ROUNDS,
            'label_jobs': len(jobs),
            'workers': WORKERS,
            'setup_s': round(ready - started, 1),
            'submit_s': round(result['submit_s'], 1),
            'wall_s': round(result['wall_s'], 1),  # first submission until every process has terminated
            'cpus': os.cpu_count(),
            'loadavg_1min': round(os.getloadavg()[0], 2),
        }
        print(json.dumps(load))
        (tmp_path / 'scaleout-load.json').write_text(json.dumps(load) + '\n')

        assert not result['pending'], f'not terminated after {TIMEOUT_S} s: {result["states"]}'
        facts = env.call(inspect_load, campaigns, jobs)
        # every process of the profile (campaigns, sub-workflows, calcfunctions, CalcJobs) finished with status 0
        processes = facts['processes']
        assert processes['not_ok'] == [], processes
        assert active_process_count(env) == 0  # `verdi process list`: nothing left running, waiting or created

        # node counts: per campaign and round one train, one explore and one label job; every label job one output
        jobs_per_campaign = ROUNDS  # of each kind
        counts = facts['counts']
        assert counts == {
            'TrainCalculation': len(SEEDS) * jobs_per_campaign,
            'ExploreCalculation': len(SEEDS) * jobs_per_campaign,
            'AseLabelCalculation': len(SEEDS) * jobs_per_campaign + LABEL_JOBS,
            'LabelWorkChain': len(SEEDS) * ROUNDS,
            'ActiveLearningWorkChain': len(SEEDS),
            'PotentialData': len(SEEDS) * ROUNDS,
            # per campaign: initial set, merged set of rounds 0..ROUNDS, one pool, one packed and one labelled set a
            # round; per label job: its input and its output
            'DatasetData': len(SEEDS) * (1 + (ROUNDS + 1) + 3 * ROUNDS) + 2 * LABEL_JOBS,
            'merged datasets': len(SEEDS) * (ROUNDS + 1),
            'labelled (LabelWorkChain)': len(SEEDS) * ROUNDS,
            'labelled (AseLabelCalculation)': len(SEEDS) * ROUNDS + LABEL_JOBS,
        }, counts

        # the fifty label jobs: each output was created by its own job and holds its input's atoms, labelled
        for fact in facts['jobs']:
            assert fact['state'] == 'finished' and fact['exit_status'] == 0, fact
            assert fact['n_labelled'] == fact['n_input'] == 1, fact
            assert fact['creator'] == fact['pk'], fact
            assert fact['same_atoms_as_input'] and fact['finite'], fact
            assert set(fact['labels']) == {'energy', 'forces', 'stress'}, fact
            assert fact['failures']['failures'] == [], fact

        # the campaigns: report, links and no labelled configuration lost
        for campaign in facts['campaigns']:
            check_campaign(campaign)
        report = process_report(env, campaigns[0])
        assert f'campaign finished after {ROUNDS} rounds' in report, report
    if backend == PSQL_RABBITMQ:
        assert not postgres_database_exists(f'aiida-{env.name}'), 'the database/role of the profile was not dropped'


def check_campaign(facts: dict[str, Any]) -> None:
    """What a user checks of a finished campaign (see ``campaign_facts``)."""
    assert facts['state'] == 'finished' and facts['exit_status'] == 0, facts['exit_message']
    rounds = facts['rounds']
    assert [row['round'] for row in rounds] == list(range(1, ROUNDS + 1))
    assert all(row['selected'] == PICKS and row['labelled'] == PICKS and row['failed_labels'] == 0 for row in rounds)
    assert [row['dataset_size'] for row in rounds] == [N_INITIAL + PICKS * k for k in range(1, ROUNDS + 1)]
    assert facts['stop_reason'] == f'maximum of {ROUNDS} rounds reached'
    # selection: PICKS pool indices a round, the picks carry them (rank order)
    assert len(facts['selections']) == ROUNDS
    for selection in facts['selections']:
        assert len(selection['indices']) == PICKS
        assert [index for _, index, _ in selection['picks']] == selection['indices']
    # each label job of the campaign labelled exactly the structures given to it
    assert [label['call_link'] for label in facts['labels']] == [f'label_round_{k}' for k in range(1, ROUNDS + 1)]
    for label in facts['labels']:
        assert label['state'] == 'finished' and label['exit_status'] == 0
        assert sorted(label['labelled']) == sorted(label['inputs'].values())
        assert label['failures'] == {}
    assert facts['failed_labels'] == []
    # no labelled configuration lost: the final set is the initial one plus every label, each once
    dataset = facts['dataset']
    labelled = [uuid for label in facts['labels'] for uuid in label['labelled']]
    assert dataset['size'] == facts['initial_size'] + len(labelled) == N_INITIAL + PICKS * ROUNDS
    assert Counter(dataset['rounds']) == {0: N_INITIAL, **{k: PICKS for k in range(1, ROUNDS + 1)}}
    assert sorted(origin for origin in dataset['origins'] if origin) == sorted(labelled)
    # the final potential was trained (last round) on the set holding the labels of the rounds before it
    potential = facts['potential']
    earlier = [uuid for label in facts['labels'][:-1] for uuid in label['labelled']]
    assert potential['trained_on_size'] == N_INITIAL + PICKS * (ROUNDS - 1)
    assert sorted(potential['labels_of_potential']) == sorted(earlier)
    assert set(potential['trained_on_rounds']) == set(range(ROUNDS))
