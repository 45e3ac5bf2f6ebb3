"""Smoke test of ``benchmarks/bench_data_efficiency.py --quick``: every default variant runs a real campaign on the
script's own throw-away profile, and the output (JSON lines, plots) is well formed."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

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
