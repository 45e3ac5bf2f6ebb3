"""The package is an installed AiiDA plugin: entry points resolve and `verdi plugin list` shows them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
from aiida.plugins import DataFactory


@pytest.mark.parametrize(
    ('entry_point', 'class_name'), [('alkit.dataset', 'DatasetData'), ('alkit.potential', 'PotentialData')]
)
def test_data_entry_points(entry_point, class_name):
    assert DataFactory(entry_point).__name__ == class_name


@pytest.mark.parametrize(
    ('entry_point', 'name'),
    [
        ('alkit.train', 'TrainCalculation'),
        ('alkit.explore', 'ExploreCalculation'),
        ('alkit.label.ase', 'AseLabelCalculation'),
        ('alkit.select', 'select_candidates'),
        ('alkit.merge', 'merge_datasets'),
    ],
)
def test_calculation_entry_points(entry_point, name):
    from aiida.plugins import CalculationFactory

    assert CalculationFactory(entry_point).__name__ == name


def test_verdi_plugin_list_shows_data_types():
    verdi = str(pathlib.Path(sys.executable).parent / 'verdi')
    out = subprocess.run([verdi, 'plugin', 'list', 'aiida.data'], capture_output=True, text=True, check=True).stdout
    assert 'alkit.dataset' in out
    assert 'alkit.potential' in out
