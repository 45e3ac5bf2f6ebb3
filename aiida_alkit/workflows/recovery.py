"""Processes that no daemon worker will run, and their recovery.

A submitted process runs when a daemon worker takes its task from the broker. When the broker loses the task, the
process node stays ``Created`` for ever and a campaign waiting on it never ends, without an error. This is a known
aiida-core failure (lost process tasks: aiida-core issues #4289, #1712 and #5715); on this project's default profile
(SQLite + the built-in ZeroMQ broker) it happened to a label work chain submitted right after ``verdi daemon start``.
AiiDA's recovery is ``verdi process repair`` with the daemon stopped: it compares the active processes with the
broker's tasks and creates a task for every active process that has none (with ZeroMQ it writes them into the
broker's on-disk queue, read when the daemon starts). :func:`repair_lost_tasks` does the same, except for
interrupted calculation functions (see there).

:func:`stuck_processes` finds the processes of a campaign that waited too long for a worker (``alkit campaign
status`` lists them); :func:`repair_lost_tasks` is ``alkit campaign repair``: daemon stop, the missing tasks
recreated, daemon start with the workers it had. Nothing finished is touched: finished labels, models and datasets stay as they
are, and a revived process continues from its last checkpoint.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: ``alkit`` starts without loading AiiDA's ORM and engine (~1.5 s)
    from aiida import orm

__all__ = [
    'STUCK_AFTER_S',
    'PendingJob',
    'RepairReport',
    'StuckProcess',
    'pending_jobs',
    'repair_lost_tasks',
    'stuck_processes',
]

#: Seconds a work chain or calculation job may stay ``Created`` with the daemon running before it counts as stuck:
#: workers take a task within seconds unless all their slots are busy (``daemon.worker_process_slots``).
STUCK_AFTER_S = 600.0


@dataclass(frozen=True)
class StuckProcess:
    """A process node that no worker has picked up: its pk, process label and seconds since it was created."""

    pk: int
    process_label: str
    waited_s: float


@dataclass(frozen=True)
class PendingJob:
    """A calculation job its scheduler still holds in the queue: pk, process label, seconds since its node was
    created, the scheduler's state (``queued`` or ``queued held``) and its reason (SLURM's ``%r``, e.g. ``Resources``,
    ``Priority``, ``BeginTime``; None when the scheduler gives none)."""

    pk: int
    process_label: str
    waited_s: float
    state: str
    reason: str | None


@dataclass
class RepairReport:
    """What :func:`repair_lost_tasks` did: the processes without a task it revived, whether the daemon was running
    (and was started again with ``workers`` workers), the interrupted calculation functions it left alone, and the
    work chains / jobs still without a task after."""

    revived: list[int]
    daemon_was_running: bool
    workers: int
    interrupted_functions: list[int] = field(default_factory=list)
    still_missing: list[int] = field(default_factory=list)


def stuck_processes(
    node: orm.ProcessNode, after_s: float = STUCK_AFTER_S, now: datetime | None = None
) -> list[StuckProcess]:
    """The campaign ``node`` and its descendants that a daemon worker runs (work chains and calculation jobs) but
    that are still ``Created`` more than ``after_s`` seconds after their node was created, oldest first.

    Calculation functions are left out: they run inside their caller's step, and a daemon stop leaves an interrupted
    one ``Created`` for good (the step runs it again on restart), with no task to wait for.
    """
    from aiida import orm

    now = now or datetime.now(timezone.utc)
    stuck = []
    for process in [node, *node.called_descendants]:
        if isinstance(process, orm.CalcFunctionNode | orm.WorkFunctionNode):
            continue
        if process.process_state is None or process.process_state.value != 'created':
            continue
        waited = (now - process.ctime).total_seconds()
        if waited > after_s:
            stuck.append(StuckProcess(process.pk, process.process_label or type(process).__name__, waited))
    return sorted(stuck, key=lambda item: -item.waited_s)


def pending_jobs(
    node: orm.ProcessNode, after_s: float = STUCK_AFTER_S, now: datetime | None = None
) -> list[PendingJob]:
    """The calculation jobs of ``node`` (a campaign, any process, or a job itself) that their scheduler still
    queues (``queued`` or ``queued held``, as AiiDA last saw them) more than ``after_s`` seconds after their node
    was created, oldest first, with the scheduler's reason."""
    from aiida import orm
    from aiida.schedulers.datastructures import JobState

    now = now or datetime.now(timezone.utc)
    pending = []
    for process in [node, *node.called_descendants]:
        if not isinstance(process, orm.CalcJobNode) or process.is_terminated:
            continue
        state = process.get_scheduler_state()
        if state not in (JobState.QUEUED, JobState.QUEUED_HELD):
            continue
        waited = (now - process.ctime).total_seconds()
        if waited > after_s:
            info = process.get_last_job_info()
            reason = getattr(info, 'annotation', None) if info is not None else None
            pending.append(PendingJob(process.pk, process.process_label, waited, state.value, reason or None))
    return sorted(pending, key=lambda item: -item.waited_s)


