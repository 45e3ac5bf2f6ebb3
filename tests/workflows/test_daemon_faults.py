"""Faults a daemon user meets: the daemon stopped in the middle of a round, a label job killed with ``verdi``, a
process whose broker task was lost.

Each test runs in a fresh profile of its own ``AIIDA_PATH`` under ``tmp_path`` (the embedded SQLite + ZeroMQ one),
driven through ``verdi``, ``alkit`` and subprocesses (helpers in ``tests/scaleout/conftest.py``).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest

from ..scaleout.conftest import (
    BIN,
    PYTHON_CODE,
    SQLITE_ZEROMQ,
    active_process_count,
    add_gated_code,
    campaign_builder,
    campaign_facts,
    campaign_overrides,
    daemon_profile,
    process_report,
    process_states,
    submit_campaign,
    wait_for_job,
    wait_until_terminated,
)

N_INITIAL = 6
ROUNDS = 2
PICKS = 2
TIMEOUT_S = 420
RESTART_TIMEOUT_S = 900  # two campaigns after the restart, next to the in-process tests on 2 busy cores
STUCK_AFTER_S = 90  # a work chain or job still Created this long with the daemon running has lost its task


def report_messages(report: str) -> list[str]:
    """The messages of ``verdi process report`` without timestamps and pks, in order."""
    messages = []
    for line in report.splitlines():
        match = re.search(r'\[\d+\|(\w+)\|(\w+)\]: (.*)$', line)
        if match:
            messages.append(f'{match.group(1)}|{match.group(2)}: ' + re.sub(r'<\d+>', '<pk>', match.group(3)))
    return messages


def status_rows(status: str) -> dict[int, list[str]]:
    """The per-round rows of ``alkit campaign status`` (cells split on white space; no cell holds a space)."""
    rows = {}
    for line in status.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit() and len(cells) >= 8:
            rows[int(cells[0])] = cells
    return rows


def kill(env, pk: int):
    """``verdi process kill PK``, waiting at most 10 s for the answer; the tests check the process state after.

    With the ZeroMQ broker the answer to killing a process that has a running job often never comes: the kill goes
    through (the job is killed with the scheduler, the process ends 'killed'), but the answer times out after the
    profile's ``broker.task_timeout`` (60 s), which the tests used to wait for (the label work chain test took 126 s
    with a 120-s wait, 74 s with this one, measured alone)."""
    killed = env.verdi('process', 'kill', pk, '--timeout', 10, timeout=240)
    output = killed.stdout + killed.stderr
    assert killed.returncode == 0 or 'timed out' in output, output
    return killed


def start_gated_campaign(env, gate, overrides: dict) -> dict[str, Any]:
    """A campaign whose label code waits while ``gate`` exists; returns once its round-1 label job is waiting so."""
    gate.touch()
    caught = env.call(
        start_and_catch,
        overrides,
        ['AseLabelCalculation'],
        'label_round_1',
        TIMEOUT_S,
        str(gate),
        timeout=TIMEOUT_S + 120,
    )
    assert caught['job'] is not None, 'the label job of round 1 was not seen running'
    return caught


# ------------------------------------------------------------------------------ functions run in the profile
def start_and_catch(overrides: dict, labels: list[str], call_link: str, timeout: float, gate: str | None = None):
    """*(in the profile)* Submit a campaign; return as soon as one of its jobs (``labels``, called by the step
    ``call_link``) is running with the scheduler. With ``gate``, labels run with a code that waits for that file."""
    label_code = add_gated_code('alkit-python-gated', gate) if gate else PYTHON_CODE
    submitted = submit_campaign(overrides, label_code=label_code, n_initial=N_INITIAL)
    job = wait_for_job(submitted['campaign'], labels, call_link, timeout)
    return {**submitted, 'job': job, 'states': process_states([submitted['campaign']])}


def submit_without_task(overrides: dict) -> dict[str, Any]:
    """*(in the profile)* What a lost task leaves behind: a campaign stored and checkpointed as AiiDA's ``submit``
    does, whose task never reaches the broker (``submit`` without its last call, the runner controller's
    ``continue_process``). A fault injected by hand: the broker's own loss is a race that cannot be triggered on
    demand."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    builder, initial = campaign_builder(overrides, n_initial=N_INITIAL)
    runner = get_manager().get_runner()
    process = instantiate_process(runner, builder)
    runner.persister.save_checkpoint(process)
    process.close()
    return {'campaign': process.node.pk, 'dataset': initial.pk}


