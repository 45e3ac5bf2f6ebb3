"""DatasetData: one node per configuration set, attributes, round trip through the repository, subsets."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_alkit.data import DatasetData
from aiida_alkit.io.arrays import ConfigurationArrays


def test_store_and_reload(aiida_profile, copper_structures):
    node = DatasetData.from_atoms(copper_structures)
    node.store()
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, DatasetData)
    assert len(loaded) == 5
    assert loaded.base.repository.list_object_names() == ['configurations.npz']
    attributes = loaded.base.attributes.all
    assert attributes['count'] == 5
    assert attributes['species'] == ['Cu']
    assert attributes['natoms_min'] == attributes['natoms_max'] == 32
    assert attributes['labels'] == ['energy', 'forces', 'stress']
    assert attributes['info_keys'] == ['round', 'source', 'step', 'walker']
    assert attributes['sha256'] == ConfigurationArrays.from_atoms(copper_structures).sha256()
    for index, original in enumerate(copper_structures):
        atoms = loaded.get_atoms(index)
        np.testing.assert_array_equal(atoms.positions, original.positions)
        assert atoms.get_potential_energy() == original.get_potential_energy()
        np.testing.assert_array_equal(atoms.get_forces(), original.get_forces())
        assert atoms.info['walker'] == index
    assert len(loaded.to_atoms()) == 5
    structure = loaded.get_structure(1)
    assert isinstance(structure, orm.StructureData)
    assert len(structure.sites) == 32


def test_queryable_by_attributes(aiida_profile, copper_structures):
    DatasetData.from_atoms(copper_structures[:2]).store()
    query = orm.QueryBuilder().append(DatasetData, filters={'attributes.count': 2, 'attributes.species': ['Cu']})
    assert query.count() >= 1


def test_subset_of_stored_node_has_provenance(aiida_profile, copper_structures):
    node = DatasetData.from_atoms(copper_structures).store()
    picked = node.subset([4, 1])
    assert picked.is_stored
    assert len(picked) == 2
    assert picked.get_atoms(0).info['walker'] == 4
    creator = picked.creator
    assert isinstance(creator, orm.CalcFunctionNode)
    assert creator.process_label == 'subset_dataset'
    assert creator.inputs.dataset.uuid == node.uuid
    assert creator.inputs.indices.get_list() == [4, 1]


def test_subset_of_unstored_node(copper_structures):
    node = DatasetData.from_atoms(copper_structures)
    picked = node.subset(np.array([0, 0, 3]))
    assert not picked.is_stored
    assert [a.info['walker'] for a in picked.to_atoms()] == [0, 0, 3]


def test_bad_input_is_rejected_before_anything_is_stored(aiida_profile, copper_structures):
    copper_structures[2].positions[0, 0] = np.inf
    before = orm.QueryBuilder().append(DatasetData).count()
    with pytest.raises(ValueError, match='configuration 2: positions contain NaN or inf'):
        DatasetData.from_atoms(copper_structures)
    assert orm.QueryBuilder().append(DatasetData).count() == before


def test_from_file(aiida_profile, tmp_path, copper_structures):
    from aiida_alkit.io import write_configurations

    write_configurations(tmp_path / 'set.cfg', copper_structures)
    node = DatasetData.from_file(tmp_path / 'set.cfg')
    assert len(node) == 5
    assert node.labels == ['energy', 'forces', 'stress']


def test_from_plain_mlip2_file_with_species(aiida_profile):
    """An MLIP-2 file without our species line: the element of each type index is given by the caller."""
    import pathlib

    path = pathlib.Path(__file__).parents[1] / 'data_files' / 'mlip2_example.cfg'
    dataset = DatasetData.from_file(path, species=['Al', 'Cu'])
    assert dataset.species == ['Al', 'Cu']
    assert dataset.labels == ['energy', 'forces', 'stress']
