"""Helpers of the daemon tests (scale-out load, daemon faults): a throw-away AiiDA profile driven as a user drives it.

Every test gets its own ``AIIDA_PATH`` under ``tmp_path`` (never the developer's profile) and talks to it only
through subprocesses: ``alkit setup``, ``verdi daemon start/stop``, ``verdi process ...`` and
:meth:`AiidaEnv.call`, which runs one function of a test module in a fresh Python process with the profile loaded
and returns its JSON result. The functions below marked *(in the profile)* are meant for :meth:`AiidaEnv.call`.

Back-ends: ``sqlite-zeromq`` (``alkit setup``: SQLite storage, the built-in ZeroMQ broker that the daemon
supervises) and ``psql-rabbitmq`` (``alkit setup --postgres --rabbitmq``: ``core.psql_dos`` on 127.0.0.1:5432,
RabbitMQ on 127.0.0.1:5672). The PostgreSQL database and role of a scale-out profile are dropped afterwards, and the
profile's RabbitMQ queue and exchanges (named after the profile uuid, so leftovers could never collide with another
profile) are deleted too, best effort.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
SQLITE_ZEROMQ = 'sqlite-zeromq'
PSQL_RABBITMQ = 'psql-rabbitmq'
BACKENDS = (PSQL_RABBITMQ, SQLITE_ZEROMQ)
PYTHON_CODE = 'alkit-python@localhost'
EMT = 'ase.calculators.emt.EMT'
TERMINATED = ('finished', 'excepted', 'killed')
_RESULT = '@@alkit-test-result@@ '

# Runs ``module:function(*args)`` with the profile of AIIDA_PATH loaded; the result is the last line, as JSON.
_CALL = f"""
import json, sys
from importlib import import_module
from aiida import load_profile
load_profile()
module, _, name = sys.argv[1].partition(':')
result = getattr(import_module(module), name)(*json.loads(sys.argv[2]))
print({_RESULT!r} + json.dumps(result), flush=True)
"""


def campaign_overrides(**changes: Any) -> dict:
    """``TINY_OVERRIDES`` (2 rounds, tiny model, 2 walkers x 10 steps, 2 picks a round) that never converge early.

    The gradient strategy counts a candidate as accurate when its calibrated uncertainty is at most
    ``uncertain_above``; with a threshold of 1e-6 eV/Å no candidate is, so every campaign runs exactly
    ``max_rounds`` rounds and labels ``batch_size`` picks in each: the counts the tests assert are fixed.
    """
    from ..workflows.test_active_learning import TINY_OVERRIDES

    overrides = copy.deepcopy(TINY_OVERRIDES)
    overrides['select']['parameters']['uncertain_above'] = 1e-6
    overrides.update(changes)
    return overrides


# ------------------------------------------------------------------------------------------------ the profile
class AiidaEnv:
    """A fresh AiiDA configuration folder (``AIIDA_PATH``) with one profile, used only through subprocesses."""

    def __init__(self, tmp_path: pathlib.Path, backend: str = SQLITE_ZEROMQ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
        self.backend = backend
        self.path = tmp_path / 'aiida-config'
        self.path.mkdir(parents=True, exist_ok=True)
        # unique per run: parallel runs against the same PostgreSQL/RabbitMQ servers never share a database or queue
        self.name = f'alkit-test-{os.getpid()}-{uuid.uuid4().hex[:8]}' if backend == PSQL_RABBITMQ else 'alkit'
        self.env = {**os.environ, 'AIIDA_PATH': str(self.path)}
        self.env.pop('AIIDA_PROFILE', None)

    def run(self, *args: Any, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(arg) for arg in args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )

    def verdi(self, *args: Any, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run(BIN / 'verdi', *args, timeout=timeout)

    def call(self, function, *args: Any, timeout: float = 300) -> Any:
        """``function(*args)`` in a fresh Python process with this profile loaded; its JSON-able return value."""
        target = f'{function.__module__}:{function.__name__}'
        done = self.run(sys.executable, '-c', _CALL, target, json.dumps(args), timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
        assert done.returncode == 0 and lines, f'{target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}'
        return json.loads(lines[-1][len(_RESULT) :])

    # -------------------------------------------------------------------------------------- life cycle
    def setup(self) -> str:
        args = ['setup']
        if self.backend == PSQL_RABBITMQ:
            args += ['--postgres', '--rabbitmq', '--profile', self.name]
        done = self.run(BIN / 'alkit', *args)
        assert done.returncode == 0, done.stdout + done.stderr
        expected = 'core.psql_dos + core.rabbitmq' if self.backend == PSQL_RABBITMQ else 'core.sqlite_dos + core.zeromq'
        assert expected in done.stdout, done.stdout
        return done.stdout

    def start_daemon(self, workers: int = 1) -> None:
        # generous client timeouts: on a loaded machine circus answers after the default 2 s
        done = self.verdi('daemon', 'start', workers, '--timeout', 60, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr

    def daemon_running(self) -> bool:
        return self.verdi('daemon', 'status', '--timeout', 30, timeout=120).returncode == 0

    def stop_daemon(self, timeout: float = 120) -> subprocess.CompletedProcess:
        """``verdi daemon stop``, then wait until ``verdi daemon status`` says it is not running."""
        done = self.verdi('daemon', 'stop', '--timeout', int(timeout), timeout=timeout + 60)
        deadline = time.monotonic() + timeout
        while self.daemon_running():
            assert time.monotonic() < deadline, f'the daemon did not stop: {done.stdout}{done.stderr}'
            time.sleep(1)
        return done

    def profile_uuid(self) -> str | None:
        try:
            config = json.loads((self.path / '.aiida' / 'config.json').read_text())
            return config['profiles'][self.name].get('PROFILE_UUID')
        except (OSError, KeyError, ValueError):
            return None

    def cleanup(self) -> list[str]:
        """Stop the daemon; for the scale-out profile drop its database and role and delete its RabbitMQ queue.

        Never raises (it runs in ``finally``): what could not be cleaned up is returned as messages.
        """
        problems = []
        try:
            stopped = self.stop_daemon()
            if stopped.returncode != 0:
                problems.append(f'verdi daemon stop: {stopped.stdout}{stopped.stderr}')
        except Exception as exc:
            problems.append(f'verdi daemon stop: {exc!r}')
        if self.backend == PSQL_RABBITMQ:
            profile_uuid = self.profile_uuid()
            problems += drop_postgres(f'aiida-{self.name}')
            if profile_uuid:
                problems += delete_rabbitmq_queues(f'aiida-{profile_uuid}')
        return problems


def drop_postgres(name: str) -> list[str]:
    """Drop the database and role ``name`` that ``alkit setup --postgres`` created (connections are ended first)."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
            conn.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))
            conn.execute(sql.SQL('DROP ROLE IF EXISTS {}').format(sql.Identifier(name)))
    except psycopg.Error as exc:
        return [f'dropping PostgreSQL database/role {name}: {exc}']
    return []