def wait_repairing(pks: list[int], timeout: float) -> dict[str, Any]:
    """*(in the profile)* :func:`wait_until_terminated`, but whenever a process of the campaigns ``pks`` is stuck
    (Created for ``STUCK_AFTER_S`` with the daemon running), recover it as a user would with ``alkit campaign
    repair``; ``repairs`` lists what each repair revived."""
    from aiida import orm

    from aiida_alkit.workflows.recovery import repair_lost_tasks, stuck_processes

    deadline = time.monotonic() + timeout
    repairs = []
    while True:
        waited = wait_until_terminated(pks, min(30.0, max(1.0, deadline - time.monotonic())))
        if not waited['pending'] or time.monotonic() > deadline:
            return {**waited, 'repairs': repairs}
        stuck = [p.pk for pk in pks for p in stuck_processes(orm.load_node(pk), after_s=STUCK_AFTER_S)]
        if stuck:
            report = repair_lost_tasks()
            assert not report.still_missing, report
            repairs.append({'stuck': stuck, 'revived': report.revived})


def resume_and_compare(campaign: int, dataset: int, overrides: dict, job: int, timeout: float) -> dict[str, Any]:
    """*(in the profile)* Submit the reference campaign (same inputs), wait for both (recovering lost tasks as
    ``alkit campaign repair`` does), return the facts of both."""
    from aiida import orm

    reference = submit_campaign(overrides, dataset=dataset)['campaign']
    waited = wait_repairing([campaign, reference], timeout)
    node = orm.load_node(job)
    caller = node.caller
    return {
        'reference': reference,
        'waited': waited,
        'interrupted_facts': campaign_facts(campaign),
        'reference_facts': campaign_facts(reference),
        'job': {
            'state': node.process_state.value,
            'exit_status': node.exit_status,
            'caller': caller.process_label,
            'caller_jobs': len([child for child in caller.called if isinstance(child, orm.CalcJobNode)]),
        },
    }


def finish(campaign: int, timeout: float) -> dict[str, Any]:
    """*(in the profile)* Wait for the campaign; its facts."""
    waited = wait_until_terminated([campaign], timeout)
    return {'waited': waited, 'facts': campaign_facts(campaign)}


