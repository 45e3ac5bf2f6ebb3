"""Engine overhead: the share of a campaign round's wall time that AiiDA adds to the jobs themselves.

One ``ActiveLearningWorkChain`` round (``max_rounds`` 1, ``gradient`` strategy, EMT labels) is run to completion by a
local runner, the one ``aiida.engine.run_get_node`` creates (no broker: the work chains notice their children's end
by polling), on a throw-away embedded profile (SQLite storage, ``localhost`` computer with the direct
scheduler, created by :func:`aiida_alkit.profile.setup_environment` in a temporary ``AIIDA_PATH``, with the settings
``alkit setup`` gives every profile). The exploration is sized to give ``--candidates`` (1000) candidates:
walkers x steps / sample_every; the selection picks ``--batch`` of them. ``--sizes tiny`` (default): 4-atom fcc copper
cells and a tiny GM-NN trained for 60 epochs, so that the jobs take seconds and the engine's own cost shows;
``--sizes production``: 32-atom cells and the ``balanced`` protocol's model (64x64, 5 Å), training (300 epochs) and
gradient features (512-dimensional sketch), the jobs using every core: the share a user's default campaign sees.

Measured side by side in the same run:

* ``total_s``: wall time of ``runner.run_get_node`` (process creation, every step, storing, the jobs);
* ``jobs_s``: the elapsed time of the job processes (``python -m aiida_alkit.jobs.<name>``: train, explore, label).
  The code used here is ``alkit-python`` with two timestamp lines around the command in the submit script
  (``prepend_text``/``append_text``), so the interpreter start and every import (Python, numpy, torch) count as job
  time, not engine time. ``jobs_inner_s`` is what the jobs record themselves (``wall_time_s`` in results.json:
  from inside ``run_job``, so without interpreter start and module-level imports) for comparison;
* ``engine_share = (total_s - jobs_s) / total_s``; target 0.05.

Breakdown per stage (``stages``): ``wall_s`` from the stage's process node (created → last change), ``job_s`` inside
it, ``before_job_s`` (CalcJob created → job process started: inputs, upload, submit) and ``after_job_s`` (job
process ended → CalcJob done: scheduler poll, retrieve, parse, output storing); ``calcjob_phases`` splits the CalcJob
further with the times at which the engine's transport tasks (upload, submit, scheduler update, retrieve) were
requested and finished (INFO records of ``aiida.engine.processes.calcjobs.tasks``). ``select`` and ``merge`` are the
calcfunctions ``select_candidates`` and ``merge_datasets``; ``label`` includes ``pack_structures`` and
``name_ase_failures``; ``between_steps_s`` is the rest (the campaign's own steps and waiting for its children).
``engine_cpu_s`` is the CPU time of this process during the round (the engine's own work; the rest of the engine time
is waiting), ``transport_shells_cpu_s`` that of the shells the local transport starts (``bash -l`` by default);
``--profile FILE`` saves a cProfile of the round, ``--no-login-shell`` configures ``localhost`` with
``use_login_shell=False`` and ``--poll-interval S`` polls the scheduler and the child processes every S seconds, to
show what those settings save. Prints ONE JSON line; ``--quick`` runs 200 candidates.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pathlib
import platform
import re
import resource
import tempfile
import time
from typing import Any

import numpy as np

LATTICE = 3.61  # Å
TIMED_CODE = 'alkit-python-timed'
SIZES = ('tiny', 'production')
STAGES = {'TrainCalculation': 'train', 'ExploreCalculation': 'explore', 'AseLabelCalculation': 'label'}


def labelled_cells(n: int, repeat: int = 1) -> list[Any]:
    """``n`` EMT-labelled fcc Cu cells (the 4-atom cubic cell repeated ``repeat`` times along each axis), rattled and
    strained isotropically over ±2 %."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.reference import with_labels

    frames = []
    for index, strain in enumerate(np.linspace(-0.02, 0.02, n)):
        atoms = bulk('Cu', 'fcc', a=LATTICE * (1 + strain), cubic=True) * (repeat, repeat, repeat)
        atoms.rattle(stdev=0.05, seed=index)
        frames.append(with_labels(atoms, EMT))
    return frames


