"""The train job's parameters, typed: one source for the job (``jobs/train.py``), the CalcJob's input validator, the
campaign's checks and the docs.

``TrainParameters.from_dict(parameters)`` checks a ``parameters.json`` dictionary and returns the typed settings with
every default filled in; a problem raises :class:`ParameterError` whose message names the key, the value and what is
allowed (the messages the CalcJob and the campaign report). The nested settings are the models' own dataclasses,
with their defaults and units: the hyper-parameters of the model kind ``model.kind`` names (``gmnn``:
:class:`~aiida_alkit.models.gmnn.GMNNHyperparameters`, ``mace``: :class:`~aiida_alkit.models.mace.MACEHyperparameters`),
:class:`~aiida_alkit.models.training.TrainingConfig` (``training``) and
:class:`~aiida_alkit.models.rlekf.RLEKFConfig` (``rlekf``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiida_alkit.jobs.common import GRANTED_CORES_KEY, ParameterError
from aiida_alkit.models.potential import (
    MODEL_KINDS,
    hyperparameters_from_dict,
    is_committee,
    member_kind,
    model_kind_of,
)
from aiida_alkit.models.rlekf import RLEKFConfig
from aiida_alkit.models.training import TrainingConfig

__all__ = [
    'KPUTrainedParameters',
    'ParameterError',
    'RLEKFParameters',
    'TrainParameters',
    'train_problem',
    'warm_start_problem',
]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    """Whether ``value`` is an integer >= 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _init_fields(cls: type) -> set[str]:
    return {item.name for item in dataclasses.fields(cls) if item.init}


def _section(data: Mapping[str, Any], key: str, allowed: Iterable[str]) -> dict[str, Any]:
    """The sub-dictionary ``data[key]`` (absent or null: empty) after refusing keys outside ``allowed``."""
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ParameterError(f'{key} must be a dictionary or null, got {value!r}')
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ParameterError(f'unknown {key} parameters {unknown}; allowed: {sorted(allowed)}')
    return dict(value)


def _build(key: str, build: Any, *args: Any) -> Any:
    """``build(*args)``, a model config's own check failing as a :class:`ParameterError` naming the group ``key``."""
    try:
        return build(*args)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f'invalid {key} parameters: {exc}') from exc


def _model_section(data: Mapping[str, Any], optimizer: str) -> dict[str, Any]:
    """The ``model`` group: its kind known, its keys those of the kind's hyper-parameters, their values accepted by
    the kind (species default to the dataset's, so a placeholder stands in for them here)."""
    value = data.get('model') or {}
    if not isinstance(value, Mapping):
        raise ParameterError(f'model must be a dictionary or null, got {value!r}')
    try:
        kind = model_kind_of(value)
    except ValueError as exc:
        raise ParameterError(f'invalid model parameters: {exc}') from exc
    if is_committee(kind):
        raise ParameterError(f'model.kind {kind!r} names a committee file; use committee_size for a committee')
    try:
        model_class = MODEL_KINDS[kind].model_class()
    except ValueError as exc:
        raise ParameterError(str(exc)) from exc
    model = _section(data, 'model', _init_fields(model_class.hyperparameters_class) | {'model_kind', 'kind'})
    _build('model', hyperparameters_from_dict, {'species': ['H'], **model})
    if optimizer == 'rlekf' and model_class.rlekf_refusal:
        raise ParameterError(f'optimizer "rlekf" with model.kind {kind!r}: {model_class.rlekf_refusal}')
    return model


