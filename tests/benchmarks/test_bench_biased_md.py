"""Smoke test of ``benchmarks/bench_biased_md.py --quick`` for each bias it times: one JSON line with the ratio and
its parts, the ratio being the quotient of the times it prints."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.benchmark

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_biased_md.py'


@pytest.mark.parametrize('bias', ['committee', 'gradient', 'hal'])
def test_quick_mode_times_the_bias(bias):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), '--quick', '--bias', bias, '--threads', '1'],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    (line,) = [json.loads(text) for text in completed.stdout.splitlines() if text.startswith('{')]
    assert line['bias'] == bias
    assert line['members'] == (2 if bias == 'committee' else 1)
    assert line['unbiased_s_per_step'] > 0 and line['biased_s_per_step'] > 0
    assert line['biased_over_unbiased'] == pytest.approx(
        line['biased_s_per_step'] / line['unbiased_s_per_step'], rel=1e-2
    )
    # the biased evaluation does more work than the unbiased one: more operator calls
    assert line['ops_per_md_step'] > line['unbiased_ops_per_md_step'] > 0