def postgres_database_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres') as conn:
        database = conn.execute('SELECT 1 FROM pg_database WHERE datname = %s', (name,)).fetchone()
        role = conn.execute('SELECT 1 FROM pg_roles WHERE rolname = %s', (name,)).fetchone()
    return bool(database or role)


def delete_rabbitmq_queues(prefix: str) -> list[str]:
    """Delete the profile's durable launch queue and its two exchanges (``aiida-<profile uuid>.*``), best effort."""
    import asyncio

    async def delete() -> None:
        import aio_pika

        connection = await aio_pika.connect('amqp://guest:guest@127.0.0.1:5672/', timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f'{prefix}.process.queue')
            for exchange in ('messages', 'tasks'):
                await channel.exchange_delete(f'{prefix}.{exchange}')

    try:
        asyncio.run(asyncio.wait_for(delete(), 30))
    except Exception as exc:
        return [f'deleting RabbitMQ queue/exchanges {prefix}.*: {exc!r}']
    return []


@contextlib.contextmanager
def daemon_profile(tmp_path: pathlib.Path, backend: str = SQLITE_ZEROMQ, workers: int = 1) -> Iterator[AiidaEnv]:
    """A fresh profile with a running daemon of ``workers`` workers; stopped and dropped again in ``finally``."""
    env = AiidaEnv(tmp_path, backend)
    try:
        env.setup()
        env.start_daemon(workers)
        yield env
    finally:
        problems = env.cleanup()
        if problems:
            print('cleanup problems:', *problems, sep='\n  ', file=sys.stderr)


def active_process_count(env: AiidaEnv) -> int:
    """What ``verdi process list`` (active processes only) reports as its total."""
    listing = env.verdi('process', 'list')
    assert listing.returncode == 0, listing.stdout + listing.stderr
    match = re.search(r'Total results:\s*(\d+)', listing.stdout)
    assert match, listing.stdout
    return int(match.group(1))


