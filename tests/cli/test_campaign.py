"""`alkit campaign status/report` on one tiny real campaign, plus the table and plot helpers on made-up rows."""

from __future__ import annotations

import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_alkit.cli import main
from aiida_alkit.cli.campaign import (
    REPORT_COLUMNS,
    STATUS_COLUMNS,
    calibration_points,
    discarded,
    report_table,
    status_table,
    write_plot,
)

from ..workflows.test_provenance import copper, module_python_code, run_tiny_campaign

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
ROWS = [
    {'round': 1, 'temperature_K': 500.0, 'steps': 30000, 'explored': 3000, 'n_accurate': 1710, 'n_candidate': 1289,
     'n_failed': 1, 'selected': 100, 'labelled': 99, 'failed_labels': 1, 'dataset_size': 599, 'trained_on': 500,
     'metrics': {'valid_forces_rmse_ev_per_ang': 0.1234}},
    {'round': 2, 'temperature_K': 800.0, 'steps': 30000, 'explored': 3000, 'n_accurate': 2422, 'n_candidate': 577,
     'n_failed': 1, 'selected': 100, 'labelled': 100, 'failed_labels': 0, 'dataset_size': 699,
     'metrics': {'valid_forces_rmse_ev_per_ang': 0.0567}, 'test_forces_rmse': 0.06},
]  # fmt: skip


def _table(output: str, first_header: str) -> list[list[str]]:
    """The rows of the table whose header starts with ``first_header``, split on runs of two or more spaces."""
    import re

    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or not line[0].isdigit():
            break
        rows.append(re.split(r'\s{2,}', line.strip()))
    return rows


def test_tables_on_made_up_rows():
    status = status_table(ROWS)
    header, rule, first, second = status.splitlines()
    assert header.split('  ')[0] == 'round' and set(rule) <= {'-', ' '}
    assert first.split()[:11] == ['1', '500', '30000', '3000', '1710/1289/1', '100', '99', '1', '500', '599', '123.4']
    assert second.split()[:11] == ['2', '800', '30000', '3000', '2422/577/1', '100', '100', '0', '599', '699', '56.7']
    assert discarded(ROWS[0]) == 2 and discarded(ROWS[1]) == 1 and discarded({'round': 3}) is None
    report = report_table(ROWS, 100).splitlines()
    assert report[0].split() == ['Round', 'Temperature', 'Steps', 'Maximum', 'Reliable', 'Selected', 'Discarded']
    assert report[2].split() == ['1', '500K', '30000', '100', '1710', '100', '2']
    partial = status_table([{'round': 3, 'temperature_K': 900.0}]).splitlines()[2].split()
    assert partial[:2] == ['3', '900'] and set(partial[2:]) == {'-'}
    assert len(STATUS_COLUMNS) == 12 and len(REPORT_COLUMNS) == 7


def test_plot_on_made_up_rows(tmp_path):
    assert write_plot(ROWS, str(tmp_path / 'two.png'), []) == 2
    calibration = [
        {'round': 1, 'uncertainty': 0.02, 'kind': 'u_energy', 'error': 0.03},
        {'round': 2, 'uncertainty': 0.01, 'kind': 'u_energy', 'error': 0.005},
    ]
    assert write_plot(ROWS, str(tmp_path / 'three.png'), calibration) == 3
    for name in ('two.png', 'three.png'):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / 'three.png').stat().st_size > (tmp_path / 'two.png').stat().st_size


def test_not_a_campaign(aiida_profile):
    node = orm.Int(3).store()
    result = CliRunner().invoke(main, ['campaign', 'status', str(node.pk)])
    assert result.exit_code != 0
    assert 'not an ActiveLearningWorkChain' in result.output
    result = CliRunner().invoke(main, ['campaign', 'report', '987654321'])
    assert result.exit_code == 2
    assert "Invalid value for 'IDENTIFIER': no Node found with ID<987654321>" in result.output


@pytest.fixture(scope='module')
def campaign(aiida_profile, tmp_path_factory):
    code = module_python_code(tmp_path_factory)
    return run_tiny_campaign(code, copper(4, labelled=True))


@pytest.mark.campaign
def test_status(campaign):
    result = CliRunner().invoke(main, ['campaign', 'status', str(campaign.pk)])
    assert result.exit_code == 0, result.output
    report = campaign.outputs.report.get_dict()
    assert f'ActiveLearningWorkChain<{campaign.pk}>' in result.output
    assert 'state        Finished [0]' in result.output
    assert f'stop reason  {report["stop_reason"]}' in result.output
    assert 'rows from    report' in result.output
    rows = _table(result.output, 'round')
    assert len(rows) == len(report['rounds']) == 2
    trained_on = 4
    for cells, row in zip(rows, report['rounds'], strict=True):
        expected = [
            str(row['round']),
            f'{row["temperature_K"]:.0f}',
            str(row['steps']),
            str(row['explored']),
            f'{row["n_accurate"]}/{row["n_candidate"]}/{row["n_failed"]}',
            str(row['selected']),
            str(row['labelled']),
            str(row['failed_labels']),
            str(trained_on),
            str(row['dataset_size']),
            f'{row["metrics"]["valid_forces_rmse_ev_per_ang"] * 1e3:.1f}',
            '-',  # no test set in this campaign
        ]
        assert cells == expected
        trained_on = row['dataset_size']
    graph = CliRunner().invoke(main, ['campaign', 'status', str(campaign.pk), '--source', 'graph'])
    assert graph.exit_code == 0, graph.output
    assert 'rows from    graph' in graph.output
    assert _table(graph.output, 'round') == rows


@pytest.mark.campaign
def test_report_and_plot(campaign, tmp_path):
    path = tmp_path / 'campaign.png'
    result = CliRunner().invoke(main, ['campaign', 'report', str(campaign.pk), '--plot', str(path)])
    assert result.exit_code == 0, result.output
    report = campaign.outputs.report.get_dict()
    rows = _table(result.output, 'Round')
    assert len(rows) == 2
    for cells, row in zip(rows, report['rounds'], strict=True):
        assert cells == [
            str(row['round']),
            f'{row["temperature_K"]:.0f}K',
            str(row['steps']),
            '2',  # select batch size of the tiny campaign
            str(row['n_accurate']),
            str(row['selected']),
            str(row['n_failed'] + row['failed_labels']),
        ]
    assert 'Discarded = candidates above the trust window (n_failed) + failed labels' in result.output
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes().startswith(PNG_MAGIC)
    labelled = sum(row['labelled'] for row in report['rounds'])
    points = calibration_points(campaign)
    assert len(points) == labelled  # every labelled pick has a calibrated score in its round
    # the gradient strategy scores candidates with the calibrated max atom uncertainty (eV/Å), plotted against the
    # max atom force error of the potential that explored them: both are force bounds on the diagonal's scale
    assert {point['kind'] for point in points} == {'calibrated'}
    assert all(point['uncertainty'] > 0 and 0 < point['error'] < 10 for point in points)
    assert f'Wrote {path} (3 panels)' in result.output
