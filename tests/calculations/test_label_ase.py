"""`alkit.label.ase` run for real on localhost: outputs, recorded failures, exit codes, input validation."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory
from ase.build import bulk

from aiida_alkit.data import DatasetData

AseLabelCalculation = CalculationFactory('alkit.label.ase')


def _dataset(n: int, broken: tuple[int, ...] = ()) -> DatasetData:
    structures = []
    for seed in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=seed)
        if seed in broken:
            atoms.positions[1] = atoms.positions[0] + [0.9, 0.0, 0.0]
        structures.append(atoms)
    return DatasetData.from_atoms(structures).store()


def _run(code, dataset, **inputs):
    builder = AseLabelCalculation.get_builder()
    builder.code = code
    builder.configurations = dataset
    builder.calculator = orm.Str(inputs.pop('calculator', 'ase.calculators.emt.EMT'))
    for key, value in inputs.items():
        setattr(builder, key, value)
    builder.metadata.options.max_wallclock_seconds = 600
    return run_get_node(builder)


def test_labels_and_records_failures(alkit_python_code):
    dataset = _dataset(4, broken=(2,))
    results, node = _run(alkit_python_code, dataset)
    assert node.exit_status == 0, node.exit_message
    labelled = results['labelled']
    assert len(labelled) == 3
    assert labelled.labels == ['energy', 'forces', 'stress']
    failures = results['failures'].get_dict()
    assert failures['n_failed'] == 1
    assert failures['failures'][0]['index'] == 2
    assert 'eV/Å' in failures['failures'][0]['reason']
    # provenance: the labelled set was created by this calculation from this dataset
    assert labelled.creator.pk == node.pk
    assert node.inputs.configurations.uuid == dataset.uuid


def test_every_label_failed(alkit_python_code):
    results, node = _run(alkit_python_code, _dataset(2, broken=(0, 1)))
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_ALL_LABELS_FAILED.status
    assert '2 failures' in node.exit_message
    assert results['failures']['n_failed'] == 2  # the failure record is kept in the graph


@pytest.mark.faults
def test_disallowed_calculator_is_refused(alkit_python_code):
    with pytest.raises(ValueError, match='not allowed'):
        _run(alkit_python_code, _dataset(1), calculator='subprocess.Popen')


def test_bad_max_force_is_refused(alkit_python_code):
    with pytest.raises(ValueError, match='max_force must be a positive'):
        _run(alkit_python_code, _dataset(1), max_force=orm.Float(-1.0))