# ------------------------------------------------------------------------------------------------- the tests
@pytest.mark.faults
@pytest.mark.daemon
def test_killed_label_job_is_a_failed_label(tmp_path):
    """``verdi process kill`` of the running label job of round 1: its picks become failed labels, kept in the graph
    with their reason, and the campaign goes on to round 2 and finishes.

    The ASE engine labels all picks of a round in ONE ``alkit.label.ase`` job, so killing it fails every label of the
    round: ``max_failed_fraction`` is 1.0 here (with the default 0.5 the campaign stops with exit status 404,
    ERROR_TOO_MANY_FAILED_LABELS). The label code waits while a gate file exists (a slow label engine), so the job is
    caught with the scheduler whatever the load of the machine.
    """
    started = time.monotonic()
    gate = tmp_path / 'label-gate'
    overrides = campaign_overrides(seed=7, max_rounds=ROUNDS, max_failed_fraction=1.0)
    with daemon_profile(tmp_path, SQLITE_ZEROMQ, workers=1) as env:
        try:
            caught = start_gated_campaign(env, gate, overrides)
            campaign, job = caught['campaign'], caught['job']
            kill(env, job['pk'])
        finally:
            gate.unlink(missing_ok=True)  # later label jobs run at once
        result = env.call(finish, campaign, TIMEOUT_S, timeout=TIMEOUT_S + 120)
        report = process_report(env, campaign)
        status = env.run(BIN / 'alkit', 'campaign', 'status', campaign)
        assert status.returncode == 0, status.stdout + status.stderr
        label_pk = result['facts']['labels'][0]['pk']
        label_report = process_report(env, label_pk)
        assert active_process_count(env) == 0
    print(f'kill test: killed {job}, {time.monotonic() - started:.0f} s')

    facts = result['facts']
    assert not result['waited']['pending'], result['waited']
    # the campaign went on and finished
    assert facts['state'] == 'finished' and facts['exit_status'] == 0, facts['exit_message']
    assert [row['round'] for row in facts['rounds']] == [1, 2]
    first, second = facts['rounds']
    assert (first['selected'], first['labelled'], first['failed_labels']) == (PICKS, 0, PICKS)
    assert (second['selected'], second['labelled'], second['failed_labels']) == (PICKS, PICKS, 0)
    assert [row['dataset_size'] for row in facts['rounds']] == [N_INITIAL, N_INITIAL + PICKS]

    # the killed job, and the label work chain of round 1 that recorded its picks as failed labels
    label_1, label_2 = facts['labels']
    assert label_1['call_link'] == 'label_round_1' and label_2['call_link'] == 'label_round_2'
    [killed_job] = label_1['jobs']
    assert killed_job[:4] == [job['pk'], 'AseLabelCalculation', 'killed', None], killed_job
    assert 'verdi process kill' in (killed_job[4] or ''), killed_job
    assert (label_1['state'], label_1['exit_status']) == ('finished', 410)  # ERROR_NO_LABELS: nothing labelled
    assert sorted(label_1['failures']) == sorted(label_1['inputs'])
    assert label_1['labelled'] == []
    assert (label_2['state'], label_2['exit_status']) == ('finished', 0)

    # failed labels are in the graph: round, pick, the structure and a reason naming the killed job
    records = facts['failed_labels']
    assert [(r['round'], r['pick']) for r in records] == [(1, pick) for pick in sorted(label_1['inputs'])]
    assert sorted(r['structure'] for r in records) == sorted(label_1['inputs'].values())
    assert all(f'AseLabelCalculation<{job["pk"]}>' in r['reason'] for r in records), records

    # no labelled data lost: the final set is the initial one plus round 2's labels; the failed picks are not in it
    dataset = facts['dataset']
    assert dataset['size'] == N_INITIAL + PICKS
    assert (
        sorted(o for o in dataset['origins'] if o) == sorted(label_2['labelled']) == sorted(label_2['inputs'].values())
    )
    assert not set(dataset['origins']) & set(label_1['inputs'].values())
    assert sorted(dataset['rounds']) == [0] * N_INITIAL + [2] * PICKS

    # what the user sees: the campaign's report, `alkit campaign status` and the label work chain's report
    assert f'round 1 done: explored {first["explored"]}, selected {PICKS}, labelled 0, failed {PICKS}' in report
    assert f'round 2 done: explored {second["explored"]}, selected {PICKS}, labelled {PICKS}, failed 0' in report
    assert f'campaign finished after {ROUNDS} rounds' in report
    rows = status_rows(status.stdout)
    assert (rows[1][6], rows[1][7]) == ('0', str(PICKS)), status.stdout  # labelled, failed labels
    assert (rows[2][6], rows[2][7]) == (str(PICKS), '0'), status.stdout
    assert f'<{job["pk"]}>' in label_report, label_report

    # the recorded reason says that the job was killed
    assert all('was killed' in r['reason'] for r in records), records


