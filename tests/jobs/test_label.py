"""The ASE label job: labels what it can, records every failure with its reason, never stops early."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.jobs import label


def _copper_set(compress_index: int | None = None) -> ConfigurationArrays:
    structures = []
    for seed in range(4):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        if seed == compress_index:
            atoms.positions[1] = atoms.positions[0] + [0.9, 0.0, 0.0]  # 0.9 Å apart: huge EMT force
        structures.append(atoms)
    return ConfigurationArrays.from_atoms(structures)


def test_labels_match_emt():
    arrays = _copper_set()
    labelled, failures = label.label_configurations(arrays, EMT())
    assert failures == []
    assert labelled.labels == ('energy', 'forces', 'stress')
    reference = arrays.get_atoms(2)
    reference.calc = EMT()
    assert labelled.energy[2] == pytest.approx(reference.get_potential_energy())
    np.testing.assert_allclose(labelled.get_atoms(2).get_forces(), reference.get_forces())
    np.testing.assert_array_equal(labelled.info['source_index'], [0, 1, 2, 3])


def test_unphysical_force_is_a_recorded_failure():
    labelled, failures = label.label_configurations(_copper_set(compress_index=1), EMT(), max_force=20.0)
    assert [f['index'] for f in failures] == [1]
    assert 'exceeds 20.0 eV/Å' in failures[0]['reason']
    assert list(labelled.info['source_index']) == [0, 2, 3]


class _FailsOnSecondCall:
    """A calculator that raises for one configuration: stands in for a code crash we cannot trigger with EMT."""

    def __init__(self):
        self.inner = EMT()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_potential_energy(self, atoms=None, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError('SCF did not converge')
        return self.inner.get_potential_energy(atoms)


def test_calculator_error_fails_one_configuration_only():
    labelled, failures = label.label_configurations(_copper_set(), _FailsOnSecondCall())
    assert failures == [{'index': 1, 'reason': 'calculator error: RuntimeError: SCF did not converge'}]
    assert len(labelled) == 3


@pytest.mark.faults
def test_only_allowed_calculators():
    with pytest.raises(ValueError, match='not allowed'):
        label.load_calculator('os.system', {})
    assert isinstance(label.load_calculator('ase.calculators.emt.EMT', {}), EMT)


def test_main_writes_results(tmp_path):
    _copper_set(compress_index=3).save(tmp_path / label.INPUT_FILE)
    (tmp_path / 'parameters.json').write_text(json.dumps({'calculator': 'ase.calculators.emt.EMT'}))
    assert label.main([str(tmp_path)]) == 0
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['status'] == 'partial'
    assert results['n_labelled'] == 3
    assert len(ConfigurationArrays.load(tmp_path / label.OUTPUT_FILE)) == 3


def test_main_records_a_crash(tmp_path):
    (tmp_path / 'parameters.json').write_text(json.dumps({'calculator': 'ase.calculators.emt.EMT'}))
    assert label.main([str(tmp_path)]) == 1  # no configurations.npz
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['status'] == 'failed'
    assert 'configurations.npz' in results['error']
