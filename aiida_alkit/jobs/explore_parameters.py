"""The explore job's parameters, typed: one source for the job (``jobs/explore.py``), the CalcJob's input validator,
the campaign's defaults and the docs.

``ExploreParameters.from_dict(parameters)`` checks a ``parameters.json`` dictionary and returns the typed settings
with every default filled in; a problem raises :class:`ParameterError` whose message names the key, the value and
what is allowed (the messages the CalcJob and the campaign report). Units are in the field names and docstrings:
fs, K, GPa, Å, eV/Å, 1/GPa; τ are dimensionless.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiida_alkit.exploration.bias import DEFAULT_BURN_IN
from aiida_alkit.jobs.common import GRANTED_CORES_KEY, ParameterError

__all__ = [
    'BarostatParameters',
    'BiasParameters',
    'ExploreParameters',
    'FeatureParameters',
    'HALStopParameters',
    'KPUParameters',
    'MonteCarloParameters',
    'ParameterError',
    'StopParameters',
    'explore_problem',
]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _known(data: Mapping[str, Any], cls: type, what: str, extra: frozenset[str] = frozenset()) -> None:
    """Refuse keys that are not fields of ``cls`` nor in ``extra`` (``what``: how the message names the group)."""
    allowed = {item.name for item in dataclasses.fields(cls) if item.init and item.name != 'plugins'} | extra
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ParameterError(f'unknown {what} parameters {unknown}; allowed: {sorted(allowed)}')


def _section(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The sub-dictionary ``data[key]`` (absent or null: empty)."""
    return dict(data.get(key) or {})


@dataclass(frozen=True)
class BiasParameters:
    """The bias of E_bias = E - τ u (seed 002 eq. 5, seed 003 eq. 6-8)."""

    kind: str = 'none'
    """'none', 'committee' (committee σ), 'gradient' (gradient-feature posterior, seed 003), 'hal' (seed 002) or a
    plugin's kind (:mod:`aiida_alkit.jobs.explore_terms`)."""
    tau: float = 0.0
    """Constant τ of the bias forces (dimensionless, ≥ 0)."""
    relative_tau: float | None = None
    """Adaptive τ: bias-force norm ≈ this × force norm (seed 002 eq. 12); overrides ``tau``."""
    stress_tau: float = 0.0
    """Constant τ_s of the bias stress (NPT; seed 003 eq. 7)."""
    relative_stress_tau: float | None = None
    """Adaptive τ_s: bias-stress norm ≈ this × stress norm (seed 003 eq. 8)."""
    burn_in_steps: int = DEFAULT_BURN_IN
    """MD steps with τ = τ_s = 0 before the adaptive strengths act (seed 002)."""
    species_strength: dict[str, float] | None = None
    """Per-element factor on τ (element → factor), or None."""
    dim: int = 256
    """Sketch dimension of the gradient features of the posterior (and of the calibration)."""
    force_structures: int = 50
    """HAL: training configurations whose forces enter the Bayesian ridge (eq. 18-19)."""
    options: dict[str, Any] | None = None
    """Settings of a plugin's bias kind (JSON values; the built-in kinds take none)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BiasParameters:
        from aiida_alkit.jobs.explore_terms import BUILTIN_BIAS_KINDS, bias_kinds

        _known(data, cls, 'bias')
        kind = data.get('kind', 'none')
        kinds = bias_kinds()
        if kind not in kinds:
            raise ParameterError(f'bias.kind must be one of {list(kinds)}, got {kind!r}')
        options = data.get('options')
        if options is not None and not isinstance(options, Mapping):
            raise ParameterError(f'bias.options must be a dictionary, got {options!r}')
        if options and kind in BUILTIN_BIAS_KINDS:
            raise ParameterError(f'bias.options are for plugin bias kinds; the built-in kind {kind!r} takes none')
        for key in ('tau', 'relative_tau', 'stress_tau', 'relative_stress_tau'):
            value = data.get(key)
            if value is not None and (not _is_number(value) or value < 0):
                raise ParameterError(f'bias.{key} must be a number >= 0, got {value!r}')
        burn_in = data.get('burn_in_steps', 0)
        if not _is_integer(burn_in) or burn_in < 0:
            raise ParameterError(f'bias.burn_in_steps must be an integer >= 0 (MD steps), got {burn_in!r}')
        return cls(
            kind=kind,
            tau=float(data.get('tau') or 0.0),
            relative_tau=data.get('relative_tau'),
            stress_tau=float(data.get('stress_tau') or 0.0),
            relative_stress_tau=data.get('relative_stress_tau'),
            burn_in_steps=int(data.get('burn_in_steps', DEFAULT_BURN_IN)),
            species_strength=data.get('species_strength') or None,
            dim=int(data.get('dim', 256)),
            force_structures=int(data.get('force_structures', 50)),
            options=dict(options) if options else None,
        )


@dataclass(frozen=True)
class BarostatParameters:
    """The NPT barostat (used when ``pressure_GPa`` is set)."""

    kind: str = 'stochastic'
    """'stochastic' (Bernetti-Bussi stochastic cell rescaling) or 'berendsen'."""
    tau_fs: float = 1000.0
    """τ_P, fs (seed 003: 1 ps)."""
    compressibility_per_GPa: float | None = None
    """β_T, 1/GPa, in (0, 10]; None: each walker's own from the model's E(V) curvature at its start."""
    anisotropic: bool = False
    """Berendsen only: scale with the full pressure tensor."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BarostatParameters:
        _known(data, cls, 'barostat')
        kind = data.get('kind', 'stochastic')
        if kind not in ('stochastic', 'berendsen'):
            raise ParameterError(
                f'barostat.kind must be "stochastic" (stochastic cell rescaling) or "berendsen", got {kind!r}'
            )
        tau = data.get('tau_fs', 1000.0)
        if not _is_number(tau) or tau <= 0:
            raise ParameterError(f'barostat.tau_fs must be a positive number (fs), got {tau!r}')
        beta = data.get('compressibility_per_GPa')
        if beta is not None and (not _is_number(beta) or not 0 < beta <= 10):
            raise ParameterError(
                f'barostat.compressibility_per_GPa must be in (0, 10] 1/GPa (or null: from the model), got {beta!r}'
            )
        if data.get('anisotropic') and kind != 'berendsen':
            raise ParameterError(
                'barostat.anisotropic needs barostat.kind "berendsen" (stochastic cell rescaling is isotropic here)'
            )
        return cls(
            kind=kind, tau_fs=float(tau), compressibility_per_GPa=beta, anisotropic=bool(data.get('anisotropic'))
        )