@dataclass(frozen=True)
class RLEKFParameters:
    """The ``rlekf`` group: RLEKF's own settings plus the epochs and batch size it trains with."""

    config: RLEKFConfig = field(default_factory=RLEKFConfig)
    """The filter's settings (the other keys of the group; defaults: seeds/000)."""
    epochs: int = 10
    """Passes over the training set."""
    batch_size: int = 1
    """Configurations per Kalman step (1 in seeds/000)."""

    KEYS: ClassVar[frozenset[str]] = frozenset({'epochs', 'batch_size'})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RLEKFParameters:
        for key in sorted(cls.KEYS):
            value = data.get(key, 1)
            if not _is_count(value):
                raise ParameterError(f'rlekf.{key} must be a positive integer, got {value!r}')
        settings = {key: value for key, value in data.items() if key not in cls.KEYS}
        config = _build('rlekf', RLEKFConfig.from_dict, settings)  # p0 None (absent): the automatic P_0
        return cls(config=config, epochs=data.get('epochs', 10), batch_size=data.get('batch_size', 1))

    def training(self) -> TrainingConfig:
        """The :class:`~aiida_alkit.models.training.TrainingConfig` of an RLEKF run: these epochs and batch size,
        no validation split drawn (only ``info.split`` makes a validation set)."""
        return TrainingConfig(epochs=self.epochs, batch_size=self.batch_size, valid_fraction=0.0)


