"""Hostile strings in file names, configuration info and node labels never reach a shell: the jobs' command lines
are fixed argument lists, and the strings come back unchanged."""

from __future__ import annotations

import os
import pathlib

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory
from ase.build import bulk
from click.testing import CliRunner

from aiida_alkit.cli import main
from aiida_alkit.io import write_configurations

AseLabelCalculation = CalculationFactory('alkit.label.ase')

pytestmark = pytest.mark.faults

MARKER = 'pwned'
#: Shell injections in every quoting context a careless script builder could use; each would create MARKER.
HOSTILE = [
    f'$(touch {MARKER}-1)',
    f'`touch {MARKER}-2`',
    f"'; touch {MARKER}-3; echo '",
    f'"; touch {MARKER}-4; echo "',
    f'x | touch {MARKER}-5 && touch {MARKER}-6',
    '../../../../etc/passwd',
]


def _markers(*folders: pathlib.Path) -> list[str]:
    found = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            found += [os.path.join(root, name) for name in files if name.startswith(MARKER)]
    return found


def test_hostile_file_name_info_and_labels_are_inert(alkit_python_code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    structures = []
    for index, text in enumerate(HOSTILE):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.05, seed=index)
        atoms.info['comment_text'] = text
        structures.append(atoms)
    path = tmp_path / f'$(touch {MARKER}-file); `touch {MARKER}-file2`.extxyz'
    write_configurations(path, structures)

    result = CliRunner().invoke(main, ['dataset', 'import', str(path)])
    assert result.exit_code == 0, result.output
    dataset = orm.load_node(int(result.output.split('<')[1].split('>')[0]))
    assert list(dataset.arrays.info['comment_text']) == HOSTILE

    builder = AseLabelCalculation.get_builder()
    builder.code = alkit_python_code
    builder.configurations = dataset
    builder.calculator = orm.Str('ase.calculators.emt.EMT')
    builder.metadata.label = HOSTILE[0]
    builder.metadata.description = ' '.join(HOSTILE)
    builder.metadata.options.max_wallclock_seconds = 600
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message

    labelled = results['labelled']
    assert list(labelled.arrays.info['comment_text']) == HOSTILE  # unchanged through the job's files
    script = node.base.repository.get_object_content('_aiidasubmit.sh')
    for text in HOSTILE:
        assert text not in script
    workdir = pathlib.Path(node.outputs.remote_folder.get_remote_path())
    assert _markers(tmp_path, workdir) == []
