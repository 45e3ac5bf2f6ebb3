"""Questions about a campaign answered from the provenance graph (no science, only link traversal).

An :class:`~aiida_alkit.workflows.active_learning.ActiveLearningWorkChain` calls, per round ``k``,
``train_round_k`` (``TrainWorkChain``), ``explore_round_k`` (``ExploreWorkChain``), the calcfunction
``select_candidates`` (outputs ``selection`` and one ``pick_NNNN`` StructureData per pick), ``label_round_k``
(``LabelWorkChain``, inputs ``structures__pick_NNNN``) and ``merge_datasets`` (``round_index = k``); unlabelled
initial structures are labelled first by ``label_initial`` (inputs ``structures__initial_NNNN``). The training
set's ``info['origin']`` holds the uuid of the StructureData each labelled configuration came from.

The helpers below follow those links from a node (``node.base.links`` and :class:`~aiida.orm.QueryBuilder` with
``with_incoming`` / ``with_outgoing``); none scans the whole database:

* :func:`labels_of_potential` — the labelled structures a potential was trained on;
* :func:`selection_record` — score, rank, pool index, method and round of a picked (or initial) structure;
* :func:`failed_labels` — every failed label of a campaign with its round, pick name and reason;
* :func:`round_of` — the round of a campaign that produced a structure;
* :func:`campaign_rounds` — the per-round rows of the campaign's ``report``: the report itself once the campaign
  has one, else rebuilt from the called processes (so that a running campaign can be inspected too);
* :func:`report_rows` — those rows computed from the nodes each round produced (what the ``campaign_report``
  calcfunction and :func:`campaign_rounds` share).
"""

from __future__ import annotations

import re
from typing import Any

from aiida import orm
from aiida.common.links import LinkType

__all__ = [
    'REPORT_SOURCES',
    'called_processes',
    'campaign_rounds',
    'failed_labels',
    'labels_of_potential',
    'report_rows',
    'report_source',
    'round_from_link_label',
    'round_of',
    'selection_record',
]

_ROUND_LABEL = re.compile(r'^(?:train|explore|label)_round_(\d+)$')
_CALL_LINKS = (LinkType.CALL_CALC, LinkType.CALL_WORK)
_STRUCTURES_PREFIX = 'structures__'
#: What a report row is computed from, per round: the training set and the potential of ``train_round_k``, the
#: explore parameters, pool and stop record of ``explore_round_k``, the ``selection`` of ``select_candidates``,
#: the campaign's decision after it (``campaign_convergence``: converged, stage finished), the labelled set and the
#: failure record of ``label_round_k`` and the training set at the end of the round.
REPORT_SOURCES = (
    'trained_on', 'potential', 'explore_parameters', 'pool', 'stops', 'selection', 'convergence', 'labelled',
    'failures', 'dataset',
)  # fmt: skip
_SOURCE_KEY = re.compile(r'^round_(\d+)_(' + '|'.join(REPORT_SOURCES) + r')$')


def report_source(round_number: int, what: str) -> str:
    """Keyword of a report source: ``round_<k>_<what>`` (``what`` in :data:`REPORT_SOURCES`)."""
    if what not in REPORT_SOURCES:
        raise ValueError(f'unknown report source {what!r}; choose from {REPORT_SOURCES}')
    return f'round_{round_number}_{what}'


