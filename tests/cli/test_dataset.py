"""`alkit dataset import/export/show` on the test profile."""

from __future__ import annotations

from click.testing import CliRunner

from aiida_alkit.cli import main
from aiida_alkit.io import read_configurations, write_configurations


def test_import_export_round_trip(aiida_profile, tmp_path, copper_structures):
    write_configurations(tmp_path / 'in.extxyz', copper_structures)
    runner = CliRunner()
    result = runner.invoke(main, ['dataset', 'import', str(tmp_path / 'in.extxyz')])
    assert result.exit_code == 0, result.output
    pk = result.output.split('<')[1].split('>')[0]
    assert '5 configurations' in result.output
    result = runner.invoke(main, ['dataset', 'export', pk, str(tmp_path / 'out.cfg')])
    assert result.exit_code == 0, result.output
    back = read_configurations(tmp_path / 'out.cfg')
    assert len(back) == 5
    assert abs(back[2].get_potential_energy() - copper_structures[2].get_potential_energy()) < 1e-9
    result = runner.invoke(main, ['dataset', 'show', pk])
    assert 'count          5' in result.output


def test_import_bad_file_names_the_problem(aiida_profile, tmp_path, copper_structures):
    copper_structures[1].positions[0] = copper_structures[1].positions[1]  # overlapping atoms
    write_configurations(tmp_path / 'bad.extxyz', copper_structures)
    result = CliRunner().invoke(main, ['dataset', 'import', str(tmp_path / 'bad.extxyz')])
    assert result.exit_code != 0
    assert 'configuration 1: atoms overlap' in result.output


def test_wrong_identifiers_are_named(aiida_profile, copper_structures):
    from aiida import orm

    from aiida_alkit.data import DatasetData

    runner = CliRunner()
    integer = orm.Int(3).store()
    result = runner.invoke(main, ['dataset', 'show', str(integer.pk)])
    assert result.exit_code == 2  # click's usage error, not a traceback
    assert f"Invalid value for 'IDENTIFIER': node {integer.pk} is a Int, not a DatasetData" in result.output
    result = runner.invoke(main, ['dataset', 'export', '987654321', 'out.extxyz'])
    assert result.exit_code == 2
    assert 'no Node found with ID<987654321>' in result.output
    dataset = DatasetData.from_atoms(copper_structures[:2])
    dataset.label = 'two copper cells'
    dataset.store()
    for identifier in (dataset.uuid, 'two copper cells'):  # uuid and label as verdi takes them
        result = runner.invoke(main, ['dataset', 'show', identifier])
        assert result.exit_code == 0, result.output
        assert 'count          2' in result.output