@dataclass(frozen=True)
class MonteCarloParameters:
    """HAL's Monte-Carlo moves on E_bias (seed 002); [accepted, attempted] per kind in results.json ``mc_acceptance``."""

    every: int = 10
    """MD steps between two rounds of moves."""
    swap: int = 1
    """Swap attempts per walker and round (walkers with two or more elements)."""
    volume: int = 0
    """Volume attempts per walker and round (needs ``pressure_GPa``)."""
    cell: int = 1
    """Cell-shape attempts per walker and round (needs ``pressure_GPa``)."""
    max_log_volume_change: float = 0.02
    """Largest change of ln V in a volume move, in (0, 0.5]."""
    cell_strain: float = 0.01
    """Largest strain component of a cell move, in (0, 0.5]."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonteCarloParameters:
        _known(data, cls, 'monte_carlo')
        for key, low in (('every', 1), ('swap', 0), ('volume', 0), ('cell', 0)):
            value = data.get(key, low)
            if not _is_integer(value) or value < low:
                raise ParameterError(f'monte_carlo.{key} must be an integer >= {low}, got {value!r}')
        for key in ('max_log_volume_change', 'cell_strain'):
            value = data.get(key, 0.01)
            if not _is_number(value) or not 0 < value <= 0.5:
                raise ParameterError(f'monte_carlo.{key} must be in (0, 0.5], got {value!r}')
        defaults = cls()
        values = {item.name: data.get(item.name, getattr(defaults, item.name)) for item in dataclasses.fields(cls)}
        return cls(**values)


@dataclass(frozen=True)
class HALStopParameters:
    """HAL's stop (seed 002 eq. 6-8): the softmax of the relative force uncertainty above ``s_tol``, or its maximum
    above ``f_tol`` (dimensionless)."""

    s_tol: float = 0.5
    f_tol: float | None = None


@dataclass(frozen=True)
class StopParameters:
    """When a walker stops, besides ``steps``."""

    max_force: float = 20.0
    """eV/Å: a larger atomic force marks the frame unphysical."""
    min_distance_fraction: float = 0.75
    """Unphysical below this fraction of the training set's shortest interatomic distance."""
    uncertainty: float | None = None
    """eV/Å: committee force deviation, or the calibrated gradient-feature atom uncertainty of a single model
    (seed 003), above which a walker stops."""
    calibration_alpha: float = 0.1
    """Conformal miscoverage of that calibration, in (0, 1)."""
    hal: HALStopParameters | None = None
    """HAL's stop (bias 'hal' only)."""
    gamma_break: float | None = None
    """D-optimality extrapolation grade (≥ 1) above which a walker stops (seed 004)."""
    check_every: int = 1
    """MD steps between two evaluations of gamma."""
    plugins: dict[str, Any] = field(default_factory=dict)
    """Settings of plugin stop criteria, from ``stop.<criterion name>`` (given and not null: the criterion is on)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], bias_kind: str) -> StopParameters:
        from aiida_alkit.jobs.explore_terms import BUILTIN_STOP_CRITERIA, stop_criteria

        plugin_names = frozenset(stop_criteria()) - frozenset(BUILTIN_STOP_CRITERIA)
        _known(data, cls, 'stop', extra=plugin_names)
        for key in ('max_force', 'min_distance_fraction', 'uncertainty', 'gamma_break'):
            value = data.get(key)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ParameterError(f'stop.{key} must be a positive number, got {value!r}')
        if data.get('gamma_break') is not None and data['gamma_break'] < 1:
            raise ParameterError(
                f'stop.gamma_break must be >= 1 (gamma <= 1 interpolates), got {data["gamma_break"]!r}'
            )
        alpha = data.get('calibration_alpha', 0.1)
        if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ParameterError(f'stop.calibration_alpha must be in (0, 1), got {alpha!r}')
        hal = None
        if data.get('hal'):
            if bias_kind != 'hal':
                raise ParameterError(f'stop.hal needs bias.kind "hal", got {bias_kind!r}')
            unknown = sorted(set(data['hal']) - {'s_tol', 'f_tol'})
            if unknown:
                raise ParameterError(f'unknown stop.hal parameters {unknown}; allowed: f_tol, s_tol')
            hal = HALStopParameters(s_tol=data['hal'].get('s_tol', 0.5), f_tol=data['hal'].get('f_tol'))
        if data.get('uncertainty') is not None and bias_kind == 'hal':
            raise ParameterError('stop.uncertainty does not apply to the hal bias: use stop.hal (s_tol, f_tol)')
        return cls(
            max_force=float(data.get('max_force') or 20.0),
            min_distance_fraction=float(data.get('min_distance_fraction') or 0.75),
            uncertainty=data.get('uncertainty'),
            calibration_alpha=float(alpha),
            hal=hal,
            gamma_break=data.get('gamma_break'),
            check_every=int(data.get('check_every', 1)),
            plugins={name: data[name] for name in sorted(plugin_names) if data.get(name) is not None},
        )


@dataclass(frozen=True)
class FeatureParameters:
    """Gradient features of the candidates for the select step."""

    kind: str = 'sketch'
    """'sketch' (random projections of all gradients) or 'last_layer'."""
    dim: int = 512
    """Sketch projections."""
    normalise_per_atom: bool = True
    """Structure features as per-atom means (seed 003 eq. 21) or sums (False, seed 001 eq. 11)."""

    @classmethod
    def from_dict(cls, data: Any) -> FeatureParameters:
        if not isinstance(data, dict):
            raise ParameterError(f'features must be a dictionary or null, got {data!r}')
        _known(data, cls, 'features')
        if data.get('kind', 'sketch') not in ('sketch', 'last_layer'):
            raise ParameterError(f'features.kind must be "sketch" or "last_layer", got {data["kind"]!r}')
        dim = data.get('dim', 512)
        if not _is_integer(dim) or dim < 1:
            raise ParameterError(f'features.dim must be a positive integer, got {dim!r}')
        if not isinstance(data.get('normalise_per_atom', True), bool):
            raise ParameterError(
                f'features.normalise_per_atom must be true or false, got {data["normalise_per_atom"]!r}'
            )
        return cls(kind=data.get('kind', 'sketch'), dim=dim, normalise_per_atom=data.get('normalise_per_atom', True))


@dataclass(frozen=True)
class KPUParameters:
    """Kalman prediction uncertainty of the candidates, when the potential carries RLEKF P blocks."""

    fraction: float = 0.5
    """Share of the P blocks sampled."""


@dataclass(frozen=True)
class ExploreParameters:
    """Everything the explore job reads from ``parameters.json`` (defaults filled in)."""

    walkers: int = 4
    """Independent MD runs (walkers), started from the seed structures (cycled, shuffled)."""
    steps: int = 200
    """MD steps per walker at most."""
    timestep_fs: float = 2.0
    """fs, at most 10."""
    temperature_K: float = 300.0
    """Langevin (BAOAB) thermostat temperature, K."""
    friction_per_fs: float = 0.01
    """Langevin friction, 1/fs."""
    pressure_GPa: float | None = None
    """A number: NPT (``barostat``) and volume/cell Monte-Carlo moves; None: NVT, fixed cell."""
    sample_every: int = 10
    """MD steps between two candidate frames of a walker (plus its stop frame)."""
    seed: int = 0
    bias: BiasParameters = field(default_factory=BiasParameters)
    barostat: BarostatParameters = field(default_factory=BarostatParameters)
    monte_carlo: MonteCarloParameters | None = None
    """HAL's Monte-Carlo moves, or None."""
    stop: StopParameters = field(default_factory=StopParameters)
    features: FeatureParameters | None = field(default_factory=FeatureParameters)
    """Gradient features of the candidates; None (``"features": null`` or ``{}``): none."""
    features_requested: bool = field(default=False, init=False)
    """Whether ``features`` was given: only then do the candidate scores alone justify a calibration."""
    kpu: KPUParameters = field(default_factory=KPUParameters)
    device: str = 'auto'
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    num_threads: int | None = None
    """torch threads; None: the cores the scheduler granted (``granted_cores``, written by the CalcJob)."""
    neighbor_skin_A: float = 1.0
    """Verlet skin, Å: neighbour lists rebuilt only when an atom may have moved more than skin/2; 0: every step."""

    #: Keys of parameters.json that are not settings (written by the CalcJob, read by ``jobs.common``).
    RUNTIME_KEYS: ClassVar[frozenset[str]] = frozenset({GRANTED_CORES_KEY})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], runtime: bool = False) -> ExploreParameters:
        """The typed parameters of ``data`` (parameters.json); :class:`ParameterError` names the first problem.

        :param runtime: accept the keys the CalcJob adds (:attr:`RUNTIME_KEYS`), as the job does.
        """
        data = {key: value for key, value in data.items() if not (runtime and key in cls.RUNTIME_KEYS)}
        _known(data, cls, 'explore')
        for key, low in (('walkers', 1), ('steps', 1), ('sample_every', 1)):
            value = data.get(key, low)
            if not isinstance(value, int) or value < low:
                raise ParameterError(f'{key} must be an integer >= {low}, got {value!r}')
        for key in ('timestep_fs', 'temperature_K', 'friction_per_fs'):
            value = data.get(key, 1.0)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ParameterError(f'{key} must be a positive number, got {value!r}')
        if (data.get('timestep_fs') or 0) > 10:
            raise ParameterError(f'timestep_fs={data["timestep_fs"]} is far too large for atomistic MD (use <= 10 fs)')
        skin = data.get('neighbor_skin_A', 1.0)
        if not _is_number(skin) or not 0 <= skin < math.inf:
            raise ParameterError(
                f'neighbor_skin_A must be a number >= 0 (Verlet skin, Å; 0: rebuild every step), got {skin!r}'
            )
        bias = BiasParameters.from_dict(_section(data, 'bias'))
        barostat = BarostatParameters.from_dict(_section(data, 'barostat'))
        monte_carlo = MonteCarloParameters.from_dict(_section(data, 'monte_carlo')) if data.get('monte_carlo') else None
        features = data.get('features', {'kind': 'sketch'})  # absent: the default features; null or {}: none
        features = FeatureParameters.from_dict(features) if features else None
        stop = StopParameters.from_dict(_section(data, 'stop'), bias.kind)
        defaults = cls()
        parameters = cls(
            **{
                key: data.get(key, getattr(defaults, key))
                for key in ('walkers', 'steps', 'sample_every', 'device', 'num_threads')
            },
            seed=int(data.get('seed', 0)),
            timestep_fs=float(data.get('timestep_fs', defaults.timestep_fs)),
            temperature_K=float(data.get('temperature_K', defaults.temperature_K)),
            friction_per_fs=float(data.get('friction_per_fs', defaults.friction_per_fs)),
            pressure_GPa=data.get('pressure_GPa'),
            bias=bias,
            barostat=barostat,
            monte_carlo=monte_carlo,
            stop=stop,
            features=features,
            kpu=KPUParameters(fraction=float(_section(data, 'kpu').get('fraction', 0.5))),
            neighbor_skin_A=float(skin),
        )
        object.__setattr__(parameters, 'features_requested', bool(data.get('features')))
        return parameters


def explore_problem(parameters: Mapping[str, Any]) -> str | None:
    """The message naming the first problem of explore ``parameters`` (a user's dictionary), or None."""
    try:
        ExploreParameters.from_dict(parameters)
    except ParameterError as exc:
        return str(exc)
    return None