@dataclass(frozen=True)
class KPUTrainedParameters:
    """The ``kpu`` group (RLEKF only): KPU_trained, saved with the potential for the ``alkpu`` selection."""

    fraction: float = 0.5
    """Share of the P blocks sampled, in (0, 1]."""
    max_configurations: int | None = 200
    """Training configurations it averages over at most (None: all)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KPUTrainedParameters:
        fraction = data.get('fraction', 0.5)
        if not _is_number(fraction) or not 0 < fraction <= 1:
            raise ParameterError(f'kpu.fraction must be in (0, 1], got {fraction!r}')
        limit = data.get('max_configurations', 200)
        if limit is not None and not _is_count(limit):
            raise ParameterError(f'kpu.max_configurations must be a positive integer or null, got {limit!r}')
        return cls(fraction=float(fraction), max_configurations=limit)


@dataclass(frozen=True)
class TrainParameters:
    """Everything the train job reads from ``parameters.json`` (defaults filled in)."""

    model: dict[str, Any] = field(default_factory=dict)
    """The model's hyper-parameters (checked), with ``kind`` (``gmnn``, the default, or ``mace``) choosing the model;
    ``species`` may be left out: those of the dataset (:meth:`hyperparameters`)."""
    optimizer: str = 'adam'
    """'adam' or 'rlekf'."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Adam's settings (:class:`~aiida_alkit.models.training.TrainingConfig`); RLEKF uses :attr:`rlekf` instead."""
    rlekf: RLEKFParameters = field(default_factory=RLEKFParameters)
    """RLEKF's settings (optimizer 'rlekf')."""
    committee_size: int = 1
    """> 1: a committee of independently initialised models (Adam only)."""
    kpu: KPUTrainedParameters = field(default_factory=KPUTrainedParameters)
    """KPU_trained (optimizer 'rlekf'), saved with the potential."""
    device: str = 'auto'
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    num_threads: int | None = None
    """torch threads; None: the cores the scheduler granted (``granted_cores``, written by the CalcJob)."""
    max_seconds: float | None = None
    """Time budget, s (a single Adam model stops after the last epoch that fits); the CalcJob sets 0.9 x its
    walltime unless given."""

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ('adam', 'rlekf')
    DEVICES: ClassVar[tuple[str, ...]] = ('auto', 'cpu', 'cuda')
    #: Keys of parameters.json that are not settings (written by the CalcJob, read by ``jobs.common``).
    RUNTIME_KEYS: ClassVar[frozenset[str]] = frozenset({GRANTED_CORES_KEY})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], runtime: bool = False) -> TrainParameters:
        """The typed parameters of ``data`` (parameters.json); :class:`ParameterError` names the first problem.

        :param runtime: accept the keys the CalcJob adds (:attr:`RUNTIME_KEYS`), as the job does.
        """
        data = {key: value for key, value in data.items() if not (runtime and key in cls.RUNTIME_KEYS)}
        allowed = _init_fields(cls)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ParameterError(f'unknown train parameters {unknown}; allowed: {sorted(allowed)}')
        optimizer = data.get('optimizer', 'adam')
        if optimizer not in cls.OPTIMIZERS:
            raise ParameterError(f'optimizer must be "adam" or "rlekf", got {optimizer!r}')
        size = data.get('committee_size', 1)
        if not _is_count(size):
            raise ParameterError(f'committee_size must be a positive integer, got {size!r}')
        if size > 1 and optimizer != 'adam':
            raise ParameterError('a committee (committee_size > 1) is trained with optimizer "adam" only')
        max_seconds = data.get('max_seconds')
        if max_seconds is not None and (not _is_number(max_seconds) or max_seconds <= 0):
            raise ParameterError(f'max_seconds must be a positive number of seconds, got {max_seconds!r}')
        device = data.get('device', 'auto')
        if device not in cls.DEVICES:
            raise ParameterError(f'device must be "auto", "cpu" or "cuda", got {device!r}')
        threads = data.get('num_threads')
        if threads is not None and not _is_count(threads):
            raise ParameterError(f'num_threads must be a positive integer or null, got {threads!r}')
        model = _model_section(data, optimizer)
        training = _section(data, 'training', _init_fields(TrainingConfig))
        rlekf = _section(data, 'rlekf', _init_fields(RLEKFConfig) | RLEKFParameters.KEYS)
        kpu = _section(data, 'kpu', _init_fields(KPUTrainedParameters))
        if training.get('compile_step') is True:
            kind = model_kind_of(model)
            if optimizer != 'adam':
                raise ParameterError(f'training.compile_step applies to optimizer "adam" only, not {optimizer!r}')
            if not MODEL_KINDS[kind].model_class().supports_compiled_training:
                raise ParameterError(
                    f'training.compile_step is implemented for model.kind "gmnn" only, not {kind!r}: set it to false'
                )
        return cls(
            model=model,
            optimizer=optimizer,
            training=_build('training', TrainingConfig.from_dict, training),
            rlekf=RLEKFParameters.from_dict(rlekf),
            committee_size=size,
            kpu=KPUTrainedParameters.from_dict(kpu),
            device=device,
            num_threads=threads,
            max_seconds=None if max_seconds is None else float(max_seconds),
        )

    def hyperparameters(self, species: Sequence[str]) -> Any:
        """The model's hyper-parameters, ``species`` (the dataset's) where :attr:`model` gives none."""
        return hyperparameters_from_dict({'species': list(species), **self.model})

    @property
    def model_kind(self) -> str:
        """The kind of model trained (``gmnn`` unless ``model.kind`` says otherwise)."""
        return model_kind_of(self.model)

    def training_config(self) -> TrainingConfig:
        """What :func:`~aiida_alkit.models.training.train` gets: :attr:`training` for Adam, RLEKF's epochs and batch
        size otherwise (:meth:`RLEKFParameters.training`)."""
        return self.rlekf.training() if self.optimizer == 'rlekf' else self.training


def train_problem(parameters: Mapping[str, Any]) -> str | None:
    """The message naming the first problem of train ``parameters`` (a user's dictionary), or None."""
    try:
        TrainParameters.from_dict(parameters)
    except ParameterError as exc:
        return str(exc)
    return None


def warm_start_problem(potential_kind: str, parameters: Mapping[str, Any]) -> str | None:
    """Why a potential of ``potential_kind`` cannot start the training that the train ``parameters`` ask for (a
    model of another kind, or a committee where they train one model and the reverse), or None. Problems of the
    parameters themselves are :func:`train_problem`'s to report."""
    try:
        wanted = model_kind_of(parameters.get('model') or {})
    except ValueError:
        return None
    if member_kind(potential_kind) != wanted:
        return f'it is a {potential_kind!r} potential, but model.kind is {wanted!r}'
    size = parameters.get('committee_size', 1)
    if is_committee(potential_kind) != (isinstance(size, int) and size > 1):
        return f'a {potential_kind!r} potential cannot warm-start training with committee_size = {size}'
    return None
