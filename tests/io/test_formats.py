"""extxyz and MLIP-2 .cfg: round trips, the seed paper's example, and the PlusStress sign convention."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from aiida_alkit.io import CfgFormatError, read_cfg, read_configurations, write_cfg, write_configurations

DATA = pathlib.Path(__file__).parents[1] / 'data_files'


@pytest.mark.parametrize('suffix', ['extxyz', 'cfg'])
def test_round_trip(tmp_path, copper_structures, suffix):
    path = tmp_path / f'set.{suffix}'
    write_configurations(path, copper_structures)
    back = read_configurations(path)
    atol = 1e-9 if suffix == 'cfg' else 1e-6  # ASE's extxyz writer keeps 8 significant digits
    assert len(back) == len(copper_structures)
    for original, copy in zip(copper_structures, back, strict=True):
        assert copy.get_chemical_symbols() == original.get_chemical_symbols()
        np.testing.assert_allclose(copy.positions, original.positions, atol=atol)
        np.testing.assert_allclose(copy.cell[:], original.cell[:], atol=atol)
        assert copy.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=atol)
        np.testing.assert_allclose(copy.get_forces(), original.get_forces(), atol=atol)
        np.testing.assert_allclose(copy.get_stress(), original.get_stress(), atol=atol)


def test_seed_example_parses():
    (atoms,) = read_cfg(DATA / 'mlip2_example.cfg', species=['Al', 'Cu'])
    assert atoms.get_chemical_symbols() == ['Al', 'Al', 'Cu', 'Cu']
    np.testing.assert_allclose(atoms.cell.lengths(), [2.86, 5.71, 4.05])
    np.testing.assert_allclose(atoms.positions[1], [1.43, 1.45, 2.06])
    np.testing.assert_allclose(atoms.get_forces()[0], [0.0, 0.75, 0.0])
    assert atoms.get_potential_energy() == pytest.approx(-16.02376555539)
    volume = 2.86 * 5.71 * 4.05
    # PlusStress (eV) = -V * stress; Voigt order xx yy zz yz xz xy in both
    np.testing.assert_allclose(atoms.get_stress(), -np.array([-0.29, 0.23, -0.09, 0, 0, 0]) / volume)
    assert atoms.info['cfg_EFS_by'] == 'vasp'
    assert atoms.info['cfg_mindist'] == '2.70'


def test_types_need_a_species_list():
    with pytest.raises(CfgFormatError, match='pass species'):
        read_cfg(DATA / 'mlip2_example.cfg')


def test_plus_stress_sign_of_a_compressed_cell(tmp_path):
    atoms = bulk('Cu', 'fcc', a=3.45, cubic=True)  # compressed: it pushes outwards
    atoms.calc = EMT()
    assert atoms.get_stress()[0] < 0  # ASE: negative stress under compression
    write_cfg(tmp_path / 'c.cfg', [atoms])
    lines = (tmp_path / 'c.cfg').read_text().splitlines()
    plus = [float(x) for x in lines[lines.index(next(ln for ln in lines if 'PlusStress' in ln)) + 1].split()]
    assert plus[0] > 0
    assert plus[0] == pytest.approx(-atoms.get_stress()[0] * atoms.get_volume())


def test_truncated_cfg(tmp_path):
    text = (DATA / 'mlip2_example.cfg').read_text().replace('END_CFG', '')
    (tmp_path / 't.cfg').write_text(text)
    with pytest.raises(CfgFormatError, match='line 1: BEGIN_CFG without END_CFG'):
        read_cfg(tmp_path / 't.cfg', species=['Al', 'Cu'])


def test_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match='cannot tell the format'):
        read_configurations(tmp_path / 'x.json')
