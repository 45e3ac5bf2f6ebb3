"""Reproducibility: a campaign archived and imported into a fresh profile re-selects the same indices; labels are
cached so the same structure with the same DFT inputs is never computed twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.manage.caching import enable_caching
from aiida.plugins import WorkflowFactory
from ase.build import bulk

from aiida_alkit.profile import PW_CODE, ensure_resources

from .test_active_learning import MACE_TINY_OVERRIDES, TINY_OVERRIDES, _copper, _emt

ActiveLearningWorkChain = WorkflowFactory('alkit.active_learning')
LabelWorkChain = WorkflowFactory('alkit.label')

REPLAY = textwrap.dedent(
    """
    import json, sys
    from aiida import load_profile, orm
    from aiida.manage.configuration import create_profile, get_config
    from aiida.tools.archive import import_archive

    config = get_config(create=True)
    create_profile(config, name='replay', email='replay@localhost', storage_backend='core.sqlite_dos',
                   storage_config={})
    config.store()
    load_profile('replay', allow_switch=True)
    import_archive(sys.argv[1])
    from aiida_alkit.calculations.functions import select_candidates

    original = orm.load_node(sys.argv[2])
    inputs = {link.link_label: link.node for link in original.base.links.get_incoming().all()}
    outputs = select_candidates(inputs['pool'], inputs['scores'], inputs['parameters'], inputs['seed'])
    print(json.dumps([int(i) for i in outputs['selection'].get_array('indices')]))
    """
)


@pytest.mark.campaign
@pytest.mark.parametrize('model_kind', ['gmnn', 'mace'])
def test_archive_replay_gives_the_same_selection(alkit_python_code, tmp_path, model_kind):
    from aiida.tools.archive import create_archive

    overrides = MACE_TINY_OVERRIDES if model_kind == 'mace' else TINY_OVERRIDES
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        alkit_python_code,
        _copper(4, labelled=True),
        protocol='fast',
        strategy='gradient',
        overrides={**overrides, 'max_rounds': 1},
        label=_emt(alkit_python_code),
    )
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    select = next(
        n
        for n in node.called_descendants
        if isinstance(n, orm.CalcFunctionNode) and n.process_label == 'select_candidates'
    )
    original = [int(i) for i in select.outputs.selection.get_array('indices')]
    archive = tmp_path / 'campaign.aiida'
    create_archive([node], filename=archive)
    script = tmp_path / 'replay.py'
    script.write_text(REPLAY)
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'fresh')}
    run = subprocess.run(
        [sys.executable, str(script), str(archive), select.uuid], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == original


@pytest.mark.pwx
def test_same_pw_label_is_taken_from_the_cache(aiida_profile):
    ensure_resources()
    code = orm.load_code(f'{PW_CODE}@localhost')
    inputs = {
        'engine': orm.Str('pw'),
        'pw': {'code': code, 'overrides': orm.Dict({'kpoints_distance': 0.5})},
    }
    with enable_caching(identifier='aiida.calculations:quantumespresso.pw'):
        first = run_get_node(
            LabelWorkChain, structures={'a': orm.StructureData(ase=bulk('Al', 'fcc', a=4.0))}, **inputs
        )[1]
        second = run_get_node(
            LabelWorkChain, structures={'a': orm.StructureData(ase=bulk('Al', 'fcc', a=4.0))}, **inputs
        )[1]
    assert first.is_finished_ok and second.is_finished_ok

    def pw_calculation(node):
        return next(n for n in node.called_descendants if n.process_label == 'PwCalculation')

    assert not pw_calculation(first).base.caching.is_created_from_cache
    assert pw_calculation(second).base.caching.is_created_from_cache
    assert second.outputs.labelled.arrays.energy[0] == first.outputs.labelled.arrays.energy[0]