def report_rows(sources: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a campaign report, one per round, from the nodes each round produced.

    :param sources: ``round_<k>_<what>`` → node (see :data:`REPORT_SOURCES`); a missing source leaves its keys out
        of the row (the step has not run or failed). ``failures`` may also be a plain number of failed labels.
    :return: rows with ``round``, ``trained_on``, ``metrics``, ``test_forces_rmse``, ``temperature_K``,
        ``pressure_GPa``, ``steps``, ``walkers``, ``explored``, ``walker_stops``, ``n_accurate``, ``n_candidate``,
        ``n_failed``, ``selected``, ``accurate_fraction``, ``stage_converged``, ``labelled``, ``failed_labels`` and
        ``dataset_size``, as far as their sources exist.
    """
    by_round: dict[int, dict[str, Any]] = {}
    for key, node in sources.items():
        match = _SOURCE_KEY.match(key)
        if match is None:
            raise ValueError(f'not a report source: {key!r}')
        by_round.setdefault(int(match.group(1)), {})[match.group(2)] = node
    rows = []
    for number in sorted(by_round):
        found = by_round[number]
        row: dict[str, Any] = {'round': number}
        if 'trained_on' in found:
            row['trained_on'] = len(found['trained_on'])
        if 'potential' in found:
            row['metrics'] = dict(found['potential'].metrics)
            if 'test_forces_rmse_ev_per_ang' in row['metrics']:
                row['test_forces_rmse'] = row['metrics']['test_forces_rmse_ev_per_ang']
        if 'explore_parameters' in found:
            parameters = found['explore_parameters'].get_dict()
            for key in ('temperature_K', 'pressure_GPa', 'steps', 'walkers'):
                row[key] = parameters.get(key)
        if 'pool' in found:
            row['explored'] = len(found['pool'])
        if 'stops' in found:
            row['walker_stops'] = dict(found['stops'].get_dict().get('counts', {}))
        if 'selection' in found:
            attributes = found['selection'].base.attributes
            for key in ('n_accurate', 'n_candidate', 'n_failed'):
                row[key] = attributes.get(key, None)
            row['selected'] = attributes.get('n_selected', None)
            row['accurate_fraction'] = (row['n_accurate'] or 0) / max(1, row.get('explored', 0))
        if 'convergence' in found:
            row['stage_converged'] = bool(found['convergence'].get_dict()['stage_done'])
        if 'failures' in found:
            failures = found['failures']
            row['labelled'] = len(found['labelled']) if 'labelled' in found else 0
            row['failed_labels'] = len(failures.get_dict()) if isinstance(failures, orm.Dict) else int(failures)
        if 'dataset' in found:
            row['dataset_size'] = len(found['dataset'])
        rows.append(row)
    return rows


def round_from_link_label(label: str) -> int | None:
    """The round encoded in a campaign's call link label: ``label_initial`` → 0, ``*_round_<k>`` → ``k``."""
    if label == 'label_initial':
        return 0
    match = _ROUND_LABEL.match(label)
    return int(match.group(1)) if match else None


def called_processes(
    campaign: orm.ProcessNode, link_label_filter: str | None = None, process_label: str | None = None
) -> list[tuple[str, orm.ProcessNode]]:
    """``(call link label, process)`` for the processes ``campaign`` called, oldest first.

    :param link_label_filter: SQL ``LIKE`` pattern on the link label (``'label_%'``); calcfunctions called without
        a label have the label ``CALL``.
    :param process_label: keep only processes with this process label (``'select_candidates'``).
    """
    links = campaign.base.links.get_outgoing(link_type=_CALL_LINKS, link_label_filter=link_label_filter).all()
    found = [(link.link_label, link.node) for link in links]
    if process_label is not None:
        found = [(label, node) for label, node in found if node.process_label == process_label]
    return sorted(found, key=lambda item: (item[1].ctime, item[1].pk))


def _input(node: orm.Node, link_label: str) -> orm.Node | None:
    links = node.base.links.get_incoming(
        link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK), link_label_filter=link_label
    ).all()
    return links[0].node if links else None


def _output(node: orm.Node, link_label: str) -> orm.Node | None:
    links = node.base.links.get_outgoing(
        link_type=(LinkType.CREATE, LinkType.RETURN), link_label_filter=link_label
    ).all()
    return links[0].node if links else None


def _label_picks(label_node: orm.ProcessNode) -> list[str]:
    """The pick names of the structures given to a label process (its ``structures__<pick>`` inputs)."""
    links = label_node.base.links.get_incoming(
        link_type=LinkType.INPUT_WORK, link_label_filter=f'{_STRUCTURES_PREFIX}%'
    ).all()
    return sorted(link.link_label[len(_STRUCTURES_PREFIX) :] for link in links)


def _caller_link(process: orm.ProcessNode) -> tuple[str, orm.ProcessNode] | None:
    links = process.base.links.get_incoming(link_type=_CALL_LINKS).all()
    return (links[0].link_label, links[0].node) if links else None