def process_report(env: AiidaEnv, pk: int) -> str:
    done = env.verdi('process', 'report', pk)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# ------------------------------------------------------------------------------ functions run in the profile
def copper(seed: int, rattle: float = 0.05, labelled: bool = False):
    """The 4-atom cubic Cu cell rattled with ``seed``; with EMT labels on a SinglePointCalculator if ``labelled``."""
    from ase.build import bulk
    from ase.calculators.emt import EMT as EmtCalculator
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
    atoms.rattle(rattle, seed=seed)
    if labelled:
        atoms.calc = EmtCalculator()
        results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def add_gated_code(label: str, gate: str) -> str:
    """*(in the profile)* A copy of the ``alkit-python`` code whose jobs wait while the file ``gate`` exists.

    It stands for a slow label engine (a DFT code): a job of it stays with the scheduler until the test releases it
    (or kills it), whatever the load of the machine; the tests remove the gate in ``finally``.
    """
    from aiida import orm

    python = orm.load_code(PYTHON_CODE)
    code = orm.InstalledCode(
        label=label,
        computer=python.computer,
        filepath_executable=str(python.filepath_executable),
        description='alkit-python that waits for a gate file to disappear (tests)',
    )
    # at most 10 minutes, so that a job whose test died never waits forever
    code.prepend_text = f'for _ in $(seq 3000); do [ -e {shlex.quote(gate)} ] || break; sleep 0.2; done'
    code.store()
    return code.full_label


def submit_campaign(overrides: dict, label_code: str = PYTHON_CODE, dataset: int | None = None, n_initial: int = 6):
    """*(in the profile)* Submit a campaign on ``n_initial`` labelled Cu cells (or the DatasetData ``dataset``).

    Train/explore jobs run with ``alkit-python``, labels with EMT on ``label_code``. Returns the pks of the
    campaign and of its initial dataset.
    """
    from aiida.engine import submit

    builder, initial = campaign_builder(overrides, label_code, dataset, n_initial)
    return {'campaign': submit(builder).pk, 'dataset': initial.pk}


def campaign_builder(overrides: dict, label_code: str = PYTHON_CODE, dataset: int | None = None, n_initial: int = 6):
    """*(in the profile)* The builder :func:`submit_campaign` submits, and its initial dataset node."""
    from aiida import orm

    from aiida_alkit.data import DatasetData
    from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

    if dataset is None:
        initial = DatasetData.from_atoms([copper(seed, labelled=True) for seed in range(n_initial)]).store()
    else:
        initial = orm.load_node(dataset)
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        orm.load_code(PYTHON_CODE),
        initial,
        protocol='fast',
        strategy='gradient',
        overrides=overrides,
        label={'engine': 'ase', 'ase': {'code': orm.load_code(label_code), 'calculator': EMT}},
    )
    return builder, initial


def submit_label_jobs(count: int, first_seed: int = 1000) -> list[int]:
    """*(in the profile)* ``count`` independent label jobs: ``alkit.label.ase`` CalcJobs (EMT), one rattled Cu cell
    each, the job a user submits to label a set of configurations."""
    from aiida import orm
    from aiida.engine import submit

    from aiida_alkit.calculations.label_ase import AseLabelCalculation
    from aiida_alkit.data import DatasetData

    code = orm.load_code(PYTHON_CODE)
    pks = []
    for index in range(count):
        builder = AseLabelCalculation.get_builder()
        builder.code = code
        builder.configurations = DatasetData.from_atoms([copper(first_seed + index, rattle=0.1)])
        builder.calculator = orm.Str(EMT)
        builder.metadata.options.max_wallclock_seconds = 600
        builder.metadata.label = f'label job {index}'
        pks.append(submit(builder).pk)
    return pks


def process_states(pks: list[int]) -> dict[str, list]:
    """*(in the profile)* ``{pk: [process state, exit status]}``."""
    from aiida import orm

    query = orm.QueryBuilder().append(
        orm.ProcessNode,
        filters={'id': {'in': list(pks)}},
        project=['id', 'attributes.process_state', 'attributes.exit_status'],
    )
    return {str(pk): [state, exit_status] for pk, state, exit_status in query.all()}


