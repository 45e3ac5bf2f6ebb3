"""Fixtures of the parser tests: a ``CalcJobNode`` whose ``retrieved`` folder holds the stored real outputs of a job
(``fixtures/<parser>/<case>/``, written by ``generate_fixtures.py``), as aiida-quantumespresso's
``generate_calc_job_node`` does, so a parser runs without running its job."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.plugins import ParserFactory

from aiida_alkit.jobs.common import RESULTS_FILE
from aiida_alkit.jobs.explore import POOL_FILE, SCORES_FILE, STOPS_FILE
from aiida_alkit.jobs.label import OUTPUT_FILE
from aiida_alkit.jobs.train import METRICS_FILE, POTENTIAL_FILE

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
#: Per CalcJob: the files of its ``retrieve_list`` beyond results.json and job.out, and of its
#: ``retrieve_temporary_list`` (handed to the parser in a folder that is deleted afterwards, never in ``retrieved``).
#: ``tests/calculations/test_inputs.py`` checks these lists against what ``prepare_for_submission`` returns.
RETRIEVED = {'alkit.train': (METRICS_FILE,), 'alkit.explore': (STOPS_FILE,), 'alkit.label.ase': ()}
TEMPORARY = {
    'alkit.train': (POTENTIAL_FILE,),
    'alkit.explore': (POOL_FILE, SCORES_FILE),
    'alkit.label.ase': (OUTPUT_FILE,),
}


def rounded(value: Any, digits: int = 6) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (stable regression files)."""
    if isinstance(value, Mapping):
        return {str(key): rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    if isinstance(value, float):
        return float(f'{value:.{digits}g}') if math.isfinite(value) else str(value)
    return value


@pytest.fixture
def generate_calc_job_node(aiida_localhost, tmp_path) -> Callable[..., tuple[orm.CalcJobNode, pathlib.Path]]:
    """Factory ``(entry_point, test_name, inputs=None, remove=(), truncate=None) -> (node, temporary_folder)``.

    Files of ``fixtures/<parser>/<test_name>/`` (``<parser>``: the entry point without ``alkit.``, dots as
    underscores) go into the node's stored ``retrieved`` FolderData, except those of the CalcJob's retrieve
    temporary list, which are copied into ``temporary_folder`` (pass it to the parser as
    ``retrieved_temporary_folder``). ``remove`` leaves files out; ``truncate`` maps a file name to the number of
    bytes kept of it: both make failure cases out of real outputs.
    """

    def _generate(
        entry_point: str,
        test_name: str,
        inputs: Mapping[str, orm.Data] | None = None,
        remove: Iterable[str] = (),
        truncate: Mapping[str, int] | None = None,
    ) -> tuple[orm.CalcJobNode, pathlib.Path]:
        source = FIXTURES / entry_point.removeprefix('alkit.').replace('.', '_') / test_name
        assert source.is_dir(), f'no fixture folder {source}'
        temporary = tmp_path / 'retrieved_temporary' / test_name
        temporary.mkdir(parents=True)

        node = orm.CalcJobNode(computer=aiida_localhost, process_type=f'aiida.calculations:{entry_point}')
        node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
        node.set_option('max_wallclock_seconds', 600)
        node.set_option('parser_name', entry_point)
        node.set_retrieve_list([RESULTS_FILE, 'job.out', *RETRIEVED[entry_point]])
        node.set_retrieve_temporary_list(list(TEMPORARY[entry_point]))
        for label, data in (inputs or {}).items():
            node.base.links.add_incoming(data.store(), link_type=LinkType.INPUT_CALC, link_label=label)
        node.store()

        retrieved = orm.FolderData()
        skipped, cut = set(remove), dict(truncate or {})
        for path in sorted(source.iterdir()):
            if path.name in skipped:
                continue
            content = path.read_bytes()[: cut.get(path.name)]
            if path.name in TEMPORARY[entry_point]:
                (temporary / path.name).write_bytes(content)
            else:
                retrieved.base.repository.put_object_from_bytes(content, path.name)
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
        retrieved.store()
        remote = orm.RemoteData(computer=aiida_localhost, remote_path=str(tmp_path))
        remote.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='remote_folder')
        remote.store()
        return node, temporary

    return _generate


@pytest.fixture
def parse() -> Callable[..., tuple[dict[str, Any], orm.CalcFunctionNode]]:
    """Run the node's parser (its ``parser_name``) on it: ``(node, temporary_folder) -> (outputs, calcfunction)``;
    the calcfunction node carries the exit status and message, nothing is stored."""

    def _parse(node: orm.CalcJobNode, temporary: pathlib.Path) -> tuple[dict[str, Any], orm.CalcFunctionNode]:
        parser = ParserFactory(node.get_option('parser_name'))
        results, calcfunction = parser.parse_from_node(
            node, store_provenance=False, retrieved_temporary_folder=str(temporary)
        )
        return results or {}, calcfunction

    return _parse
