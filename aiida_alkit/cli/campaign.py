"""``alkit campaign``: per-round numbers of an active-learning campaign (``ActiveLearningWorkChain``).

``alkit campaign status PK`` prints the process state, the stop reason and one row per round. A finished campaign
is read from its ``report`` output; a running one (or any with ``--source graph``) from the processes it called
(:func:`aiida_alkit.workflows.provenance.campaign_rounds`). For an active campaign it also says whether the daemon
runs, and lists the campaign's processes that no daemon worker picked up for ``--stuck-after`` seconds (the broker lost
their tasks: :mod:`aiida_alkit.workflows.recovery`).

``alkit campaign repair`` recreates lost tasks (daemon stop, tasks recreated as ``verdi process repair`` does,
daemon start); finished labels, models and datasets are kept.

``alkit campaign report PK`` prints the table of seed paper 000 (Table 2: round, temperature, MD steps, maximum,
reliable / selected / discarded). The paper's columns map onto the report as follows:

* **Reliable** = ``n_accurate``: explored candidates the selection classified as accurate (below the trust
  window; only window strategies such as ``alkpu`` and ``dpgen`` classify, others report 0);
* **Selected** = ``selected``: candidates picked for labelling;
* **Discarded** = ``n_failed + failed_labels``: candidates above the window (unphysical, never labelled) plus
  picks whose label failed (e.g. an unconverged SCF or forces above ``max_force``);
* **Maximum** = the campaign's ``select.parameters.batch_size`` (the most structures selected per round).

``--plot out.png`` writes a PNG (matplotlib, Agg canvas) with the learning curve (validation force RMSE vs the size
of the training set the round's potential was trained on), stacked per-round counts and, when the picks' model
energies and labels are in the graph, a calibration plot (the calibrated max atom force uncertainty at selection
against the actual max atom force error of the model that explored, on the diagonal's scale; energy uncertainty
against energy error where no force uncertainty was scored).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import click
import numpy as np

from aiida_alkit.workflows.recovery import STUCK_AFTER_S, pending_jobs, repair_lost_tasks, stuck_processes

from . import main
from .params import CAMPAIGN

__all__ = [
    'calibration_points',
    'campaign_group',
    'campaign_rows',
    'discarded',
    'format_table',
    'report_table',
    'status_table',
    'write_plot',
]

STATUS_COLUMNS = (
    'round',
    'T (K)',
    'steps',
    'explored',
    'acc/cand/fail',
    'selected',
    'labelled',
    'failed labels',
    'trained on',
    'set size',
    'F RMSE (meV/Å)',
    'test F RMSE',
)
REPORT_COLUMNS = ('Round', 'Temperature', 'Steps', 'Maximum', 'Reliable', 'Selected', 'Discarded')
MAPPING_NOTE = (
    'Reliable = accurate candidates (n_accurate); Selected = picks sent to labelling; '
    'Discarded = candidates above the trust window (n_failed) + failed labels.'
)


# ---------------------------------------------------------------------------------------------- data
def campaign_rows(node, source: str = 'auto') -> tuple[list[dict[str, Any]], str]:
    """The per-round rows of a campaign and where they came from (``'report'`` or ``'graph'``).

    ``source='auto'`` reads the ``report`` output when there is one, else rebuilds the rows from the called processes.
    Rows of a report written before reports carried ``trained_on`` (size of the set the round's potential was trained
    on) get it from the graph.
    """
    from aiida_alkit.workflows.provenance import campaign_rounds

    if source == 'graph' or (source == 'auto' and 'report' not in node.outputs):
        return campaign_rounds(node, rebuild=True), 'graph'
    if 'report' not in node.outputs:
        raise click.ClickException(f'campaign <{node.pk}> has no report output yet; use --source graph')
    rows = [dict(row) for row in node.outputs.report.get_dict().get('rounds', [])]
    if any('trained_on' not in row for row in rows):
        graph = campaign_rounds(node, rebuild=True)
        trained_on = {row['round']: row['trained_on'] for row in graph if 'trained_on' in row}
        for row in rows:
            if 'trained_on' not in row and row.get('round') in trained_on:
                row['trained_on'] = trained_on[row['round']]
    return rows, 'report'


def _trained_on(rows: list[dict[str, Any]]) -> list[int | None]:
    """Training-set size of each round's potential: from the graph, else the previous round's set size."""
    sizes: list[int | None] = []
    for index, row in enumerate(rows):
        size = row.get('trained_on')
        if size is None and index and rows[index - 1].get('dataset_size') is not None:
            size = rows[index - 1]['dataset_size']
        if size is None and index == 0 and row.get('dataset_size') is not None:
            size = row['dataset_size'] - (row.get('labelled') or 0)
        sizes.append(size)
    return sizes


def _force_rmse_mev(row: dict[str, Any]) -> float | None:
    value = (row.get('metrics') or {}).get('valid_forces_rmse_ev_per_ang')
    return None if value is None or not math.isfinite(value) else 1e3 * value


def _cell(value: Any, fmt: str = '{}') -> str:
    return '-' if value is None else fmt.format(value)


def format_table(headers: tuple[str, ...], rows: list[list[str]]) -> str:
    """A plain-text table, columns left-aligned to their widest cell."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ['  '.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append('  '.join('-' * w for w in widths))
    lines.extend('  '.join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    return '\n'.join(lines)


def status_table(rows: list[dict[str, Any]]) -> str:
    """The ``status`` table: one line per round (``-`` where a step has not finished)."""
    cells = []
    for row, trained_on in zip(rows, _trained_on(rows), strict=True):
        counts = (row.get('n_accurate'), row.get('n_candidate'), row.get('n_failed'))
        cells.append(
            [
                _cell(row.get('round')),
                _cell(row.get('temperature_K'), '{:.0f}'),
                _cell(row.get('steps')),
                _cell(row.get('explored')),
                '-' if counts[0] is None else '/'.join(str(c) for c in counts),
                _cell(row.get('selected')),
                _cell(row.get('labelled')),
                _cell(row.get('failed_labels')),
                _cell(trained_on),
                _cell(row.get('dataset_size')),
                _cell(_force_rmse_mev(row), '{:.1f}'),
                _cell(None if row.get('test_forces_rmse') is None else 1e3 * row['test_forces_rmse'], '{:.1f}'),
            ]
        )
    return format_table(STATUS_COLUMNS, cells)


def discarded(row: dict[str, Any]) -> int | None:
    """Seed 000's *discarded*: candidates above the trust window plus failed labels."""
    if row.get('n_failed') is None:
        return None
    return int(row['n_failed']) + int(row.get('failed_labels') or 0)


def report_table(rows: list[dict[str, Any]], maximum: int | None) -> str:
    """The seed-000 Table 2 layout: Round, Temperature, Steps, Maximum, Reliable, Selected, Discarded."""
    cells = [
        [
            _cell(row.get('round')),
            _cell(row.get('temperature_K'), '{:.0f}K'),
            _cell(row.get('steps')),
            _cell(maximum),
            _cell(row.get('n_accurate')),
            _cell(row.get('selected')),
            _cell(discarded(row)),
        ]
        for row in rows
    ]
    return format_table(REPORT_COLUMNS, cells)


def _state(node) -> str:
    if node.process_state is None:
        return 'unknown'
    state = node.process_state.value.capitalize()
    if node.is_finished:
        state += f' [{node.exit_status}]'
        if node.exit_message:
            state += f': {node.exit_message}'
    return state


def _stop_reason(node) -> str:
    if 'report' in node.outputs:
        return node.outputs.report.get_dict().get('stop_reason') or '-'
    if not node.is_terminated:
        return '(still running)'
    return node.exit_message or f'ended {node.process_state.value} without a report'


def _initial_labels(node) -> str | None:
    from aiida_alkit.workflows.provenance import called_processes

    found = called_processes(node, link_label_filter='label_initial')
    if not found:
        return None
    label = found[-1][1]
    if not label.is_terminated:
        return 'running'
    labelled = len(label.outputs.labelled) if 'labelled' in label.outputs else 0
    failed = len(label.outputs.failures.get_dict()) if 'failures' in label.outputs else 0
    return f'{labelled} labelled, {failed} failed'


def _strategy(node) -> str:
    strategy = node.inputs.strategy.value if 'strategy' in node.inputs else '?'
    try:
        method = node.inputs.select.parameters.get_dict().get('method')
    except (AttributeError, KeyError):
        method = None
    return f'{strategy} ({method})' if method else strategy


def _batch_size(node) -> int | None:
    try:
        value = node.inputs.select.parameters.get_dict().get('batch_size')
    except (AttributeError, KeyError):
        return None
    return None if value is None else int(value)


# ---------------------------------------------------------------------------------------------- plot
#: Calibration kinds whose uncertainty and error are force bounds in eV/Å (the others: energies in eV).
FORCE_CALIBRATION_KINDS = ('calibrated', 'committee')


def calibration_points(node) -> list[dict[str, Any]]:
    """Labelled picks with their uncertainty at selection and the actual error of the model that explored them.

    Per labelled pick: ``round``, ``kind``, ``uncertainty`` and ``error``. ``kind`` is ``'calibrated'`` when the
    exploration scored the candidates with a conformally calibrated uncertainty (the largest calibrated atom
    uncertainty, eV/Å) and ``'committee'`` for a committee's max atom force deviation (eV/Å); ``error`` is then the
    largest per-atom force RMSE of that potential against the label (eV/Å), the quantity the calibration bounds
    (seed 003 Fig. 2). Otherwise ``'u_energy'`` (the pool's ``u_energy``, eV) or ``'score'`` (the selection score)
    against ``|model_energy − label|`` (eV). Empty when nothing applies.
    """
    from aiida import orm

    from aiida_alkit.workflows.provenance import called_processes, round_from_link_label

    points: list[dict[str, Any]] = []
    for link_label, label in called_processes(node, link_label_filter='label_round_%'):
        if 'labelled' not in label.outputs:
            continue
        number = round_from_link_label(link_label)
        arrays = label.outputs.labelled.arrays
        uuids = [str(value) for value in arrays.info.get('structure_uuid', [])]
        if not uuids or arrays.energy is None:
            continue
        query = orm.QueryBuilder().append(orm.StructureData, filters={'uuid': {'in': uuids}}, project=['uuid', '*'])
        structures = dict(query.all())
        by_selection: dict[int, tuple[Any, list[tuple[int, int, Any]]]] = {}
        for index, uuid in enumerate(uuids):
            structure = structures.get(uuid)
            creator = structure.creator if structure is not None else None
            row = structure.base.attributes.get('alkit_pool_index', None) if structure is not None else None
            if creator is None or creator.process_label != 'select_candidates' or row is None:
                continue
            by_selection.setdefault(creator.pk, (creator, []))[1].append((index, int(row), structure))
        for creator, picks in by_selection.values():
            points.extend(_selection_calibration(number, creator, picks, arrays))
    return points


def _selection_calibration(number, creator, picks, labelled) -> list[dict[str, Any]]:
    """Calibration points of the picks of one select step (see :func:`calibration_points`)."""
    incoming = {link.link_label: link.node for link in creator.base.links.get_incoming().all()}
    pool, scores = incoming.get('pool'), incoming.get('scores')
    if pool is None:
        return []
    names = scores.get_arraynames() if scores is not None else []
    score_arrays = {'calibrated': 'calibrated_uncertainty', 'committee': 'max_force_deviation'}
    force_kind = next((kind for kind in FORCE_CALIBRATION_KINDS if score_arrays[kind] in names), None)
    explore = scores.creator if scores is not None else None
    if force_kind is not None and explore is not None and 'potential' in explore.inputs:
        array = scores.get_array(score_arrays[force_kind])
        errors = _max_force_errors(explore.inputs.potential, labelled.subset([index for index, _, _ in picks]))
        return [
            {'round': number, 'kind': force_kind, 'uncertainty': float(array[row]), 'error': float(error)}
            for (_, row, _), error in zip(picks, errors, strict=True)
        ]
    info = pool.arrays.info
    if 'model_energy' not in info:
        return []
    points = []
    for index, row, structure in picks:
        model_energy = float(info['model_energy'][row])
        u_energy = float(info['u_energy'][row]) if 'u_energy' in info else float('nan')
        kind = 'u_energy' if math.isfinite(u_energy) and u_energy > 0 else 'score'
        uncertainty = u_energy if kind == 'u_energy' else structure.base.attributes.get('alkit_score', None)
        if uncertainty is None or not math.isfinite(model_energy):
            continue
        error = abs(model_energy - float(labelled.energy[index]))
        points.append({'round': number, 'kind': kind, 'uncertainty': float(uncertainty), 'error': error})
    return points


def _max_force_errors(potential, arrays) -> np.ndarray:
    """Largest per-atom force RMSE (eV/Å) of ``potential`` on every labelled configuration of ``arrays``."""
    import tempfile

    from aiida_alkit.jobs.explore import load_model, potential_forces
    from aiida_alkit.uncertainty.conformal import max_atomic_force_rmse

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / 'potential.pt'
        potential.export(path)
        model = load_model(path, 'cpu')
    return max_atomic_force_rmse(potential_forces(model, arrays), arrays.forces, arrays.sizes)


def write_plot(rows: list[dict[str, Any]], path: str, calibration: list[dict[str, Any]]) -> int:
    """Write the campaign figure to ``path`` (PNG); returns the number of panels (2, or 3 with calibration data)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is optional: only --plot needs it
        raise click.ClickException('--plot needs matplotlib; install it with `pip install matplotlib`') from exc

    panels = 3 if calibration else 2
    figure = Figure(figsize=(5.0 * panels, 4.0), layout='constrained')
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels)

    # learning curve
    ax = axes[0]
    points = [
        (size, _force_rmse_mev(row), row.get('round'))
        for row, size in zip(rows, _trained_on(rows), strict=True)
        if size is not None and _force_rmse_mev(row) is not None
    ]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], 'o-', label='validation')
        for size, rmse, number in points:
            ax.annotate(str(number), (size, rmse), textcoords='offset points', xytext=(4, 4), fontsize=8)
    test = [
        (size, 1e3 * row['test_forces_rmse'])
        for row, size in zip(rows, _trained_on(rows), strict=True)
        if size is not None and row.get('test_forces_rmse') is not None
    ]
    if test:
        ax.plot([p[0] for p in test], [p[1] for p in test], 's--', label='test')
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel('training-set size')
    ax.set_ylabel('force RMSE (meV/Å)')
    ax.set_title('learning curve (labels: round)')
    if points or test:
        ax.legend()

    # stacked counts per round
    ax = axes[1]
    numbers = [row.get('round') for row in rows]
    stacks = [
        ('reliable', [row.get('n_accurate') or 0 for row in rows]),
        ('labelled', [row.get('labelled') or 0 for row in rows]),
        ('failed labels', [row.get('failed_labels') or 0 for row in rows]),
        (
            'not labelled',
            [
                max(0, (row.get('selected') or 0) - (row.get('labelled') or 0) - (row.get('failed_labels') or 0))
                for row in rows
            ],
        ),
        (
            'candidates left',
            [max(0, (row.get('n_candidate') or 0) - (row.get('selected') or 0)) for row in rows],
        ),
        ('discarded (window)', [row.get('n_failed') or 0 for row in rows]),
    ]
    bottom = [0] * len(rows)
    for name, values in stacks:
        if any(values):
            ax.bar(numbers, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel('round')
    ax.set_ylabel('explored candidates')
    ax.set_xticks(numbers)
    ax.set_title('candidates per round')
    if any(bottom):
        ax.legend(fontsize=8)

    # calibration
    if calibration:
        ax = axes[2]
        kinds = {p['kind'] for p in calibration}
        for number in sorted({p['round'] for p in calibration}, key=lambda n: (n is None, n)):
            chosen = [p for p in calibration if p['round'] == number]
            ax.scatter([p['uncertainty'] for p in chosen], [p['error'] for p in chosen], label=f'round {number}', s=16)
        on_diagonal = kinds <= set(FORCE_CALIBRATION_KINDS) or kinds == {'u_energy'}
        if on_diagonal:
            values = [p['uncertainty'] for p in calibration] + [p['error'] for p in calibration]
            low, high = min(values), max(values)
            ax.plot([low, high], [low, high], 'k:', lw=1)
        if kinds == {'calibrated'}:
            ax.set_xlabel('calibrated max atom uncertainty (eV/Å)')
        elif kinds <= set(FORCE_CALIBRATION_KINDS):
            ax.set_xlabel('max atom force uncertainty (eV/Å)')
        elif kinds == {'u_energy'}:
            ax.set_xlabel('predicted energy uncertainty (eV)')
        else:
            ax.set_xlabel('selection score')
        if all(p['uncertainty'] > 0 and p['error'] > 0 for p in calibration):
            from matplotlib.ticker import NullFormatter

            ax.set_xscale('log')
            ax.set_yscale('log')
            for axis in (ax.xaxis, ax.yaxis):  # unlabelled minor ticks: a narrow decade would overprint them
                axis.set_minor_formatter(NullFormatter())
        if kinds <= set(FORCE_CALIBRATION_KINDS):
            ax.set_ylabel('max atom force error of the model (eV/Å)')
        else:
            ax.set_ylabel('|model − label| energy (eV)')
        ax.set_title('calibration of the picks')
        ax.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return panels


# ---------------------------------------------------------------------------------------------- commands
@main.group('campaign')
def campaign_group() -> None:
    """Active-learning campaigns (ActiveLearningWorkChain nodes)."""


@campaign_group.command('status')
@click.argument('node', metavar='IDENTIFIER', type=CAMPAIGN)
@click.option(
    '--source',
    type=click.Choice(['auto', 'report', 'graph']),
    default='auto',
    show_default=True,
    help='Read the rows from the report output or from the called processes (auto: report when finished).',
)
@click.option(
    '--stuck-after',
    type=click.FloatRange(min=0),
    default=STUCK_AFTER_S,
    show_default=True,
    help='Seconds after which a work chain or job still waiting for a daemon worker (Created) is reported stuck, '
    'and a job still queued by its scheduler is reported pending.',
)
def status_command(node, source: str, stuck_after: float) -> None:
    """State, stop reason and per-round numbers of campaign IDENTIFIER (pk, uuid or label), running or finished;
    for an active campaign, whether the daemon runs and which of its processes no worker has picked up."""
    rows, used = campaign_rows(node, source)
    click.echo(f'ActiveLearningWorkChain<{node.pk}>  strategy {_strategy(node)}')
    click.echo(f'state        {_state(node)}')
    click.echo(f'stop reason  {_stop_reason(node)}')
    if not node.is_terminated:
        _echo_waiting(node, stuck_after)
    initial = _initial_labels(node)
    if initial is not None:
        click.echo(f'initial      {initial}')
    click.echo(f'rows from    {used}')
    click.echo('')
    if rows:
        click.echo(status_table(rows))
    else:
        click.echo('no round started yet')


def _echo_waiting(node, stuck_after: float) -> None:
    """Daemon state and the stuck processes of an active campaign (nothing is flagged while the daemon is stopped:
    then every submitted process waits, as it should)."""
    from aiida.engine.daemon.client import get_daemon_client

    if not get_daemon_client().is_daemon_running:
        click.echo('daemon       not running: the campaign goes on after `verdi daemon start`')
        return
    pending = pending_jobs(node, after_s=stuck_after)
    if pending:
        listed = ', '.join(
            f'{job.process_label}<{job.pk}> ({job.state}{f" ({job.reason})" if job.reason else ""}, '
            f'{job.waited_s / 60:.0f} min)'
            for job in pending
        )
        click.echo(f'pending      {len(pending)} queued by the scheduler longer than {stuck_after:g} s: {listed}')
    stuck = stuck_processes(node, after_s=stuck_after)
    if not stuck:
        return
    listed = ', '.join(f'{p.process_label}<{p.pk}> ({p.waited_s / 60:.0f} min)' for p in stuck)
    click.echo(f'stuck        {len(stuck)} waiting for a daemon worker longer than {stuck_after:g} s: {listed}')
    click.echo(
        '             unless every worker slot is busy (`verdi daemon status`), the broker lost their tasks: '
        f'`alkit campaign repair {node.pk}` recreates them (finished work is kept)'
    )


@campaign_group.command('repair')
@click.argument('node', metavar='IDENTIFIER', type=CAMPAIGN)
@click.option('--timeout', type=click.IntRange(min=1), default=120, show_default=True, help='Seconds for the daemon.')
def repair_command(node, timeout: int) -> None:
    """Recreate the lost broker tasks of campaign IDENTIFIER's processes (and of any other active process of the
    profile) as `verdi process repair` does: stop the daemon if it runs, recreate the tasks, start the daemon again
    with as many workers. Interrupted calcfunctions are left alone: their work chains run them again.

    Finished labels, models and datasets are kept; a revived process continues from its last checkpoint.
    """
    if node.is_terminated:
        click.echo(f'ActiveLearningWorkChain<{node.pk}> is {_state(node)}: nothing to repair')
        return
    mine = {node.pk, *(process.pk for process in node.called_descendants)}
    try:
        report = repair_lost_tasks(timeout_s=timeout)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    if report.daemon_was_running:
        click.echo(f'daemon stopped and started again ({report.workers} worker{"s" * (report.workers != 1)})')
    else:
        click.echo('the daemon was not running: start it with `verdi daemon start` for the campaign to go on')
    if not report.revived:
        click.echo('every active process had its task: nothing was lost')
    else:
        own = [pk for pk in report.revived if pk in mine]
        click.echo(f'revived {len(report.revived)} process(es) without a task, {len(own)} of this campaign: {own}')
    if report.still_missing:
        raise click.ClickException(f'still without a task after the repair: {report.still_missing}')


@campaign_group.command('report')
@click.argument('node', metavar='IDENTIFIER', type=CAMPAIGN)
@click.option('--plot', 'plot', type=click.Path(dir_okay=False), default=None, help='Write a PNG figure here.')
@click.option(
    '--source', type=click.Choice(['auto', 'report', 'graph']), default='auto', show_default=True, help='As for status.'
)
def report_command(node, plot: str | None, source: str) -> None:
    """Seed-000 Table 2 of campaign IDENTIFIER: round, temperature, steps, maximum, reliable/selected/discarded.

    Reliable = accurate candidates (n_accurate); Selected = picks sent to labelling; Discarded = candidates above the
    trust window (n_failed) plus failed labels. With --plot: learning curve, counts per round and (when the data
    exist) a calibration plot, as one PNG.
    """
    rows, _ = campaign_rows(node, source)
    click.echo(f'Exploration by MD, ActiveLearningWorkChain<{node.pk}>, strategy {_strategy(node)}')
    click.echo(report_table(rows, _batch_size(node)))
    click.echo(MAPPING_NOTE)
    click.echo(f'stop reason: {_stop_reason(node)}')
    if plot:
        panels = write_plot(rows, plot, calibration_points(node))
        click.echo(f'Wrote {plot} ({panels} panels)')