# ---------------------------------------------------------------------------------------------- potentials
def labels_of_potential(potential: orm.Data) -> list[orm.StructureData]:
    """The StructureData whose labels trained ``potential``, in training-set order (each once).

    Path: the potential's creator (the ``TrainCalculation``) → its ``dataset`` input → the uuids in the dataset's
    ``info['origin']`` (written by ``merge_datasets``) → the StructureData with those uuids. Configurations without
    an origin (labelled data given to the campaign as ``initial_dataset``) have no StructureData and are left out,
    as are uuids this profile does not hold (a training set imported without its structures).

    :raises ValueError: when the potential has no creator with a ``dataset`` input, or that dataset has no
        ``origin`` info (it was not assembled by a campaign).
    """
    creator = potential.creator
    if creator is None:
        raise ValueError(f'{type(potential).__name__}<{potential.pk}> has no creator: it was not trained here')
    dataset = _input(creator, 'dataset')
    if dataset is None:
        raise ValueError(f'the creator {creator.process_label}<{creator.pk}> of the potential has no dataset input')
    info = dataset.arrays.info
    if 'origin' not in info:
        raise ValueError(f'training set DatasetData<{dataset.pk}> has no origin info (not made by merge_datasets)')
    uuids = list(dict.fromkeys(str(value) for value in info['origin'] if str(value)))
    if not uuids:
        return []
    query = orm.QueryBuilder().append(orm.StructureData, filters={'uuid': {'in': uuids}}, project=['uuid', '*'])
    by_uuid = dict(query.all())
    return [by_uuid[uuid] for uuid in uuids if uuid in by_uuid]


# ---------------------------------------------------------------------------------------------- structures
def _selection_of(structure: orm.StructureData) -> tuple[orm.ProcessNode, str] | None:
    """``(select_candidates node, pick name)`` when ``structure`` is a pick, else ``None``."""
    links = structure.base.links.get_incoming(link_type=LinkType.CREATE).all()
    if not links or links[0].node.process_label != 'select_candidates':
        return None
    return links[0].node, links[0].link_label


def _explore_round(select_node: orm.ProcessNode) -> tuple[int | None, orm.ProcessNode | None]:
    """Round and caller of the exploration whose pool ``select_node`` selected from."""
    pool = _input(select_node, 'pool')
    explore = pool.creator if pool is not None else None
    caller = _caller_link(explore) if explore is not None else None
    if caller is not None and caller[1].process_label == 'ExploreWorkChain':  # the restart wrapper: one level up
        caller = _caller_link(caller[1])
    if caller is None:
        return None, None
    return round_from_link_label(caller[0]), caller[1]


def _label_processes(structure: orm.StructureData, campaign: orm.ProcessNode | None = None) -> list[dict[str, Any]]:
    """The LabelWorkChains (called by ``campaign``, if given) that took ``structure`` as input: node, pick, round."""
    query = orm.QueryBuilder()
    query.append(orm.StructureData, filters={'id': structure.pk}, tag='structure')
    query.append(
        orm.WorkflowNode,
        with_incoming='structure',
        edge_filters={'label': {'like': f'{_STRUCTURES_PREFIX}%'}},
        edge_tag='input',
        edge_project='label',
        project='*',
        tag='label',
    )
    query.append(
        orm.WorkflowNode,
        with_outgoing='label',
        filters={'id': campaign.pk} if campaign is not None else {},
        edge_tag='call',
        edge_project='label',
        tag='caller',
    )
    found = []
    for result in query.dict():
        found.append(
            {
                'node': result['label']['*'],
                'pick': result['input']['label'][len(_STRUCTURES_PREFIX) :],
                'round': round_from_link_label(result['call']['label']),
            }
        )
    return sorted(found, key=lambda item: item['node'].pk)


def _label_outcome(label_node: orm.ProcessNode, pick: str) -> tuple[bool | None, str | None]:
    """Was ``pick`` labelled by ``label_node``: ``(True, None)``, ``(False, reason)`` or ``(None, None)`` (pending)."""
    failures = _output(label_node, 'failures')
    if failures is not None and pick in failures.get_dict():
        return False, str(failures[pick])
    labelled = _output(label_node, 'labelled')
    if labelled is not None and pick in {str(value) for value in labelled.arrays.info.get('pick', [])}:
        return True, None
    if label_node.is_terminated:
        return False, f'{label_node.process_label}<{label_node.pk}> ended without labelling it'
    return None, None


