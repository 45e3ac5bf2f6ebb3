"""Smoke test of ``benchmarks/bench_data_efficiency.py --quick``: every default variant runs a real campaign on the
script's own throw-away profile, and the output (JSON lines, plots) is well formed."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.benchmark

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_data_efficiency.py'
VARIANTS = ('gradient', 'gradient_unbiased', 'random_same_exploration', 'dpgen')
CONDITIONS = (
    'bulk_300K',
    'bulk_900K',
    'bulk_1200K',
    'melt_1800K',
    'vacancy_600K',
    'slab111_600K',
    'compressed_4pct_600K',
    'expanded_4pct_600K',
)
#: summary keys that must hold a number even in the quick mode
DEFINED_KEYS = (
    'worst_condition_rmse_ratio_gradient_vs_random',
    'worst_condition_rmse_ratio_gradient_vs_unbiased',
    'worst_condition_rmse_ratio_gradient_vs_dpgen',
    'coverage_biased',
    'coverage_unbiased',
    'total_s',
    'wall_time_h',
)
#: labels to the target: null when neither curve reaches it, as two tiny rounds usually do not (the kind says so)
MAYBE_NULL_KEYS = (
    'labels_ratio_gradient_vs_dpgen',
    'labels_ratio_gradient_vs_random',
    'labels_ratio_gradient_vs_unbiased',
)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.campaign
def test_quick_mode_runs_every_variant(tmp_path):
    plot = tmp_path / 'curves.png'
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), '--quick', '--plot', str(plot)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith('{')]
    by_kind: dict[str, list[dict]] = {}
    for line in lines:
        by_kind.setdefault(line['benchmark'], []).append(line)
    records = {record['strategy']: record for record in by_kind['data_efficiency']}
    (summary,) = by_kind['data_efficiency_summary']
    (test_set,) = by_kind['data_efficiency_test_set']

    assert set(records) == set(VARIANTS)
    assert set(test_set['conditions']) == set(CONDITIONS)
    for record in records.values():
        assert set(record['test']) == {*CONDITIONS, 'worst', 'all'}
        rounds = len(record['labels']['mean'])
        assert 1 <= rounds <= 2
        for curves in record['test'].values():
            for quantity in ('force_rmse_mev_per_ang', 'energy_rmse_mev_per_atom'):
                values = curves[quantity]['mean']
                assert len(values) == rounds
                assert all(_positive(value) for value in values), (record['strategy'], quantity, values)
        worst = record['test']['worst']['force_rmse_mev_per_ang']['mean']
        for index, value in enumerate(worst):
            assert value == max(record['test'][c]['force_rmse_mev_per_ang']['mean'][index] for c in CONDITIONS)
        assert 0 <= record['coverage']['mean'] <= 1

    for key in DEFINED_KEYS:
        assert _positive(summary[key]), (key, summary[key])
    for key in MAYBE_NULL_KEYS:
        assert key in summary
        if summary[key] is None:
            assert summary[f'{key}_kind'] == 'undefined'
        else:
            assert _positive(summary[key])
    assert summary['coverage_ratio_biased_vs_unbiased'] == pytest.approx(
        summary['coverage_biased'] / summary['coverage_unbiased'], rel=2e-2
    )
    assert summary['failed_campaigns'] == {}
    assert plot.is_file() and plot.stat().st_size > 0
    assert (tmp_path / 'curves_coverage.png').is_file()

    # every finished campaign is printed at once; a resumed run keeps them and runs none again
    campaigns = by_kind['data_efficiency_campaign']
    assert {(line['variant'], line['seed']) for line in campaigns} == {(name, 0) for name in VARIANTS}
    previous = tmp_path / 'previous.jsonl'
    previous.write_text(completed.stdout)
    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), '--quick', '--plot', str(plot), '--resume', str(previous)],
        capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    again = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith('{')]
    assert not [line for line in again if line['benchmark'] == 'data_efficiency_campaign']
    for line in again:
        if line['benchmark'] == 'data_efficiency':
            before = records[line['strategy']]
            assert line['test'] == before['test'] and line['coverage']['mean'] == before['coverage']['mean']


RESULTS = SCRIPT.parent / 'results' / 'data_efficiency_campaign_2026-11-27.jsonl'


def test_summary_only_summarises_the_finished_campaigns_of_a_full_run(tmp_path):
    """``--summary-only --resume``: no campaign runs; the committed full run's finished campaigns (seed 0 of
    gradient and gradient_unbiased at least) are summarised on the seeds where every asked variant finished, and a
    request no seed satisfies is refused."""
    command = [
        sys.executable,
        str(SCRIPT),
        '--summary-only',
        '--resume',
        str(RESULTS),
        '--plot',
        str(tmp_path / 'c.png'),
    ]
    done = subprocess.run(
        [*command, '--variants', 'gradient,gradient_unbiased', '--seeds', '0', '1', '2'],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]
    summary = lines[-1]
    assert summary['benchmark'] == 'data_efficiency_summary' and summary['summary_only']
    assert 0 in summary['seeds'] and summary['variants'] == ['gradient', 'gradient_unbiased']
    campaigns = {}
    for text in RESULTS.read_text().splitlines():
        if text.startswith('{') and json.loads(text).get('benchmark') == 'data_efficiency_campaign':
            line = json.loads(text)
            campaigns[(line['variant'], line['seed'])] = line
    # the summary's final worst-condition RMSE is the seed mean of the campaigns' last points
    for name in ('gradient', 'gradient_unbiased'):
        finals = [campaigns[(name, seed)]['curves']['worst']['force'][-1] for seed in summary['seeds']]
        assert summary['worst_condition_force_rmse_final_mev_per_ang'][name] == pytest.approx(
            sum(finals) / len(finals), rel=1e-3
        )
    assert summary['worst_condition_rmse_ratio_gradient_vs_unbiased'] > 0
    assert (tmp_path / 'c.png').stat().st_size > 0 and (tmp_path / 'c_coverage.png').stat().st_size > 0
    refused = subprocess.run(
        [*command, '--variants', 'gradient', '--seeds', '7'], capture_output=True, text=True, check=False, timeout=600
    )
    assert refused.returncode != 0 and 'no seed of [7]' in refused.stderr