@pytest.mark.faults
@pytest.mark.daemon
def test_killed_label_workchain_is_a_failed_label(tmp_path):
    """``verdi process kill`` of the label *work chain* (``alkit.label``) of round 1 while its job runs: the picks
    should count as failed labels too (reason: killed), and the campaign go on.

    The killed work chain writes no ``failures`` record, so the campaign and ``failed_labels`` count every structure
    it was given as failed, with the reason that it was killed (before that fix the picks vanished silently).
    """
    started = time.monotonic()
    gate = tmp_path / 'label-gate'
    overrides = campaign_overrides(seed=9, max_rounds=1, max_failed_fraction=1.0)
    with daemon_profile(tmp_path, SQLITE_ZEROMQ, workers=1) as env:
        try:
            caught = start_gated_campaign(env, gate, overrides)
            campaign, job = caught['campaign'], caught['job']
            killed = kill(env, job['caller'])
        finally:
            gate.unlink(missing_ok=True)
        result = env.call(finish, campaign, TIMEOUT_S, timeout=TIMEOUT_S + 120)
        report = process_report(env, campaign)
        assert active_process_count(env) == 0
    print(
        f'label work chain kill test: killed {job["caller"]} ({killed.stdout.strip()} {killed.stderr.strip()}), '
        f'{time.monotonic() - started:.0f} s'
    )

    facts = result['facts']
    assert not result['waited']['pending'], result['waited']
    [label] = facts['labels']
    assert (label['pk'], label['state'], label['failures'], label['labelled']) == (job['caller'], 'killed', None, [])
    [child] = label['jobs']
    assert child[:3] == [job['pk'], 'AseLabelCalculation', 'killed'] and f'<{label["pk"]}>' in child[4], child
    assert facts['state'] == 'finished' and facts['exit_status'] == 0, facts['exit_message']
    [row] = facts['rounds']
    assert (row['selected'], row['labelled']) == (PICKS, 0)
    assert facts['dataset']['size'] == N_INITIAL  # nothing added, nothing lost

    assert row['failed_labels'] == PICKS, row
    records = facts['failed_labels']
    assert sorted(r['structure'] for r in records) == sorted(label['inputs'].values())
    assert all('kill' in r['reason'].lower() for r in records), records
    assert f'labelled 0, failed {PICKS}' in report


@pytest.mark.faults
@pytest.mark.daemon
def test_daemon_stopped_mid_round_and_started_again(tmp_path):
    """The daemon stops while a round's exploration job runs; after ``verdi daemon start`` the campaign finishes as
    an uninterrupted one with the same inputs and seed: same rounds, same picks, same final training set.

    On the embedded profile (SQLite + ZeroMQ), where in two of three earlier CI runs the label work chain the
    campaign submitted right after the restart stayed 'Created' (its task lost by the broker): a process stuck so is
    recovered as ``alkit campaign repair`` does (daemon stop, the lost tasks recreated, daemon start), and the
    campaign must still end as the uninterrupted one; the repairs made are printed."""
    started = time.monotonic()
    overrides = campaign_overrides(seed=5, max_rounds=ROUNDS)
    with daemon_profile(tmp_path, SQLITE_ZEROMQ, workers=1) as env:
        caught = env.call(
            start_and_catch, overrides, ['ExploreCalculation'], r'explore_round_\d+', TIMEOUT_S, timeout=TIMEOUT_S + 120
        )
        campaign, job = caught['campaign'], caught['job']
        assert job is not None, 'no exploration job seen running'
        stopped = env.stop_daemon()
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        while_stopped = env.call(process_states, [campaign, job['pk']])
        time.sleep(3)
        env.start_daemon(1)
        result = env.call(
            resume_and_compare,
            campaign,
            caught['dataset'],
            overrides,
            job['pk'],
            RESTART_TIMEOUT_S,
            timeout=RESTART_TIMEOUT_S + 120,
        )
        interrupted_report = process_report(env, campaign)
        reference_report = process_report(env, result['reference'])
        # A calcfunction that the stop interrupted keeps its node in 'Created' (AiiDA does not resume calcfunctions:
        # the work chain's step runs it again on restart); anything else still active is a process left behind.
        listing = env.verdi('process', 'list').stdout
        rows = [line for line in listing.splitlines() if re.match(r'\s*\d+\s', line)]
        left = [row for row in rows if 'Created' not in row or 'WorkChain' in row or 'Calculation' in row]
        assert not left, f'processes still active after the restart: {result["waited"]}\n{listing}'
    print(
        f'daemon restart test: stopped during {job}, states then {while_stopped}, repairs {result["waited"]["repairs"]}, '
        f'{time.monotonic() - started:.0f} s'
    )

    # the daemon was stopped while the campaign (and, unless it just ended, its job) was still active
    assert while_stopped[str(campaign)][0] not in ('finished', 'excepted', 'killed')
    assert not result['waited']['pending'], result['waited']
    interrupted, reference = result['interrupted_facts'], result['reference_facts']
    assert interrupted['state'] == 'finished' and interrupted['exit_status'] == 0, interrupted['exit_message']
    assert reference['state'] == 'finished' and reference['exit_status'] == 0, reference['exit_message']
    # the interrupted job was picked up again, not run a second time
    assert result['job'] == {
        'state': 'finished',
        'exit_status': 0,
        'caller': 'ExploreWorkChain',
        'caller_jobs': 1,
    }
    assert interrupted['descendants'] == reference['descendants']
    assert all(key.endswith('finished 0') for key in interrupted['descendants']), interrupted['descendants']

    # same structure of outputs as the uninterrupted campaign
    assert [row['round'] for row in interrupted['rounds']] == [row['round'] for row in reference['rounds']]
    assert len(interrupted['rounds']) == ROUNDS
    for key in ('explored', 'selected', 'labelled', 'failed_labels', 'dataset_size', 'temperature_K'):
        assert [row[key] for row in interrupted['rounds']] == [row[key] for row in reference['rounds']], key
    # seeded training and MD on one CPU thread: the same pool indices are selected in every round ...
    assert [s['indices'] for s in interrupted['selections']] == [s['indices'] for s in reference['selections']]
    assert [s['pool_size'] for s in interrupted['selections']] == [s['pool_size'] for s in reference['selections']]
    # ... and the final training sets are the same configurations with the same labels
    assert interrupted['dataset']['size'] == reference['dataset']['size'] == N_INITIAL + PICKS * ROUNDS
    assert interrupted['dataset']['rounds'] == reference['dataset']['rounds']
    assert interrupted['dataset']['splits'] == reference['dataset']['splits']
    np.testing.assert_allclose(interrupted['dataset']['energy'], reference['dataset']['energy'], rtol=0, atol=1e-10)
    # no labelled data lost: every label of the interrupted campaign is in its final set
    labelled = [uuid for label in interrupted['labels'] for uuid in label['labelled']]
    assert len(labelled) == PICKS * ROUNDS
    assert sorted(o for o in interrupted['dataset']['origins'] if o) == sorted(labelled)
    # what the user reads: the same report, message for message (pks aside)
    assert report_messages(interrupted_report) == report_messages(reference_report)
    assert f'campaign finished after {ROUNDS} rounds: maximum of {ROUNDS} rounds reached' in interrupted_report