def wait_until_terminated(pks: list[int], timeout: float, interval: float = 2.0) -> dict[str, Any]:
    """*(in the profile)* Poll until every process of ``pks`` is terminated or ``timeout`` (s) passed."""
    start = time.monotonic()
    while True:
        states = process_states(pks)
        pending = [pk for pk, (state, _) in states.items() if state not in TERMINATED]
        if not pending or time.monotonic() - start > timeout:
            return {'states': states, 'pending': pending, 'waited_s': time.monotonic() - start}
        time.sleep(interval)


def wait_for_job(
    campaign: int, process_labels: list[str], call_link: str | None, timeout: float, interval: float = 0.2
) -> dict[str, Any] | None:
    """*(in the profile)* The first CalcJob of ``campaign`` (called by one of its sub-workflows, whose call link
    label matches ``call_link``, a regex) that is with the scheduler: its job runs right now.

    Returns pk, process label, the sub-workflow's call link label and pk (``caller``), or ``None`` after ``timeout``
    seconds.
    """
    from aiida import orm

    pattern = re.compile(call_link or '.*')
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        query = orm.QueryBuilder()
        query.append(orm.WorkflowNode, filters={'id': campaign}, tag='campaign')
        query.append(
            orm.WorkflowNode, with_incoming='campaign', edge_project='label', edge_tag='call', project='id', tag='step'
        )
        query.append(
            orm.CalcJobNode,
            with_incoming='step',
            filters={'attributes.process_label': {'in': process_labels}, 'attributes.state': 'withscheduler'},
            project=['id', 'attributes.process_label'],
            tag='job',
        )
        for row in query.dict():
            link_label, job = row['call']['label'], row['job']
            if pattern.fullmatch(link_label):
                return {
                    'pk': job['id'],
                    'process_label': job['attributes.process_label'],
                    'call_link': link_label,
                    'caller': row['step']['id'],
                    'after_s': time.monotonic() - start,
                }
        time.sleep(interval)
    return None


def all_processes() -> dict[str, Any]:
    """*(in the profile)* Every process of the profile: counts by label and state, and the ones not finished ok."""
    from aiida import orm

    query = orm.QueryBuilder().append(
        orm.ProcessNode,
        project=['id', 'attributes.process_label', 'attributes.process_state', 'attributes.exit_status'],
    )
    counts: Counter = Counter()
    not_ok = []
    for pk, label, state, exit_status in query.all():
        counts[f'{label} {state} {exit_status}'] += 1
        if state != 'finished' or exit_status != 0:
            not_ok.append([pk, label, state, exit_status])
    return {'counts': dict(counts), 'not_ok': sorted(not_ok)}


def node_counts() -> dict[str, int]:
    """*(in the profile)* Counts of the nodes a campaign makes, by kind."""
    from aiida import orm

    from aiida_alkit.data import DatasetData, PotentialData

    def count(cls, **filters) -> int:
        return orm.QueryBuilder().append(cls, filters=filters).count()

    def outputs(process_label: str, link_label: str) -> int:
        query = orm.QueryBuilder()
        query.append(orm.ProcessNode, filters={'attributes.process_label': process_label}, tag='process')
        query.append(DatasetData, with_incoming='process', edge_filters={'label': link_label})
        return query.count()

    counts = {
        label: count(orm.CalcJobNode, **{'attributes.process_label': label})
        for label in ('TrainCalculation', 'ExploreCalculation', 'AseLabelCalculation')
    }
    counts.update(
        {
            'LabelWorkChain': count(orm.WorkflowNode, **{'attributes.process_label': 'LabelWorkChain'}),
            'ActiveLearningWorkChain': count(
                orm.WorkflowNode, **{'attributes.process_label': 'ActiveLearningWorkChain'}
            ),
            'PotentialData': count(PotentialData),
            'DatasetData': count(DatasetData),
            'merged datasets': outputs('merge_datasets', 'result'),
            'labelled (LabelWorkChain)': outputs('LabelWorkChain', 'labelled'),
            'labelled (AseLabelCalculation)': outputs('AseLabelCalculation', 'labelled'),
        }
    )
    return counts