def timed_code(log: pathlib.Path):
    """``alkit-python`` with the job's start and end written to ``log`` (epoch seconds and work folder)."""
    from aiida import orm

    from aiida_alkit.profile import PYTHON_CODE

    plain = orm.load_code(f'{PYTHON_CODE}@localhost')
    code = orm.InstalledCode(
        label=TIMED_CODE, computer=plain.computer, filepath_executable=str(plain.filepath_executable)
    )
    code.prepend_text = 'alkit_job_start=$(date +%s.%N)'
    code.append_text = f'echo "$alkit_job_start $(date +%s.%N) $PWD" >> {log}'
    return code.store()


def read_job_log(log: pathlib.Path) -> dict[str, tuple[float, float]]:
    """Work folder -> (start, end) epoch seconds of its job process."""
    spans = {}
    for line in log.read_text().splitlines():
        start, end, folder = line.split(' ', 2)
        spans[os.path.realpath(folder)] = (float(start), float(end))
    return spans


class CalcJobTimeline(logging.Handler):
    """Collects the engine's transport-task messages (``aiida.engine.processes.calcjobs.tasks``, INFO): per CalcJob
    pk, the time each upload/submit/update/retrieve request was scheduled and finished."""

    PATTERN = re.compile(r'(scheduled request to )?(upload|submit|updat|retriev)\w* CalcJob<(\d+)>( successful)?')

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: dict[int, list[tuple[str, float]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            requested, task, pk, done = match.groups()
            kind = 'requested' if requested else 'done' if done else 'other'
            task = {'updat': 'update', 'retriev': 'retrieve'}.get(task, task)
            self.events.setdefault(int(pk), []).append((f'{task}_{kind}', record.created))

    def phases(self, calc, start: float, end: float) -> dict[str, float]:
        """Seconds of each phase of one CalcJob, from its creation to its last change (see the module docstring)."""
        events = self.events.get(calc.pk, [])

        def first(name: str) -> float:
            return min(time for event, time in events if event == name)

        def last(name: str) -> float:
            return max(time for event, time in events if event == name)

        created, finished = calc.ctime.timestamp(), calc.mtime.timestamp()
        return {
            'to_upload_request': first('upload_requested') - created,
            'upload': first('upload_done') - first('upload_requested'),
            'submit_to_job_start': start - first('upload_done'),
            'job': end - start,
            'job_end_to_seen_done': last('update_done') - end,
            'retrieve': first('retrieve_done') - last('update_done'),
            'parse_and_store': finished - first('retrieve_done'),
            'scheduler_polls': sum(1 for event, _ in events if event == 'update_done'),
        }


def seconds(node) -> float:
    return (node.mtime - node.ctime).total_seconds()


def inner_wall_time(calc) -> float | None:
    try:
        content = calc.outputs.retrieved.base.repository.get_object_content('results.json')
        return float(json.loads(content)['wall_time_s'])
    except (AttributeError, KeyError, FileNotFoundError, OSError, ValueError):
        return None


def breakdown(node, spans: dict[str, tuple[float, float]], total_s: float, timeline: CalcJobTimeline) -> dict[str, Any]:
    """Per-stage wall, job and around-the-job times of a finished campaign (see the module docstring)."""
    from aiida import orm

    stages: dict[str, dict[str, Any]] = {}
    for calc in node.called_descendants:
        if isinstance(calc, orm.CalcJobNode) and calc.process_label in STAGES:
            name = STAGES[calc.process_label]
            start, end = spans[os.path.realpath(calc.get_remote_workdir())]
            stage = stages.setdefault(name, {'job_s': 0.0, 'job_inner_s': 0.0, 'before_job_s': 0.0, 'after_job_s': 0.0})
            stage['job_s'] += end - start
            stage['job_inner_s'] += inner_wall_time(calc) or 0.0
            stage['before_job_s'] += start - calc.ctime.timestamp()
            stage['after_job_s'] += calc.mtime.timestamp() - end
            stage['calcjob_s'] = stage.get('calcjob_s', 0.0) + seconds(calc)
            stage['calcjob_phases'] = timeline.phases(calc, start, end)
    for child in node.called:  # the campaign's direct children: stage work chains and calcfunctions
        label = child.process_label
        name = {
            'TrainWorkChain': 'train',
            'ExploreWorkChain': 'explore',
            'LabelWorkChain': 'label',
            'select_candidates': 'select',
            'merge_datasets': 'merge',
        }.get(label)
        if name is None:
            continue
        stage = stages.setdefault(name, {})
        stage['wall_s'] = stage.get('wall_s', 0.0) + seconds(child)
        stage['processes'] = stage.get('processes', 0) + 1
    for stage in stages.values():
        if 'job_s' in stage:
            stage['engine_s'] = stage['wall_s'] - stage['job_s']
    stages['between_steps_s'] = total_s - sum(stage['wall_s'] for stage in stages.values())
    return stages


def count_nodes(after_pk: int) -> dict[str, int]:
    """Nodes stored after ``after_pk``, by node type."""
    from aiida import orm

    rows = orm.QueryBuilder().append(orm.Node, filters={'id': {'>': after_pk}}, project=['node_type']).all(flat=True)
    counts: dict[str, int] = {}
    for node_type in rows:
        key = node_type.rstrip('.').split('.')[-1]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='200 candidates instead of 1000')
    parser.add_argument('--candidates', type=int, default=None, help='pool size (default 1000; quick: 200)')
    parser.add_argument(
        '--sizes',
        choices=SIZES,
        default='tiny',
        help="job sizes: 'tiny' (4-atom cells, an 8x8 model trained 60 epochs: the engine's cost laid bare) or "
        "'production' (32-atom cells, the balanced protocol's model, training and features, what a campaign runs "
        'by default)',
    )
    parser.add_argument('--walkers', type=int, default=10, help='MD walkers (the pool is walkers x frames)')
    parser.add_argument(
        '--sample-every', type=int, default=None, help='MD steps between candidate frames (tiny: 2, production: 10)'
    )
    parser.add_argument('--batch', type=int, default=8, help='candidates selected and labelled')
    parser.add_argument(
        '--n-initial', type=int, default=None, help='labelled configurations to start from (tiny: 8, production: 16)'
    )
    parser.add_argument(
        '--no-login-shell',
        action='store_true',
        help='configure localhost with use_login_shell=False (as alkit setup does since 2026-11-21; kept for older profiles)',
    )
    parser.add_argument(
        '--poll-interval',
        type=float,
        default=None,
        help='poll interval of the runner (child processes) and of the scheduler (minimum job poll interval), s; '
        'alkit setup sets 1 for both',
    )
    parser.add_argument('--verbose', action='store_true', help="show the work chains' report lines")
    parser.add_argument(
        '--profile', type=pathlib.Path, default=None, help='cProfile the round (this process only) into this file'
    )
    args = parser.parse_args()
    candidates = args.candidates or (200 if args.quick else 1000)
    production = args.sizes == 'production'
    args.sample_every = args.sample_every or (10 if production else 2)
    args.n_initial = args.n_initial or (16 if production else 8)
    if candidates % args.walkers:
        parser.error('--candidates must be a multiple of --walkers')
    steps = candidates // args.walkers * args.sample_every

    with tempfile.TemporaryDirectory() as home:
        os.environ['AIIDA_PATH'] = home  # before AiiDA is imported
        import logging

        from aiida import orm
        from aiida.manage import get_manager

        from aiida_alkit.data import DatasetData
        from aiida_alkit.profile import setup_environment
        from aiida_alkit.workflows.active_learning import ActiveLearningWorkChain

        setup_environment('bench-engine')
        if not args.verbose:
            logging.getLogger('aiida').setLevel(logging.WARNING)
        timeline = CalcJobTimeline()
        tasks_logger = logging.getLogger('aiida.engine.processes.calcjobs.tasks')
        tasks_logger.setLevel(logging.INFO)
        tasks_logger.propagate = args.verbose
        tasks_logger.addHandler(timeline)
        log = pathlib.Path(home) / 'job-times.log'
        code = timed_code(log)
        if args.no_login_shell:
            code.computer.configure(safe_interval=0, use_login_shell=False)
        if args.poll_interval is not None:
            code.computer.set_minimum_job_poll_interval(args.poll_interval)
        # a local runner without broker, as ``run_get_node`` creates one (children are noticed by polling)
        runner_options = {} if args.poll_interval is None else {'poll_interval': args.poll_interval}
        runner = get_manager().create_runner(communicator=None, **runner_options)
        initial = DatasetData.from_atoms(labelled_cells(args.n_initial, 2 if production else 1)).store()
        # production: the balanced protocol's model, training and features; the jobs use every core (torch default)
        threads = {} if production else {'num_threads': 1}
        tiny_training = {
            'model': {'cutoff': 4.0, 'n_basis': 4, 'n_radial': 2, 'hidden_widths': [8, 8]},
            'training': {'epochs': 60, 'batch_size': 4},
        }
        overrides = {
            'max_rounds': 1,
            'train': {'parameters': {**({} if production else tiny_training), **threads, 'device': 'cpu'}},
            'explore': {
                'parameters': {
                    'walkers': args.walkers,
                    'steps': steps,
                    'sample_every': args.sample_every,
                    **threads,
                    'device': 'cpu',
                }
            },
            'select': {'parameters': {'batch_size': args.batch}},
            'schedule': {'temperatures': [300]},
        }
        builder = ActiveLearningWorkChain.get_builder_from_protocol(
            code,
            initial,
            protocol='balanced' if production else 'fast',
            strategy='gradient',
            overrides=overrides,
            label={'engine': 'ase', 'ase': {'code': code, 'calculator': 'ase.calculators.emt.EMT'}},
        )
        last_pk = orm.QueryBuilder().append(orm.Node, project=['id']).order_by({orm.Node: {'id': 'desc'}}).first()[0]

        children_started = resource.getrusage(resource.RUSAGE_CHILDREN)
        profiler = cProfile.Profile() if args.profile else None
        cpu_started, started = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        _, node = runner.run_get_node(builder)
        runner.close()
        total_s = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        engine_cpu_s = time.process_time() - cpu_started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        shell_cpu_s = (children.ru_utime + children.ru_stime) - (children_started.ru_utime + children_started.ru_stime)
        if not node.is_finished_ok:
            raise RuntimeError(f'campaign {node.pk} failed: [{node.exit_status}] {node.exit_message}')

        spans = read_job_log(log)
        stages = breakdown(node, spans, total_s, timeline)
        jobs_s = sum(end - start for start, end in spans.values())
        jobs_inner_s = sum(stage.get('job_inner_s', 0.0) for stage in stages.values() if isinstance(stage, dict))
        (entry,) = node.outputs.report.get_dict()['rounds']
        nodes = count_nodes(last_pk)
        result = {
            'benchmark': 'engine',
            'engine_share': (total_s - jobs_s) / total_s,
            'target': 0.05,
            'total_s': total_s,
            'jobs_s': jobs_s,
            'engine_s': total_s - jobs_s,
            'engine_cpu_s': engine_cpu_s,
            'transport_shells_cpu_s': shell_cpu_s,
            'jobs_s_includes': 'the whole job process: interpreter start and every import (numpy, torch) are job time',
            'jobs_inner_s': jobs_inner_s,
            'engine_share_vs_inner_job_times': (total_s - jobs_inner_s) / total_s,
            'stages': stages,
            'n_candidates': int(entry['explored']),
            'walker_stops': entry.get('walker_stops'),
            'n_selected': int(entry['selected']),
            'n_labelled': int(entry.get('labelled', 0)),
            'n_jobs': len(spans),
            'nodes_created': sum(nodes.values()),
            'nodes_by_type': nodes,
            'setup': {
                'strategy': 'gradient',
                'sizes': args.sizes,
                'protocol': 'balanced' if production else 'fast',
                'atoms_per_cell': 32 if production else 4,
                'walkers': args.walkers,
                'steps': steps,
                'sample_every': args.sample_every,
                'n_initial': args.n_initial,
                'runner_poll_interval_s': args.poll_interval or get_manager().get_option('runner.poll.interval'),
                'computer_min_job_poll_interval_s': code.computer.get_minimum_job_poll_interval(),
                'transport': code.computer.get_configuration(),
            },
            'quick': args.quick,
            'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
        }

    print(json.dumps(_rounded(result)), flush=True)


def _rounded(value):
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


if __name__ == '__main__':
    main()
