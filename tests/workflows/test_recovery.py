"""Which processes of a campaign count as stuck (no daemon worker took them), on real stored process nodes.

The repair itself needs a daemon: ``tests/workflows/test_daemon_faults.py``."""

from __future__ import annotations

from datetime import timedelta

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.schedulers.datastructures import JobInfo, JobState

from aiida_alkit.workflows.recovery import PendingJob, StuckProcess, pending_jobs, stuck_processes


def _process(cls, label: str, state: ProcessState, caller=None):
    node = cls()
    node.set_process_label(label)
    node.set_process_state(state)
    if caller is not None:
        link = LinkType.CALL_WORK if isinstance(node, orm.WorkflowNode) else LinkType.CALL_CALC
        node.base.links.add_incoming(caller, link, f'call_{label}')
    return node.store()


def test_created_work_chains_and_jobs_past_the_threshold_are_stuck_calcfunctions_never(aiida_profile_clean):
    campaign = _process(orm.WorkChainNode, 'ActiveLearningWorkChain', ProcessState.WAITING)
    label = _process(orm.WorkChainNode, 'LabelWorkChain', ProcessState.CREATED, campaign)
    job = _process(orm.CalcJobNode, 'AseLabelCalculation', ProcessState.CREATED, label)
    _process(orm.CalcJobNode, 'TrainCalculation', ProcessState.WAITING, campaign)  # running: a worker has it
    _process(orm.CalcFunctionNode, 'select_candidates', ProcessState.CREATED, campaign)  # interrupted calcfunction
    _process(orm.WorkChainNode, 'ExploreWorkChain', ProcessState.FINISHED, campaign)

    later = job.ctime + timedelta(seconds=120)
    stuck = stuck_processes(campaign, after_s=60, now=later)
    assert [(item.pk, item.process_label) for item in stuck] == [
        (label.pk, 'LabelWorkChain'),
        (job.pk, 'AseLabelCalculation'),
    ]  # oldest first
    assert all(isinstance(item, StuckProcess) and 120 <= item.waited_s < 130 for item in stuck)
    assert stuck_processes(campaign, after_s=600, now=later) == []  # not yet past the threshold
    # the campaign itself, when it is the one no worker took
    fresh = _process(orm.WorkChainNode, 'ActiveLearningWorkChain', ProcessState.CREATED)
    assert [item.pk for item in stuck_processes(fresh, after_s=0)] == [fresh.pk]


def test_jobs_the_scheduler_still_queues_past_the_threshold_are_pending(aiida_profile_clean):
    campaign = _process(orm.WorkChainNode, 'ActiveLearningWorkChain', ProcessState.WAITING)
    states = {'AseLabelCalculation': JobState.QUEUED, 'TrainCalculation': JobState.RUNNING}
    jobs = {}
    for label, state in states.items():
        job = orm.CalcJobNode()
        job.set_process_label(label)
        job.set_process_state(ProcessState.WAITING)
        job.base.links.add_incoming(campaign, LinkType.CALL_CALC, f'call_{label}')
        job.store()
        job.set_scheduler_state(state)
        info = JobInfo()
        info.job_id, info.job_state, info.annotation = '7', state, 'Resources'
        job.set_last_job_info(info)
        jobs[label] = job
    queued = jobs['AseLabelCalculation']
    later = queued.ctime + timedelta(seconds=300)
    (pending,) = pending_jobs(campaign, after_s=60, now=later)
    assert isinstance(pending, PendingJob)
    assert (pending.pk, pending.process_label, pending.state, pending.reason) == (
        queued.pk,
        'AseLabelCalculation',
        'queued',
        'Resources',
    )
    assert pending_jobs(campaign, after_s=600, now=later) == []