def _is_function(pk: int) -> bool:
    from aiida import orm

    return isinstance(orm.load_node(pk), orm.CalcFunctionNode | orm.WorkFunctionNode)


def _processes_without_task(broker) -> tuple[list[int], list[int]]:
    """Active processes without a task in the broker (the daemon stopped, for the ZeroMQ broker): those a worker can
    continue (work chains, calculation jobs), and interrupted calculation functions, which no worker can continue
    (their work chain's step runs them again)."""
    from aiida.engine.processes.control import get_active_processes, get_process_tasks

    missing = sorted(set(get_active_processes(project='id')) - set(get_process_tasks(broker)))
    functions = [pk for pk in missing if _is_function(pk)]
    return [pk for pk in missing if pk not in functions], functions


def _send_continue_tasks(broker, pks: list[int]) -> None:
    """A continue task for every process of ``pks``, as ``verdi process repair`` sends them: written into the ZeroMQ
    broker's on-disk queue (the broker runs inside the stopped daemon and reads it when it starts), or sent to
    RabbitMQ through the process controller."""
    from aiida.brokers.zeromq.broker import ZeromqBroker
    from aiida.manage import get_manager

    if isinstance(broker, ZeromqBroker):
        import uuid

        from aiida.brokers.zeromq.queue import PersistentQueue
        from plumpy.process_comms import create_continue_body

        queue = PersistentQueue(broker._storage_path / 'tasks')  # the folder `verdi process repair` writes to
        for pk in pks:
            queue.push(uuid.uuid4().hex, {'body': create_continue_body(pid=pk, nowait=True), 'no_reply': True})
    else:
        controller = get_manager().get_process_controller()
        for pk in pks:
            controller.continue_process(pk, nowait=True, no_reply=True)


def repair_lost_tasks(timeout_s: int = 120) -> RepairReport:
    """Recreate the broker task of every active work chain and calculation job of the profile that has none, as
    AiiDA's ``verdi process repair`` does, stopping the daemon first when it runs and starting it again after with as
    many workers.

    Departure from ``verdi process repair``: interrupted calculation functions are not revived. A daemon stop
    interrupts the calcfunctions running in its workers, whose nodes then stay active without a task; their work
    chains run them again when they continue, so a revived one only ends as an excepted node next to the real one.

    :param timeout_s: seconds to wait for the daemon to stop and to start.
    :raises RuntimeError: the daemon did not stop, or the profile has no broker.
    """
    from aiida.engine.daemon.client import get_daemon_client
    from aiida.manage import get_manager

    broker = get_manager().get_broker()
    if broker is None:
        raise RuntimeError('this profile has no broker: processes run without the daemon and cannot lose a task')
    client = get_daemon_client()
    running = client.is_daemon_running
    workers = 1
    if running:
        workers = int(client.get_numprocesses(timeout=timeout_s).get('numprocesses', 1) or 1)
        client.stop_daemon(wait=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while client.is_daemon_running:
            if time.monotonic() > deadline:
                raise RuntimeError(f'the daemon did not stop within {timeout_s} s; stop it with `verdi daemon stop`')
            time.sleep(0.5)
    revived, functions = _processes_without_task(broker)
    _send_continue_tasks(broker, revived)
    get_manager().reset_broker()  # read the broker's tasks afresh
    still_missing, _ = _processes_without_task(get_manager().get_broker())
    if running:
        if shutil.which('verdi') is None:  # AiiDA starts the daemon with the `verdi` it finds on PATH
            bin_dir = Path(sys.executable).parent
            os.environ['PATH'] = f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}'
        client.start_daemon(number_workers=workers, timeout=timeout_s)
    return RepairReport(revived, running, workers, functions, still_missing)