def selection_record(structure: orm.StructureData) -> dict[str, Any]:
    """How ``structure`` entered a campaign: its selection and its label.

    For a pick of ``select_candidates``: ``pick`` (``pick_NNNN``), ``rank``, ``score``, ``pool_index`` (the
    ``alkit_*`` attributes), ``method`` (the selection method that ran), ``round`` (of the exploration that made the
    pool), ``selection`` and ``pool`` (pks). For an initial structure labelled in round 0: ``pick``
    (``initial_NNNN``) and ``round`` 0, the selection fields ``None``. Both carry ``uuid``, ``pk``, ``labelled``
    (``True``, ``False`` or ``None`` while not labelled yet) and ``failure`` (the reason of a failed label).

    :raises ValueError: for a structure that was neither picked nor labelled by a campaign.
    """
    record: dict[str, Any] = {
        'uuid': structure.uuid,
        'pk': structure.pk,
        'pick': None,
        'round': None,
        'rank': None,
        'score': None,
        'pool_index': None,
        'method': None,
        'selection': None,
        'pool': None,
        'labelled': None,
        'failure': None,
    }
    labels = _label_processes(structure)
    selected = _selection_of(structure)
    if selected is not None:
        select_node, pick = selected
        attributes = structure.base.attributes
        selection = _output(select_node, 'selection')
        pool = _input(select_node, 'pool')
        parameters = _input(select_node, 'parameters')
        method = selection.base.attributes.get('method', None) if selection is not None else None
        if method is None and parameters is not None:
            method = parameters.get_dict().get('method')
        record.update(
            {
                'pick': pick,
                'round': _explore_round(select_node)[0],
                'rank': attributes.get('alkit_rank', None),
                'score': attributes.get('alkit_score', None),
                'pool_index': attributes.get('alkit_pool_index', None),
                'method': method,
                'selection': selection.pk if selection is not None else None,
                'pool': pool.pk if pool is not None else None,
            }
        )
    elif labels and labels[0]['round'] == 0:
        record.update({'pick': labels[0]['pick'], 'round': 0})
    else:
        raise ValueError(f'StructureData<{structure.pk}> was neither selected nor labelled by a campaign')
    if labels:
        record['labelled'], record['failure'] = _label_outcome(labels[-1]['node'], labels[-1]['pick'])
    return record


def round_of(structure: orm.StructureData, campaign: orm.ProcessNode) -> int:
    """The round of ``campaign`` that produced ``structure``: the round of the exploration it was picked from, or 0
    for an initial structure the campaign labelled.

    :raises ValueError: when ``structure`` is not part of ``campaign``.
    """
    selected = _selection_of(structure)
    if selected is not None:
        number, caller = _explore_round(selected[0])
        if caller is not None and caller.pk == campaign.pk and number is not None:
            return number
    for item in _label_processes(structure, campaign):
        if item['round'] == 0:
            return 0
    raise ValueError(f'StructureData<{structure.pk}> was not produced by campaign <{campaign.pk}>')


# ---------------------------------------------------------------------------------------------- campaigns
def failed_labels(campaign: orm.ProcessNode) -> list[dict[str, Any]]:
    """Every failed label of ``campaign``, by round (0: initial structures) and pick name.

    Each record: ``round``, ``pick``, ``reason``, ``structure`` (uuid of the StructureData that failed, or ``None``)
    and ``label_process`` (pk of the LabelWorkChain). Label processes still running are skipped.
    """
    from aiida_alkit.workflows.label import failure_reason

    records = []
    for link_label, node in called_processes(campaign, link_label_filter='label_%'):
        failures = _output(node, 'failures')
        if failures is not None:
            reasons = failures.get_dict()
        elif node.is_terminated:  # killed or excepted before it wrote its record: every structure failed
            reasons = dict.fromkeys(_label_picks(node), failure_reason(node))
        else:
            continue
        number = round_from_link_label(link_label)
        for pick, reason in reasons.items():
            structure = _input(node, f'{_STRUCTURES_PREFIX}{pick}')
            records.append(
                {
                    'round': number,
                    'pick': pick,
                    'reason': str(reason),
                    'structure': structure.uuid if structure is not None else None,
                    'label_process': node.pk,
                }
            )
    return sorted(records, key=lambda item: (item['round'] if item['round'] is not None else -1, item['pick']))