@pytest.mark.faults
@pytest.mark.daemon
def test_a_lost_task_is_flagged_and_repaired_without_losing_work(tmp_path):
    """A campaign whose broker task was lost (injected: see :func:`submit_without_task`) waits for ever with the
    daemon running; ``alkit campaign status`` flags it, ``alkit campaign repair`` recreates its task and the campaign
    runs to its end."""
    overrides = campaign_overrides(seed=7, max_rounds=1)
    with daemon_profile(tmp_path, SQLITE_ZEROMQ, workers=1) as env:
        campaign = env.call(submit_without_task, overrides)['campaign']
        time.sleep(5)
        assert env.call(process_states, [campaign])[str(campaign)][0] == 'created'  # no worker took it

        status = env.run(BIN / 'alkit', 'campaign', 'status', campaign, '--stuck-after', 0)
        assert status.returncode == 0, status.stdout + status.stderr
        stuck = [line for line in status.stdout.splitlines() if line.startswith('stuck')]
        assert len(stuck) == 1 and f'ActiveLearningWorkChain<{campaign}>' in stuck[0], status.stdout
        assert f'alkit campaign repair {campaign}' in status.stdout
        # with the default threshold (10 min) a process created seconds ago is not flagged
        assert 'stuck' not in env.run(BIN / 'alkit', 'campaign', 'status', campaign).stdout

        repaired = env.run(BIN / 'alkit', 'campaign', 'repair', campaign, timeout=600)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert 'daemon stopped and started again (1 worker)' in repaired.stdout, repaired.stdout
        assert f'revived 1 process(es) without a task, 1 of this campaign: [{campaign}]' in repaired.stdout

        result = env.call(finish, campaign, TIMEOUT_S, timeout=TIMEOUT_S + 120)
        again = env.run(BIN / 'alkit', 'campaign', 'repair', campaign)
    facts = result['facts']
    assert facts['state'] == 'finished' and facts['exit_status'] == 0, facts['exit_message']
    assert facts['dataset']['size'] == N_INITIAL + PICKS
    assert f'ActiveLearningWorkChain<{campaign}> is Finished [0]: nothing to repair' in again.stdout, again.stdout