def label_job_facts(pks: list[int]) -> list[dict[str, Any]]:
    """*(in the profile)* Per label job (``alkit.label.ase``): state, and whether its output belongs to its input.

    Checked: ``labelled`` was created by the job itself, holds one labelled configuration per input configuration
    (``info.source_index`` points into the input), with the input's atoms and positions and finite EMT labels.
    """
    import numpy as np
    from aiida import orm

    facts = []
    for pk in pks:
        node = orm.load_node(pk)
        given = node.inputs.configurations.arrays
        item = {'pk': pk, 'state': node.process_state.value, 'exit_status': node.exit_status, 'n_input': len(given)}
        if 'labelled' in node.outputs:
            labelled = node.outputs.labelled
            arrays = labelled.arrays
            sources = [int(i) for i in arrays.info['source_index']]
            same_atoms = all(
                np.array_equal(arrays.get_atoms(k).numbers, given.get_atoms(i).numbers)
                and np.allclose(arrays.get_atoms(k).positions, given.get_atoms(i).positions)
                for k, i in enumerate(sources)
            )
            item.update(
                {
                    'n_labelled': len(labelled),
                    'creator': labelled.creator.pk,
                    'labels': labelled.labels,
                    'same_atoms_as_input': same_atoms,
                    'finite': bool(np.all(np.isfinite(arrays.energy)) and np.all(np.isfinite(arrays.forces))),
                }
            )
        if 'failures' in node.outputs:
            item['failures'] = node.outputs.failures.get_dict()
        facts.append(item)
    return facts


def campaign_facts(pk: int) -> dict[str, Any]:
    """*(in the profile)* What a user would check of a finished campaign, read from its outputs and provenance."""
    from aiida import orm

    from aiida_alkit.workflows.provenance import called_processes, failed_labels, labels_of_potential

    node = orm.load_node(pk)
    facts: dict[str, Any] = {
        'pk': pk,
        'state': node.process_state.value,
        'exit_status': node.exit_status,
        'exit_message': node.exit_message,
        'initial_size': len(node.inputs.initial_dataset),
    }
    if 'report' in node.outputs:
        report = node.outputs.report.get_dict()
        facts['rounds'] = report['rounds']
        facts['stop_reason'] = report['stop_reason']
    # selection of each round: pool indices in pick order, and each pick's attributes
    facts['selections'] = []
    for _, select in called_processes(node, process_label='select_candidates'):
        picks = [
            (
                link.link_label,
                link.node.base.attributes.get('alkit_pool_index'),
                link.node.base.attributes.get('alkit_rank'),
            )
            for link in select.base.links.get_outgoing(node_class=orm.StructureData).all()
        ]
        facts['selections'].append(
            {
                'indices': [int(i) for i in select.outputs.selection.get_array('indices')],
                'picks': sorted(picks),
                'pool_size': len(select.inputs.pool),
                'pool_uuid': select.inputs.pool.uuid,
            }
        )
    # label jobs: what each labelled (structure uuids) and what failed
    facts['labels'] = []
    for link_label, label in called_processes(node, link_label_filter='label_%'):
        facts['labels'].append(
            {
                'call_link': link_label,
                'pk': label.pk,
                'state': label.process_state.value,
                'exit_status': label.exit_status,
                'inputs': {key: label.inputs.structures[key].uuid for key in label.inputs.structures},
                'labelled': (
                    [str(u) for u in label.outputs.labelled.arrays.info['structure_uuid']]
                    if 'labelled' in label.outputs
                    else []
                ),
                'failures': label.outputs.failures.get_dict() if 'failures' in label.outputs else None,
                'jobs': [
                    [child.pk, child.process_label, child.process_state.value, child.exit_status, child.process_status]
                    for child in label.called
                    if isinstance(child, orm.CalcJobNode)
                ],
            }
        )
    facts['failed_labels'] = failed_labels(node)
    if 'dataset' in node.outputs:
        final = node.outputs.dataset
        info = final.arrays.info
        facts['dataset'] = {
            'size': len(final),
            'rounds': [int(r) for r in info['round']],
            'origins': [str(o) for o in info['origin']],
            'splits': [str(s) for s in info['split']],
            'energy': [float(e) for e in final.arrays.energy],
        }
    if 'potential' in node.outputs:
        potential = node.outputs.potential
        trained_on = potential.creator.inputs.dataset
        facts['potential'] = {
            'creator': potential.creator.process_label,
            'trained_on_size': len(trained_on),
            'trained_on_rounds': [int(r) for r in trained_on.arrays.info['round']],
            'trained_on_origins': [str(o) for o in trained_on.arrays.info['origin']],
            'labels_of_potential': [s.uuid for s in labels_of_potential(potential)],
        }
    descendants = Counter()
    for process in node.called_descendants:
        descendants[f'{process.process_label} {process.process_state.value} {process.exit_status}'] += 1
    facts['descendants'] = dict(descendants)
    return facts