def _merged_datasets(campaign: orm.ProcessNode) -> dict[int, orm.Data]:
    """Training set after each ``merge_datasets`` call, by its ``round_index``."""
    merged = {}
    for _, node in called_processes(campaign, process_label='merge_datasets'):
        result = _output(node, 'result')
        round_index = _input(node, 'round_index')
        if result is not None and round_index is not None:
            merged[int(round_index.value)] = result
    return merged


def campaign_rounds(campaign: orm.ProcessNode, rebuild: bool = False) -> list[dict[str, Any]]:
    """The rows of the campaign's ``report``, one per round started (see :func:`report_rows` for the keys).

    A finished campaign's ``report`` (built by the ``campaign_report`` calcfunction) is read as it is; otherwise, or
    with ``rebuild``, the same rows are computed from the processes the campaign called so far (a running campaign,
    or one whose report predates that calcfunction): a key is missing while the step that produces it has not
    finished.
    """
    report = _output(campaign, 'report')
    built = report is not None and report.creator is not None and report.creator.process_label == 'campaign_report'
    if built and not rebuild:
        return [dict(row) for row in report.get_dict()['rounds']]
    sources: dict[str, Any] = {}
    numbers: set[int] = set()

    def add(number: int, what: str, node: Any) -> None:
        if node is not None:
            sources[report_source(number, what)] = node

    for link_label, node in called_processes(campaign, link_label_filter='%_round_%'):
        number = round_from_link_label(link_label)
        if number is None:
            continue
        numbers.add(number)
        if link_label.startswith('train_'):
            add(number, 'trained_on', _input(node, 'train__dataset'))
            if node.is_finished_ok:
                add(number, 'potential', _output(node, 'potential'))
        elif link_label.startswith('explore_'):
            parameters = _input(node, 'parameters')
            if parameters is None:  # the ExploreWorkChain exposes the CalcJob's inputs in its namespace
                parameters = _input(node, 'explore__parameters')
            add(number, 'explore_parameters', parameters)
            pool = _output(node, 'pool')
            if pool is None or not node.is_finished_ok:
                continue
            add(number, 'pool', pool)
            add(number, 'stops', _output(node, 'stops'))
            selection = _calcfunction_output(pool, 'select_candidates', 'selection')
            add(number, 'selection', selection)
            if selection is not None:
                add(number, 'convergence', _calcfunction_output(selection, 'campaign_convergence', 'result'))
        elif link_label.startswith('label_') and node.is_terminated:
            failures = _output(node, 'failures')
            add(number, 'failures', failures if failures is not None else len(_label_picks(node)))
            add(number, 'labelled', _output(node, 'labelled'))

    merged = _merged_datasets(campaign)
    ordered = sorted(numbers)
    for position, number in enumerate(ordered):
        round_done = number in merged or position + 1 < len(ordered) or campaign.is_terminated
        earlier = [index for index in merged if index <= number]
        if round_done and earlier:
            add(number, 'dataset', merged[max(earlier)])
    rows = {row['round']: row for row in report_rows(sources)}
    return [rows.get(number, {'round': number}) for number in ordered]


def _calcfunction_output(node: orm.Data, process_label: str, link_label: str) -> orm.Data | None:
    """The ``link_label`` output of the ``process_label`` calcfunction that took ``node`` as an input."""
    query = orm.QueryBuilder()
    query.append(orm.Data, filters={'id': node.pk}, tag='input')
    query.append(
        orm.CalcFunctionNode,
        with_incoming='input',
        filters={'attributes.process_label': process_label},
        tag='function',
    )
    query.append(orm.Data, with_incoming='function', edge_filters={'label': link_label}, project='*')
    return query.first(flat=True)
