"""Jobs through a real SLURM (Debian's slurm-wlm, one node on this machine, started by ``scripts/slurm.sh``).

The computer ``localhost-slurm`` is the one ``alkit setup --slurm`` creates (:func:`ensure_slurm_resources`); every
test submits real batch jobs with ``sbatch`` and AiiDA follows them with ``squeue``. SLURM itself times jobs out and
cancels them here: no scheduler behaviour is imitated.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import pathlib
import subprocess
import time

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, WorkflowFactory
from ase.build import bulk

from aiida_alkit.data import DatasetData
from aiida_alkit.jobs import train as train_job
from aiida_alkit.profile import PYTHON_CODE, SLURM_COMPUTER, ensure_slurm_resources
from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain
from aiida_alkit.workflows.recovery import pending_jobs

from ..calculations.test_train import TINY, training_set  # noqa: F401  (fixture)
from .test_active_learning import TINY_OVERRIDES, _copper

pytestmark = pytest.mark.slurm

ROOT = pathlib.Path(__file__).resolve().parents[2]
AseLabelCalculation = CalculationFactory('alkit.label.ase')
TrainWorkChain = WorkflowFactory('alkit.train')


@pytest.fixture(scope='module')
def slurm_code(aiida_profile):
    """``alkit-python`` on ``localhost-slurm``, with SLURM running (``scripts/slurm.sh start`` installs and starts
    it when missing)."""
    started = subprocess.run(['bash', str(ROOT / 'scripts' / 'slurm.sh'), 'start'], capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    ensure_slurm_resources()
    return orm.load_code(f'{PYTHON_CODE}@{SLURM_COMPUTER}')


def _self_cancelling_code(tmp_path: pathlib.Path, computer, marker: pathlib.Path) -> orm.InstalledCode:
    """A wrapper around this Python that has SLURM cancel its own job (``scancel``) the first time it runs (while
    ``marker`` does not exist yet), and runs the job normally afterwards."""
    import sys

    script = tmp_path / 'python-cancelled-once'
    script.write_text(
        '#!/bin/bash\n'
        f'if [ ! -e {marker} ]; then touch {marker}; scancel "$SLURM_JOB_ID"; sleep 60; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    script.chmod(0o755)
    return orm.InstalledCode(label='python-cancelled-once', computer=computer, filepath_executable=str(script)).store()


def _scontrol(job_id: str) -> dict[str, str]:
    shown = subprocess.run(['scontrol', 'show', 'job', str(job_id)], capture_output=True, text=True, check=True)
    return dict(item.split('=', 1) for item in shown.stdout.split() if '=' in item)


def test_a_label_job_is_a_slurm_job_with_the_resources_asked_for(slurm_code):
    structures = []
    for seed in range(2):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    builder = AseLabelCalculation.get_builder()
    builder.code = slurm_code
    builder.configurations = DatasetData.from_atoms(structures).store()
    builder.calculator = orm.Str('ase.calculators.emt.EMT')
    builder.metadata.options.resources = {'num_machines': 1, 'num_mpiprocs_per_machine': 1, 'num_cores_per_mpiproc': 2}
    builder.metadata.options.max_wallclock_seconds = 300
    builder.metadata.options.queue_name = 'debug'
    builder.metadata.options.custom_scheduler_commands = '#SBATCH --comment=alkit-test'
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert len(results['labelled']) == 2

    script = node.base.repository.get_object_content('_aiidasubmit.sh')
    for line in (
        '#SBATCH --nodes=1',
        '#SBATCH --ntasks-per-node=1',
        '#SBATCH --cpus-per-task=2',
        '#SBATCH --time=00:05:00',
        '#SBATCH --partition=debug',
        '#SBATCH --comment=alkit-test',
    ):
        assert line in script.splitlines(), script
    # the job may use the two cores it asked SLURM for, and SLURM ran it so
    assert json.loads(node.base.repository.get_object_content('parameters.json'))['granted_cores'] == 2
    job = _scontrol(node.get_job_id())
    assert job['JobState'] == 'COMPLETED' and job['NumCPUs'] == '2' and job['Comment'] == 'alkit-test'


def test_a_train_job_slurm_times_out_is_resumed_from_its_checkpoint(slurm_code, training_set, tmp_path):  # noqa: F811
    """SLURM kills the first job at its 1-minute limit (our own time budget is switched off with ``max_seconds``);
    AiiDA reads SLURM's message (``ERROR_SCHEDULER_OUT_OF_WALLTIME``) and ``TrainWorkChain`` resumes from the
    checkpoint in the killed job's folder until the epochs are done. The number of epochs is sized here, from a
    timed local run, to about 200 s of training: three to four jobs of a minute at that speed, and still more than
    one job if the machine trains up to 3 times faster later than during the timing (110 s failed twice: the timing
    ran while other work loaded the machine more than when the job ran)."""
    parameters = {'model': TINY, 'num_threads': 1, 'device': 'cpu', 'training': {'batch_size': 4}}
    folder = tmp_path / 'timing'
    folder.mkdir()
    training_set.arrays.save(folder / train_job.DATASET_FILE)
    (folder / 'parameters.json').write_text(json.dumps({**parameters, 'training': {'epochs': 200, 'batch_size': 4}}))
    started = time.perf_counter()
    assert train_job.main([str(folder)]) == 0
    epochs = int(200.0 / ((time.perf_counter() - started) / 200))
    parameters['training']['epochs'] = epochs
    parameters['max_seconds'] = 1e6

    results, node = run_get_node(
        TrainWorkChain,
        train={
            'code': slurm_code,
            'dataset': training_set,
            'parameters': orm.Dict(parameters),
            'metadata': {'options': {'max_wallclock_seconds': 60}},
        },
        max_iterations=orm.Int(8),
    )
    assert node.is_finished_ok, node.exit_message
    calls = sorted(node.called, key=lambda n: n.ctime)
    scheduler_timeout = TrainWorkChain._process_class.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status
    assert [call.exit_status for call in calls] == [scheduler_timeout] * (len(calls) - 1) + [0], epochs
    assert len(calls) >= 2
    stderr = calls[0].outputs.retrieved.base.repository.get_object_content('_scheduler-stderr.txt')
    assert 'DUE TO TIME LIMIT' in stderr
    for previous, call in itertools.pairwise(calls):
        assert call.inputs.parent_folder.uuid == previous.outputs.remote_folder.uuid
    assert 0 < results['metrics']['history']['epochs_run'] < epochs  # the last job ran only what was left


@pytest.mark.campaign
def test_a_campaign_whose_jobs_are_slurm_jobs_and_a_cancelled_label_job(slurm_code, tmp_path):
    """Two rounds, every train, explore and label job a SLURM job; round 1's label job is cancelled by ``scancel``
    (its code cancels its own job once): a failed label with SLURM's reason, and the campaign goes on."""
    label_code = _self_cancelling_code(tmp_path, slurm_code.computer, tmp_path / 'cancelled-once')
    overrides = {**TINY_OVERRIDES, 'max_failed_fraction': 1.0}
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        slurm_code,
        _copper(4, labelled=True),
        protocol='fast',
        strategy='gradient',
        overrides=overrides,
        label={'engine': 'ase', 'ase': {'code': label_code, 'calculator': 'ase.calculators.emt.EMT'}},
    )
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    jobs = [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    kinds = {job.process_label for job in jobs}
    assert {'TrainCalculation', 'ExploreCalculation', 'AseLabelCalculation'} <= kinds
    assert all(job.computer.label == SLURM_COMPUTER and job.get_job_id() for job in jobs)
    first, second = results['report']['rounds']
    assert (first['labelled'], first['failed_labels']) == (0, first['selected'])
    assert second['labelled'] == second['selected'] > 0
    cancelled = [job for job in jobs if job.process_label == 'AseLabelCalculation' and not job.is_finished_ok]
    assert len(cancelled) == 1 and 'CANCELLED' in cancelled[0].exit_message, [j.exit_message for j in cancelled]
    failures = [n for n in node.called_descendants if getattr(n, 'process_label', '') == 'LabelWorkChain']
    reasons = [reason for n in failures for reason in n.outputs.failures.get_dict().values()]
    assert reasons and all('CANCELLED' in reason for reason in reasons), reasons


def test_a_job_pending_past_the_limit_is_reported(slurm_code):
    """A label job SLURM holds in its queue (``--begin`` an hour ahead: reason ``BeginTime``) is reported pending
    once past the threshold, with SLURM's reason; released with ``scontrol``, it runs and finishes."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    builder = AseLabelCalculation.get_builder()
    builder.code = slurm_code
    builder.configurations = DatasetData.from_atoms([bulk('Cu', 'fcc', a=3.61, cubic=True)]).store()
    builder.calculator = orm.Str('ase.calculators.emt.EMT')
    builder.metadata.options.max_wallclock_seconds = 300
    builder.metadata.options.custom_scheduler_commands = '#SBATCH --begin=now+3600'
    runner = get_manager().get_runner()
    process = instantiate_process(runner, builder)
    task = runner.loop.create_task(process.step_until_terminated())  # the job runs on the runner's loop meanwhile
    node = process.node
    deadline = time.monotonic() + 120
    while node.get_last_job_info() is None or node.get_scheduler_state() is None:
        assert time.monotonic() < deadline, 'AiiDA never saw the job in the queue'
        runner.loop.run_until_complete(asyncio.sleep(0.5))

    try:
        (pending,) = pending_jobs(node, after_s=0)
        # AiiDA's SLURM plugin calls a job waiting for its begin time held
        assert (pending.pk, pending.state, pending.reason) == (node.pk, 'queued held', 'BeginTime')
        assert pending_jobs(node, after_s=3600) == []  # not past this threshold
    finally:
        subprocess.run(['scontrol', 'update', f'jobid={node.get_job_id()}', 'StartTime=now'], check=True)
    runner.loop.run_until_complete(task)
    assert node.is_finished_ok, node.exit_message
    assert pending_jobs(node, after_s=0) == []
