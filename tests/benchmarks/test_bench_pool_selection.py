"""Smoke test of ``benchmarks/bench_pool_selection.py --quick``: every method runs, the output is well formed."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

from tests.benchmarks import load_benchmark

pytestmark = pytest.mark.benchmark

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_pool_selection.py'
METHODS = ('random', 'maxdiag_gp', 'maxdet_gp', 'maxdist_feat', 'lcmd_feat', 'qbc_maxdiag')
SUMMARY_KEYS = (
    'target_force_rmse_mev_per_ang',
    'labels_to_target',
    'labels_ratio_vs_random',
    'pool_labels_ratio_best_vs_random',
    'best_diverse_method',
    'diverse_need_fewer_labels_than_maxdiag',
    'rmse_ratio_vs_random_at_final_labels',
    'rmse_ratio_vs_random_at_mid_labels',
    'wall_s',
    'settings',
)


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_markdown_tables_give_seed_means_and_deviations():
    """The docs' tables from round lines: mean ± (population) std over the seeds, '–' where a method lacks a count,
    the conditions of the picked labels, and with the summary line the labels to target and the ratios."""
    bench = load_benchmark('bench_pool_selection')

    def record(method, seed, labels, force, worst, melt_labels=0):
        per_condition = {'bulk_300K': force / 2, 'melt_2000K': worst}
        return {'method': method, 'seed': seed, 'labels': labels, 'force_rmse_mev_per_ang': force,
                'force_rmse_max_over_conditions_mev_per_ang': worst, 'energy_rmse_mev_per_atom': 1.0,
                'energy_rmse_max_over_conditions_mev_per_atom': 2.0, 'train_cpu_s': 1.0,
                'force_rmse_per_condition_mev_per_ang': per_condition,
                'labelled_per_condition': {'bulk_300K': labels - melt_labels, 'melt_2000K': melt_labels}}  # fmt: skip

    records = [
        record('random', 0, 20, 30.0, 60.0), record('random', 1, 20, 34.0, 64.0),
        record('random', 0, 40, 20.0, 40.0, 5), record('random', 1, 40, 22.0, 48.0, 5),
        record('lcmd_feat', 0, 20, 30.0, 60.0), record('lcmd_feat', 1, 20, 34.0, 64.0),
        record('lcmd_feat', 0, 40, 18.0, 30.0, 15), record('lcmd_feat', 1, 40, 20.0, 34.0, 20),
        record('maxdet_gp', 0, 20, 30.0, 60.0), record('maxdet_gp', 1, 20, 34.0, 64.0),
    ]  # fmt: skip
    text = bench.markdown_tables(records)
    overall, worst = text.split('Worst condition')[0], text.split('Worst condition')[1].split('Per condition')[0]
    assert '| random | 32.0 ± 2.0 | 21.0 ± 1.0 |' in overall
    assert '| LCMD + FEAT | 32.0 ± 2.0 | 19.0 ± 1.0 |' in overall
    assert '| MaxDet + GP | 32.0 ± 2.0 | – |' in overall
    assert '| random | 62.0 ± 2.0 | 44.0 ± 4.0 |' in worst
    assert 'Per condition at 40 labels' in text
    assert '| random | 10.5 | 44.0 |' in text  # bulk: (20 + 22) / 4, melt: the worst values' mean
    assert '| random | 75 % | 25 % |' in text and '| LCMD + FEAT | 12 % | 88 % |' in text  # (5 + 0) / 40, 35 / 40
    assert 'Labels to' not in text  # no summary line given

    settings = bench.dataclasses.replace(bench.Settings(), n_initial=20, batch_size=20, max_labels=40)
    summary = bench.summarise(records, settings)
    text = bench.markdown_tables(records, summary)
    # random's final mean 21.0; LCMD's mean curve 32 -> 19 crosses it at 20 + 20 * 11 / 13 = 36.9 labels; its seed
    # 0 (30 -> 18) at 20 + 20 * 9 / 12 = 35, seed 1 (34 -> 20) at 20 + 20 * 13 / 14 = 38.6; random's seed 0 at 38,
    # its seed 1 never
    assert "Labels to random's final overall error (21.0 meV/Å" in text
    assert '| random | 40 | 1.00 | 38 | – |' in text
    assert '| LCMD + FEAT | 37 | 0.92 | 35 | 39 |' in text
    assert '| MaxDet + GP | – | – | – | – |' in text
    assert '| LCMD + FEAT | 0.90 | 0.73 | 0.90 | 0.73 |' in text  # 19 / 21, 32 / 44 (two rounds: mid = final)


@pytest.mark.campaign
def test_quick_mode_runs_every_method(tmp_path):
    plot = tmp_path / 'curves.png'
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), '--quick', '--cache', str(tmp_path / 'cache'), '--plot', str(plot)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith('{')]
    summaries = [line for line in lines if line.get('summary')]
    records = [line for line in lines if not line.get('summary')]
    assert len(summaries) == 1
    summary = summaries[0]

    assert {record['method'] for record in records} == set(METHODS)
    counts = summary['settings']['label_counts']
    for method in METHODS:
        assert sorted(r['labels'] for r in records if r['method'] == method) == counts
    conditions = {condition['name'] for condition in summary['settings']['conditions']}
    for record in records:
        assert record['benchmark'] == 'pool_selection'
        for key in (
            'force_rmse_mev_per_ang',
            'energy_rmse_mev_per_atom',
            'force_rmse_max_over_conditions_mev_per_ang',
            'energy_rmse_max_over_conditions_mev_per_atom',
        ):
            assert _positive(record[key]), (key, record)
        per_condition = record['force_rmse_per_condition_mev_per_ang']
        assert set(per_condition) == conditions
        assert all(_positive(value) for value in per_condition.values())
        assert all(_positive(value) for value in record['energy_rmse_per_condition_mev_per_atom'].values())
        assert record['force_rmse_max_over_conditions_mev_per_ang'] == max(per_condition.values())
        assert record['force_rmse_max_over_conditions_mev_per_ang'] >= record['force_rmse_mev_per_ang']

    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary['quick'] is True
    assert set(summary['labels_to_target']) == set(METHODS)
    assert summary['labels_to_target']['random'] == counts[-1]
    assert summary['labels_ratio_vs_random']['random'] == 1.0
    assert isinstance(summary['diverse_need_fewer_labels_than_maxdiag'], bool)
    ratio = summary['pool_labels_ratio_best_vs_random']
    assert ratio is None or _positive(ratio)
    assert _positive(summary['target_force_rmse_mev_per_ang'])
    final = summary['rmse_ratio_vs_random_at_final_labels']
    assert set(final) == {'labels', *METHODS} - {'random'}
    assert all(_positive(value) for method in METHODS[1:] for value in final[method].values())
    assert plot.stat().st_size > 0

    # an interrupted run goes on from its finished rounds: keep every campaign but one, and that one's first round
    cut = [r for r in records if r['method'] != 'maxdet_gp' or r['round'] == 0]
    partial = tmp_path / 'partial.jsonl'
    partial.write_text(''.join(json.dumps(record) + '\n' for record in cut))
    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), '--quick', '--cache', str(tmp_path / 'cache'), '--plot', str(plot),
         '--resume', str(partial)],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    new = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith('{')]
    again = [line for line in new if not line.get('summary')]
    assert {(r['method'], r['round']) for r in again} == {('maxdet_gp', k) for k in range(1, len(counts))}
    original = {r['round']: r for r in records if r['method'] == 'maxdet_gp'}
    for record in again:  # the same labels and (single-threaded CPU training) the same errors as the full run
        before = original[record['round']]
        assert record['train_indices'] == before['train_indices']
        assert record['force_rmse_mev_per_ang'] == pytest.approx(before['force_rmse_mev_per_ang'], rel=1e-3)
    second = next(line for line in new if line.get('summary'))
    assert second['resumed_rounds'] == len(cut)
    for method, labels in summary['labels_to_target'].items():
        assert (second['labels_to_target'][method] is None) == (labels is None), method
        assert labels is None or second['labels_to_target'][method] == pytest.approx(labels, rel=1e-3)

    # --summary-only runs nothing: the summary of the seeds whose campaigns all finished, or a clear refusal
    full = tmp_path / 'full.jsonl'
    full.write_text(completed.stdout)
    command = [sys.executable, str(SCRIPT), '--quick', '--cache', str(tmp_path / 'cache'), '--plot', str(plot)]
    tables = tmp_path / 'tables.md'
    only = subprocess.run([*command, '--resume', str(full), '--summary-only', '--tables', str(tables)],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert only.returncode == 0, only.stderr[-4000:]
    (line,) = [json.loads(text) for text in only.stdout.splitlines() if text.startswith('{')]
    assert line['summary'] and line['summary_only'] and line['seeds'] == [0]
    assert line['labels_to_target'] == summary['labels_to_target']
    text = tables.read_text()
    random_final = next(r for r in records if r['method'] == 'random' and r['labels'] == counts[-1])
    random_row = next(row for row in text.split('Worst')[0].splitlines() if row.startswith('| random |'))
    assert random_row.endswith(f'| {random_final["force_rmse_mev_per_ang"]:.1f} ± 0.0 |')  # the final count last
    assert text.count('| LCMD + FEAT |') == 6  # overall, worst, per condition, picks, labels to target, ratios
    assert f'| method | {" | ".join(map(str, counts))} |' in text  # the quick run's counts: all columns
    refused = subprocess.run([*command, '--resume', str(partial), '--summary-only'], capture_output=True, text=True,
                             timeout=600, check=False)  # fmt: skip
    assert refused.returncode != 0 and 'no seed of [0] has every campaign finished' in refused.stderr

    # --model mace does not go on from GM-NN lines (refused before any training: about a second)
    other = subprocess.run([*command, '--model', 'mace', '--resume', str(full)], capture_output=True, text=True,
                           timeout=600, check=False)  # fmt: skip
    assert other.returncode != 0 and 'written with another --model' in other.stderr
