"""Batched (biased) molecular dynamics of many walkers, stop criteria, barostats, HAL's Monte-Carlo moves, schedules.

All walkers advance together: one batched potential call per step
(:class:`~aiida_alkit.exploration.bias.BiasedPotential` or any object with the same ``evaluate``), the integrator works on the flat (N, 3) arrays of all
atoms. A walker that stops (reason recorded) is removed from the batch and never restarts; an unphysical walker
(NaN, huge forces, overlapping atoms, absurd density, an exception in its evaluation) is stopped, never crashes
the run.

* Thermostat: Langevin in the BAOAB splitting (Leimkuhler & Matthews), per walker temperature T (K) and friction
  γ (1/fs): ``B: v += dt/2 F/m; A: x += dt/2 v; O: v = e^{-γ dt} v + sqrt(1 - e^{-2γ dt}) sqrt(kT/m) ξ; A; B``,
  with F = F + F^bias (seeds/002 eq. 11, seeds/003 eq. 6). Each walker draws its noise from its own seeded stream,
  so its random numbers do not depend on which other walkers are still running.
* Barostats (NPT), applied after the position update with the instantaneous pressure tensor
  ``P = (1/V) Σ m v⊗v - (σ + σ^bias)``, so that the bias stress of seeds/003 eq. 7 drives the cell:
  :class:`StochasticCellRescaling` (Bernetti & Bussi, J. Chem. Phys. 153, 114107 (2020); isotropic): first-order
  stochastic dynamics of ε = ln V that samples the isothermal-isobaric volume distribution, fluctuations included
  (seeds/003 uses an MTK / Nosé-Hoover barostat, which samples the same ensemble); and :class:`BerendsenBarostat`
  (seeds/002: "a proportional control barostat"), isotropic or anisotropic, which suppresses the volume fluctuations.
  :func:`estimate_compressibility` gives each walker the β_T of its own model (``B = V ∂²E/∂V²``).
* Monte-Carlo moves on E_bias (seeds/002 "cell volume adjusting (adding Gaussian noise to cell vectors) and element
  swapping MC steps ... accepted or rejected according to the Metropolis-Hastings algorithm"): swaps of two atoms of
  different elements; isotropic volume moves ``ln V' = ln V + U(-δ, δ)``; cell moves ``h' = h exp(A)`` with a
  symmetric Gaussian log-strain A (volume and shape). Positions keep their fractional coordinates; volume and cell
  moves are accepted with probability ``min(1, exp(-[ΔE_bias + P ΔV]/kT + (N + 1) ln(V'/V)))``.
* Stop criteria (per walker, first reason wins): unphysical (``nan``, ``max_force`` > 20 eV/Å — seeds/003's force
  filter —, ``min_distance`` below a fraction of the training minimum, ``density`` out of bounds), the calibrated
  atom uncertainty above a threshold (seeds/003: 1.0-1.5 eV/Å), HAL's ``max_i f_i > f_tol`` or
  ``max_i softmax(f)_i > s_tol`` (seeds/002 eq. 7-8), and ``max_steps``.

Units: Å, fs, K, GPa (inputs), eV, eV/Å, eV/Å³, amu. No AiiDA import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from ase import units

from aiida_alkit.exploration.bias import (
    DEFAULT_EPSILON,
    PotentialResult,
    relative_force_uncertainty,
    segment_max,
    softmax_max,
)

__all__ = [
    'BatchedMD',
    'BerendsenBarostat',
    'ExplorationResult',
    'HALStop',
    'MonteCarlo',
    'PhysicalLimits',
    'Schedule',
    'StochasticCellRescaling',
    'StopCriterion',
    'UncertaintyThreshold',
    'WalkerSystem',
    'cell_move',
    'estimate_compressibility',
    'metropolis_accept',
    'swap_move',
    'volume_move',
]

#: Boltzmann constant, eV/K.
KB = units.kB
#: 1 GPa in eV/Å³.
GPA = units.GPa
#: amu/Å³ in g/cm³.
AMU_PER_A3_IN_G_PER_CM3 = 1.66053906660
#: Forces above this (eV/Å) make a frame unphysical (seeds/003: "a force threshold of 20 eV/Å").
MAX_FORCE = 20.0
#: Compressibility β_T, 1/GPa, where the model gives none: a bulk modulus of 100 GPa (metals, semiconductors).
DEFAULT_COMPRESSIBILITY = 0.01
#: Range of β_T accepted from the model, 1/GPa: bulk moduli from 1 GPa (soft frameworks) to 1000 GPa (diamond 440).
COMPRESSIBILITY_BOUNDS = (1e-3, 1.0)


# ---------------------------------------------------------------------------------------------------------- schedule
class Schedule:
    """A value (temperature K, pressure GPa) as a function of an index (MD step or active-learning round).

    ``kind='linear'`` interpolates linearly between the knots, ``kind='step'`` holds the value of the last knot at
    or before the index; both are constant outside the knots.
    """

    def __init__(self, knots: Sequence[float], values: Sequence[float], kind: str = 'linear') -> None:
        knots = np.asarray(knots, dtype=np.float64).reshape(-1)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if knots.size == 0 or knots.shape != values.shape or np.any(np.diff(knots) <= 0):
            raise ValueError('a schedule needs increasing knots and one value per knot')
        if kind not in ('linear', 'step'):
            raise ValueError(f"kind must be 'linear' or 'step', got {kind!r}")
        self.knots, self.values, self.kind = knots, values, kind

    @classmethod
    def constant(cls, value: float) -> Schedule:
        return cls([0.0], [value])

    @classmethod
    def linear(cls, start: float, stop: float, length: int) -> Schedule:
        """Linear ramp from ``start`` at index 0 to ``stop`` at index ``length - 1`` (e.g. 300 -> 1400 K)."""
        if length < 2:
            return cls.constant(stop)
        return cls([0.0, float(length - 1)], [start, stop])

    @classmethod
    def staircase(cls, values: Sequence[float], repeat: int = 1) -> Schedule:
        """Each value held for ``repeat`` indices: ``staircase([500, 800, 1200, 1400], 3)`` is seeds/000 Table 2."""
        return cls([repeat * i for i in range(len(values))], values, kind='step')

    def __call__(self, index: float) -> float:
        if self.kind == 'linear':
            return float(np.interp(index, self.knots, self.values))
        position = int(np.searchsorted(self.knots, index, side='right')) - 1
        return float(self.values[max(position, 0)])


def _per_walker(value: Any, step: int, walker_ids: np.ndarray) -> np.ndarray:
    """Resolve a number, a :class:`Schedule` (of the MD step) or a per-walker sequence to (B,) values."""
    if value is None:
        return np.full(len(walker_ids), np.nan)
    if isinstance(value, Schedule):
        return np.full(len(walker_ids), value(step))
    if callable(value):
        return np.full(len(walker_ids), float(value(step)))
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return np.full(len(walker_ids), float(array))
    return array[walker_ids]


# ---------------------------------------------------------------------------------------------------------- system
@dataclass
class WalkerSystem:
    """The active walkers as flat arrays (the layout of ``ConfigurationArrays``).

    :param positions: (N, 3) Å. :param velocities: (N, 3) Å per ASE time unit. :param masses: (N,) amu.
    :param numbers: (N,) atomic numbers. :param cells: (B, 3, 3) Å (rows). :param pbc: (B, 3) bool.
    :param offsets: (B + 1,). :param walker_ids: (B,) int, the walker of each structure.
    """

    positions: np.ndarray
    velocities: np.ndarray
    masses: np.ndarray
    numbers: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    offsets: np.ndarray
    walker_ids: np.ndarray

    @classmethod
    def from_atoms(cls, structures: Sequence[Any], walker_ids: Sequence[int] | None = None) -> WalkerSystem:
        """Walkers from ASE ``Atoms`` (velocities from their momenta; zeros when absent)."""
        structures = list(structures)
        if not structures:
            raise ValueError('need at least one walker')
        sizes = np.array([len(atoms) for atoms in structures], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return cls(
            positions=np.concatenate([atoms.get_positions() for atoms in structures]).astype(np.float64),
            velocities=np.concatenate([atoms.get_velocities() for atoms in structures]).astype(np.float64),
            masses=np.concatenate([atoms.get_masses() for atoms in structures]).astype(np.float64),
            numbers=np.concatenate([atoms.numbers for atoms in structures]).astype(np.int64),
            cells=np.stack([np.asarray(atoms.cell[:], dtype=np.float64) for atoms in structures]),
            pbc=np.stack([np.asarray(atoms.pbc, dtype=bool) for atoms in structures]),
            offsets=offsets,
            walker_ids=np.arange(len(structures)) if walker_ids is None else np.asarray(walker_ids, dtype=np.int64),
        )

    @property
    def n_structures(self) -> int:
        return len(self.walker_ids)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def structure_index(self) -> np.ndarray:
        """(N,) structure row of each atom."""
        return np.repeat(np.arange(self.n_structures), self.sizes)

    @property
    def periodic(self) -> np.ndarray:
        """(B,) walkers periodic in all three directions."""
        return self.pbc.all(axis=1)

    def volumes(self) -> np.ndarray:
        """(B,) abs(det(cell)), Å³."""
        return np.abs(np.linalg.det(self.cells))

    def kinetic_tensor(self) -> np.ndarray:
        """(B, 3, 3) Σ_i m_i v_i ⊗ v_i per walker, eV."""
        out = np.zeros((self.n_structures, 3, 3))
        np.add.at(
            out,
            self.structure_index,
            self.masses[:, None, None] * self.velocities[:, :, None] * self.velocities[:, None, :],
        )
        return out

    def temperatures(self) -> np.ndarray:
        """(B,) kinetic temperature 2 E_kin / (3 N k_B), K."""
        kinetic = np.zeros(self.n_structures)
        np.add.at(kinetic, self.structure_index, 0.5 * self.masses * np.square(self.velocities).sum(axis=1))
        return 2.0 * kinetic / (3.0 * self.sizes * KB)

    def densities(self) -> np.ndarray:
        """(B,) mass density, g/cm³ (NaN for non-periodic walkers)."""
        mass = np.zeros(self.n_structures)
        np.add.at(mass, self.structure_index, self.masses)
        volume = self.volumes()
        with np.errstate(divide='ignore', invalid='ignore'):
            density = mass / volume * AMU_PER_A3_IN_G_PER_CM3
        return np.where(self.periodic, density, np.nan)

    def subset(self, rows: Sequence[int] | np.ndarray) -> WalkerSystem:
        """Copy of the walkers ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.sizes[rows]
        atoms = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) if len(rows) else []
        atoms = np.asarray(atoms, dtype=np.int64)
        return WalkerSystem(
            positions=self.positions[atoms].copy(),
            velocities=self.velocities[atoms].copy(),
            masses=self.masses[atoms].copy(),
            numbers=self.numbers[atoms].copy(),
            cells=self.cells[rows].copy(),
            pbc=self.pbc[rows].copy(),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            walker_ids=self.walker_ids[rows].copy(),
        )

    def copy(self) -> WalkerSystem:
        return self.subset(np.arange(self.n_structures))

    def atoms_slice(self, row: int) -> slice:
        return slice(int(self.offsets[row]), int(self.offsets[row + 1]))

    def to_atoms(self, row: int) -> Any:
        """Walker ``row`` as ``ase.Atoms`` (with velocities)."""
        from ase import Atoms

        part = self.atoms_slice(row)
        atoms = Atoms(
            numbers=self.numbers[part], positions=self.positions[part], cell=self.cells[row], pbc=self.pbc[row]
        )
        atoms.set_masses(self.masses[part])
        atoms.set_velocities(self.velocities[part])
        return atoms

    def wrap(self) -> None:
        """Wrap the atoms of fully periodic walkers into their cell (forces are unchanged)."""
        for row in np.flatnonzero(self.periodic):
            part = self.atoms_slice(row)
            cell = self.cells[row]
            try:
                fractional = np.linalg.solve(cell.T, self.positions[part].T).T
            except np.linalg.LinAlgError:
                continue
            self.positions[part] = (fractional - np.floor(fractional)) @ cell

    def finite(self) -> np.ndarray:
        """(B,) all positions, velocities and the cell finite."""
        ok = np.isfinite(self.positions).all(axis=1) & np.isfinite(self.velocities).all(axis=1)
        per_walker = np.ones(self.n_structures, dtype=bool)
        np.logical_and.at(per_walker, self.structure_index, ok)
        return per_walker & np.isfinite(self.cells).all(axis=(1, 2))


# ---------------------------------------------------------------------------------------------------------- criteria
class StopCriterion(Protocol):
    """A per-walker stop test: ``check(system, result) -> (reasons (B,) str, '' = go on; values name -> (B,))``."""

    unphysical: bool

    def check(self, system: WalkerSystem, result: PotentialResult) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


AtomValues = Callable[[WalkerSystem, PotentialResult], np.ndarray]


def _default_atom_uncertainty(system: WalkerSystem, result: PotentialResult) -> np.ndarray:
    if result.atom_uncertainty is None:
        raise ValueError('the potential reports no per-atom uncertainty; pass a callable to UncertaintyThreshold')
    return result.atom_uncertainty


class UncertaintyThreshold:
    """Stop when the (calibrated) max atom uncertainty of a walker exceeds ``threshold`` (seeds/003, eV/Å).

    :param threshold: eV/Å (seeds/003 uses 1.0-1.5 eV/Å).
    :param atom_uncertainty: callable (system, result) -> (N,) per-atom uncertainty in eV/Å, e.g. a conformally
        calibrated feature/GP uncertainty; default ``result.atom_uncertainty`` (the committee force deviation).
    :param name: key of the recorded per-walker maximum.
    """

    unphysical = False

    def __init__(
        self, threshold: float, atom_uncertainty: AtomValues | None = None, name: str = 'max_atom_force_unc'
    ) -> None:
        self.threshold = float(threshold)
        self.atom_uncertainty = atom_uncertainty or _default_atom_uncertainty
        self.name = name

    def check(self, system: WalkerSystem, result: PotentialResult) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = np.asarray(self.atom_uncertainty(system, result), dtype=np.float64).reshape(-1)
        maxima = segment_max(values, system.structure_index, system.n_structures)
        fire = maxima > self.threshold
        return np.where(fire, 'uncertainty', ''), {self.name: maxima}


def _default_relative_force(system: WalkerSystem, result: PotentialResult, epsilon: float) -> np.ndarray:
    if result.member_forces is None or result.member_forces.shape[0] < 2:
        raise ValueError('HALStop needs member forces of a committee (or a relative_force callable)')
    return relative_force_uncertainty(result.member_forces, epsilon)


class HALStop:
    """HAL stopping criterion (seeds/002 eq. 6-8): ``max_i f_i > f_tol`` or ``max_i exp f_i / Σ_j exp f_j > s_tol``.

    :param f_tol: tolerance on the relative force uncertainty (None: not used).
    :param s_tol: tolerance on the softmax (0.5 in seeds/002; None: not used).
    :param epsilon: ε of eq. 6, eV/Å.
    :param relative_force: callable (system, result) -> (N,) f_i; default from the committee member forces.
    """

    unphysical = False

    def __init__(
        self,
        f_tol: float | None = None,
        s_tol: float | None = 0.5,
        epsilon: float = DEFAULT_EPSILON,
        relative_force: AtomValues | None = None,
    ) -> None:
        self.f_tol, self.s_tol, self.epsilon = f_tol, s_tol, float(epsilon)
        self.relative_force = relative_force

    def check(self, system: WalkerSystem, result: PotentialResult) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.relative_force is None:
            f = _default_relative_force(system, result, self.epsilon)
        else:
            f = np.asarray(self.relative_force(system, result), dtype=np.float64).reshape(-1)
        index, n = system.structure_index, system.n_structures
        f_max = segment_max(f, index, n)
        s_max = softmax_max(f, index, n)
        reasons = np.full(n, '', dtype=object)
        if self.s_tol is not None:
            reasons[s_max > self.s_tol] = 'hal_s_tol'
        if self.f_tol is not None:
            reasons[f_max > self.f_tol] = 'hal_f_tol'
        return reasons.astype(str), {'f_max': f_max, 's_max': s_max}


class PhysicalLimits:
    """Unphysical frames: NaN/inf, any force component > ``max_force``, a pair closer than ``min_distance_fraction``
    × ``training_min_distance``, density outside ``density_bounds``. The frame is excluded from the pool.

    :param max_force: eV/Å (20, seeds/003); applied to the physical (unbiased) force components.
    :param training_min_distance: shortest interatomic distance in the training set, Å (None: not checked).
    :param min_distance_fraction: fraction of it below which a frame is unphysical.
    :param density_bounds: (low, high) g/cm³ for periodic walkers (None: not checked).
    :param min_volume_per_atom: Å³; a periodic walker compressed below it is stopped (``density``) before its
        neighbour list is built (a collapsed cell would have an enormous number of periodic images).
    """

    unphysical = True

    def __init__(
        self,
        max_force: float | None = MAX_FORCE,
        training_min_distance: float | None = None,
        min_distance_fraction: float = 0.75,
        density_bounds: tuple[float, float] | None = None,
        min_volume_per_atom: float = 1.0,
    ) -> None:
        self.max_force = max_force
        self.min_volume_per_atom = float(min_volume_per_atom)
        self.training_min_distance = training_min_distance
        self.min_distance_fraction = float(min_distance_fraction)
        self.density_bounds = density_bounds

    def precheck(self, system: WalkerSystem) -> np.ndarray:
        """(B,) reasons found before evaluating the model: ``nan`` (non-finite state) or ``density``."""
        reasons = np.full(system.n_structures, '', dtype=object)
        with np.errstate(all='ignore'):
            per_atom = system.volumes() / system.sizes
            dense = system.periodic & ~(per_atom >= self.min_volume_per_atom)
            if self.density_bounds is not None:
                density = system.densities()
                dense |= system.periodic & ~((density >= self.density_bounds[0]) & (density <= self.density_bounds[1]))
        reasons[dense] = 'density'
        reasons[~system.finite()] = 'nan'
        return reasons.astype(str)

    def check(self, system: WalkerSystem, result: PotentialResult) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n, index = system.n_structures, system.structure_index
        reasons = np.full(n, '', dtype=object)
        values: dict[str, np.ndarray] = {}
        if self.density_bounds is not None:
            density = system.densities()
            low, high = self.density_bounds
            reasons[system.periodic & ~((density >= low) & (density <= high))] = 'density'
            values['density'] = density
        if self.training_min_distance is not None and result.min_distance is not None:
            limit = self.min_distance_fraction * self.training_min_distance
            reasons[result.min_distance < limit] = 'min_distance'
        if self.max_force is not None and result.forces is not None:
            force_max = segment_max(np.abs(result.forces).max(axis=1), index, n)
            values['force_max'] = force_max
            reasons[force_max > self.max_force] = 'max_force'
        bad = ~np.isfinite(result.energy) | ~system.finite()
        for array in (result.forces, result.bias_forces):
            if array is not None:
                atom_ok = np.isfinite(array).all(axis=1)
                ok = np.ones(n, dtype=bool)
                np.logical_and.at(ok, index, atom_ok)
                bad |= ~ok
        reasons[bad] = 'nan'
        return reasons.astype(str), values


# ---------------------------------------------------------------------------------------------------------- barostat
def pressure_tensor(system: WalkerSystem, result: PotentialResult, include_bias: bool = True) -> np.ndarray:
    """(B, 3, 3) instantaneous pressure (1/V) Σ m v⊗v - σ (σ + σ^bias with ``include_bias``), eV/Å³."""
    stress = result.total_stress() if include_bias else result.stress
    volume = np.where(system.periodic, system.volumes(), 1.0)
    kinetic = system.kinetic_tensor() / volume[:, None, None]
    return kinetic - (0.0 if stress is None else stress)


@dataclass
class BerendsenBarostat:
    """Berendsen proportional-control barostat (see the module docstring).

    :param tau: coupling time τ_P, fs. :param compressibility: β, 1/GPa (Cu: ~1/140), a number or one per walker id.
    :param anisotropic: scale with the full pressure tensor (else with its trace).
    :param max_scaling: largest abs(μ - 1) per step.
    """

    tau: float = 1000.0
    compressibility: float | Sequence[float] = 1.0 / 140.0
    anisotropic: bool = False
    max_scaling: float = 0.01

    def pressure_tensor(self, system: WalkerSystem, result: PotentialResult, include_bias: bool = True) -> np.ndarray:
        """(B, 3, 3) instantaneous pressure (1/V) Σ m v⊗v - σ (σ + σ^bias with ``include_bias``), eV/Å³."""
        return pressure_tensor(system, result, include_bias)

    def apply(
        self,
        system: WalkerSystem,
        result: PotentialResult,
        target: np.ndarray,
        dt: np.ndarray,
        temperature: np.ndarray | None = None,
        rngs: Sequence[Any] | None = None,
    ) -> None:
        """Scale cells and positions of periodic walkers in place; ``target`` (B,) GPa, ``dt`` (B,) fs.

        ``temperature`` and ``rngs`` are not used (the interface of :class:`StochasticCellRescaling`).
        """
        if result.stress is None:
            return
        pressure = self.pressure_tensor(system, result) / GPA  # GPa
        pressure = 0.5 * (pressure + pressure.transpose(0, 2, 1))
        beta = _per_walker(self.compressibility, 0, system.walker_ids)
        factor = (beta * dt / (3.0 * self.tau))[:, None, None]
        eye = np.eye(3)[None]
        if self.anisotropic:
            mu = eye + factor * (pressure - target[:, None, None] * eye)
        else:
            trace = np.trace(pressure, axis1=1, axis2=2) / 3.0
            mu = eye + factor * (trace - target)[:, None, None] * eye
        mu = eye + np.clip(mu - eye, -self.max_scaling, self.max_scaling)
        index = system.structure_index
        for row in np.flatnonzero(system.periodic & np.isfinite(mu).all(axis=(1, 2)) & np.isfinite(target)):
            part = index == row
            system.cells[row] = system.cells[row] @ mu[row]
            system.positions[part] = system.positions[part] @ mu[row]


@dataclass
class StochasticCellRescaling:
    """Isotropic stochastic cell rescaling (Bernetti & Bussi, J. Chem. Phys. 153, 114107 (2020), Euler form).

    Per step of length dt (fs), for each periodic walker, with ε = ln V, β_T in Å³/eV and P, P_0 in eV/Å³::

        dε = -(β_T/τ_P) (P_0 - P_int) dt + sqrt(2 k_B T β_T dt / (V τ_P)) ξ,      ξ ~ N(0, 1)
        cell, positions *= exp(dε/3);   velocities *= exp(-dε/3)

    with P_int the trace/3 of the instantaneous pressure (kinetic part from the velocities, stress with the bias
    stress) and T the thermostat's target temperature. The noise makes the walk in ln V sample
    ``p(V) ∝ V^N exp(-(E + P_0 V)/kT)``, so the volume fluctuates as in the NPT ensemble, unlike Berendsen's; β_T and
    τ_P set only the relaxation time (τ_P when β_T is the material's compressibility).

    It is implemented here, on the batched :class:`WalkerSystem`, because ASE's barostats (``IsotropicMTKNPT``,
    ``MTKNPT``, ``MelchionnaNPT``, ``NPTBerendsen``) are complete integrators of one ``Atoms`` object with their own
    thermostat and calculator: they cannot advance many walkers with one batched model call per step, nor take the
    bias stress and Langevin BAOAB of :class:`BatchedMD`.

    :param tau: τ_P, fs (seeds/003: 1 ps). :param compressibility: β_T, 1/GPa, a number or one per walker id.
    :param max_scaling: largest abs(exp(dε/3) - 1) per step, a guard against blow-ups (rarely active: the noise of
        exp(dε/3) is ~1e-4 per step for 100 Cu atoms at 300 K with τ_P = 1 ps and dt = 2 fs).
    """

    tau: float = 1000.0
    compressibility: float | Sequence[float] = DEFAULT_COMPRESSIBILITY
    max_scaling: float = 0.01

    def apply(
        self,
        system: WalkerSystem,
        result: PotentialResult,
        target: np.ndarray,
        dt: np.ndarray,
        temperature: np.ndarray | None = None,
        rngs: Sequence[Any] | None = None,
    ) -> None:
        """Rescale cells, positions and velocities of periodic walkers in place.

        :param target: (B,) P_0, GPa. :param dt: (B,) fs. :param temperature: (B,) T, K (required).
        :param rngs: one ``numpy.random.Generator`` per row (required).
        """
        if result.stress is None:
            return
        if temperature is None or rngs is None:
            raise ValueError('StochasticCellRescaling needs the target temperatures and one random stream per walker')
        pressure = np.trace(pressure_tensor(system, result), axis1=1, axis2=2) / 3.0  # eV/Å³
        volume = np.where(system.periodic, system.volumes(), 1.0)
        beta = _per_walker(self.compressibility, 0, system.walker_ids) / GPA  # Å³/eV
        rate = beta * dt / self.tau
        noise = np.array([rng.standard_normal() for rng in rngs])
        with np.errstate(invalid='ignore'):
            spread = np.sqrt(2.0 * KB * np.maximum(temperature, 0.0) * rate / volume)
        d_epsilon = -rate * (target * GPA - pressure) + spread * noise
        scale = np.clip(np.exp(d_epsilon / 3.0), 1.0 - self.max_scaling, 1.0 + self.max_scaling)
        for row in np.flatnonzero(system.periodic & np.isfinite(scale) & np.isfinite(target)):
            part = system.atoms_slice(row)
            system.cells[row] *= scale[row]
            system.positions[part] *= scale[row]
            system.velocities[part] /= scale[row]


def estimate_compressibility(
    potential: Any,
    system: WalkerSystem,
    volume_strain: float = 0.02,
    default: float = DEFAULT_COMPRESSIBILITY,
    bounds: tuple[float, float] = COMPRESSIBILITY_BOUNDS,
) -> np.ndarray:
    """(B,) isothermal compressibility β_T = 1/B of each walker from its model, 1/GPa.

    ``B = V ∂²E/∂V²`` by central differences of the (physical, member-mean) energy at V(1 ± h) (isotropic scaling,
    positions with the cell; two energy-only batched evaluations), clipped to ``bounds``; ``default`` where the walker
    is not periodic or the curvature is not positive and finite (e.g. an untrained model).
    """
    out = np.full(system.n_structures, float(default))
    rows = np.flatnonzero(system.periodic)
    if rows.size == 0:
        return out
    energies = []
    for factor in (1.0 - volume_strain, 1.0, 1.0 + volume_strain):
        trial = system.subset(rows)
        scale = factor ** (1.0 / 3.0)
        trial.cells *= scale
        trial.positions *= scale
        try:
            energies.append(potential.evaluate(trial, forces=False, update_strength=False).energy)
        except Exception:  # an unusable model keeps the default
            return out
    lower, centre, upper = energies
    volume = system.volumes()[rows]
    with np.errstate(all='ignore'):
        modulus = (upper - 2.0 * centre + lower) / (volume_strain**2 * volume) / GPA  # GPa
        beta = 1.0 / modulus
    good = np.isfinite(beta) & (modulus > 0)
    out[rows[good]] = np.clip(beta[good], *bounds)
    return out


# ---------------------------------------------------------------------------------------------------------- Monte Carlo
EnergyFunction = Callable[[WalkerSystem], np.ndarray]


def metropolis_accept(delta: np.ndarray, kT: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Metropolis test: accept with probability min(1, exp(-Δ/kT)); Δ and kT in eV. NaN Δ is rejected."""
    delta = np.asarray(delta, dtype=np.float64)
    with np.errstate(over='ignore', invalid='ignore'):
        ratio = np.exp(-np.clip(delta / kT, -700.0, 700.0))
    return np.isfinite(delta) & ((delta <= 0) | (uniforms < ratio))


def swap_move(
    system: WalkerSystem, energy_fn: EnergyFunction, current: np.ndarray, kT: np.ndarray, rngs: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """One element-swap attempt per walker on the biased energy (in place); returns (accepted (B,), energies (B,)).

    Atom i is drawn uniformly, atom j uniformly among the atoms of another element; their positions are exchanged
    (masses and velocities stay with the atoms, so the kinetic energy is unchanged). The proposal is symmetric.
    Walkers with a single element make no move.
    """
    trial = system.copy()
    moved = np.zeros(system.n_structures, dtype=bool)
    for row in range(system.n_structures):
        rng = rngs[row]
        part = system.atoms_slice(row)
        numbers = system.numbers[part]
        if np.unique(numbers).size < 2:
            continue
        i = int(rng.integers(len(numbers)))
        others = np.flatnonzero(numbers != numbers[i])
        j = int(others[rng.integers(len(others))])
        i, j = i + part.start, j + part.start
        trial.positions[[i, j]] = trial.positions[[j, i]]
        moved[row] = True
    return _accept(system, trial, energy_fn, current, np.zeros(system.n_structures), kT, moved, rngs)


def volume_move(
    system: WalkerSystem,
    energy_fn: EnergyFunction,
    current: np.ndarray,
    kT: np.ndarray,
    pressure: np.ndarray,
    rngs: Sequence[Any],
    max_log_change: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """One isotropic volume attempt per periodic walker (in place); returns (accepted (B,), energies (B,)).

    ``ln V' = ln V + U(-δ, δ)``, cell and positions scaled by (V'/V)^{1/3}; accepted with probability
    ``min(1, exp(-(ΔE_bias + P ΔV)/kT + (N + 1) ln(V'/V)))`` (isothermal-isobaric ensemble, symmetric in ln V).
    ``pressure`` (B,) in eV/Å³.
    """
    trial = system.copy()
    moved = system.periodic.copy()
    log_ratio = np.zeros(system.n_structures)
    for row in np.flatnonzero(moved):
        log_ratio[row] = rngs[row].uniform(-max_log_change, max_log_change)
        scale = np.exp(log_ratio[row] / 3.0)
        part = system.atoms_slice(row)
        trial.cells[row] *= scale
        trial.positions[part] *= scale
    volume = system.volumes()
    extra = pressure * volume * np.expm1(log_ratio) - (system.sizes + 1) * log_ratio * kT
    return _accept(system, trial, energy_fn, current, np.where(moved, extra, 0.0), kT, moved, rngs)


def cell_move(
    system: WalkerSystem,
    energy_fn: EnergyFunction,
    current: np.ndarray,
    kT: np.ndarray,
    pressure: np.ndarray,
    rngs: Sequence[Any],
    strain: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """One cell (shape and volume) attempt per periodic walker (in place); returns (accepted (B,), energies (B,)).

    HAL's cell step (seeds/002: "adding Gaussian noise to cell vectors"; its reference code draws a symmetric
    deformation ``I + A``): ``h' = h exp(A)`` with A symmetric, ``A_ii, A_ij = A_ji ~ N(0, strain²)``, positions
    keeping their fractional coordinates. The proposal is symmetric (A and -A are equally likely, and ``h ->
    h exp(A)`` has Jacobian ``(V'/V)³`` on the 9 cell components); with the flexible-cell NPT density
    ``V^{N-2} exp(-(E + P V)/kT)`` (Martyna, Tobias & Klein, J. Chem. Phys. 101, 4177 (1994)) the move is accepted
    with probability ``min(1, exp(-(ΔE_bias + P ΔV)/kT + (N + 1) ln(V'/V)))``, ``ln(V'/V) = tr A``: the volume
    distribution is that of :func:`volume_move`. ``pressure`` (B,) in eV/Å³.
    """
    trial = system.copy()
    moved = system.periodic.copy()
    log_ratio = np.zeros(system.n_structures)
    for row in np.flatnonzero(moved):
        upper = np.triu(rngs[row].normal(0.0, strain, (3, 3)))
        log_strain = upper + np.triu(upper, 1).T
        values, vectors = np.linalg.eigh(log_strain)
        deformation = (vectors * np.exp(values)) @ vectors.T
        log_ratio[row] = np.trace(log_strain)
        part = system.atoms_slice(row)
        trial.cells[row] = system.cells[row] @ deformation
        trial.positions[part] = system.positions[part] @ deformation
    volume = system.volumes()
    extra = pressure * volume * np.expm1(log_ratio) - (system.sizes + 1) * log_ratio * kT
    return _accept(system, trial, energy_fn, current, np.where(moved, extra, 0.0), kT, moved, rngs)


def _accept(
    system: WalkerSystem,
    trial: WalkerSystem,
    energy_fn: EnergyFunction,
    current: np.ndarray,
    extra: np.ndarray,
    kT: np.ndarray,
    moved: np.ndarray,
    rngs: Sequence[Any],
) -> tuple[np.ndarray, np.ndarray]:
    energies = np.asarray(current, dtype=np.float64).copy()
    if not moved.any():
        return moved, energies
    rows = np.flatnonzero(moved)
    try:
        new = np.asarray(energy_fn(trial.subset(rows)), dtype=np.float64)
    except Exception:  # a failing trial configuration is a rejected move
        return np.zeros_like(moved), energies
    uniforms = np.array([rngs[row].random() for row in rows])
    accept = metropolis_accept(new - energies[rows] + extra[rows], kT[rows], uniforms)
    accepted = np.zeros_like(moved)
    for row, ok, value in zip(rows, accept, new, strict=True):
        if ok:
            part = system.atoms_slice(row)
            system.positions[part] = trial.positions[part]
            system.cells[row] = trial.cells[row]
            energies[row] = value
            accepted[row] = True
    return accepted, energies


@dataclass
class MonteCarlo:
    """HAL's Monte-Carlo moves on E_bias every ``interval`` MD steps (seeds/002, AlSi10).

    Swaps need a walker with two or more elements (single-element walkers skip them); volume and cell moves need
    a target pressure (NPT; without one the cell stays fixed, as in HAL's reference code) and a periodic walker.

    :param interval: MD steps between MC rounds. :param n_swap: swap attempts per walker and round.
    :param n_volume: isotropic volume attempts per walker and round. :param max_log_change: δ of ln V moves.
    :param n_cell: cell (shape and volume) attempts per walker and round (:func:`cell_move`).
    :param cell_strain: standard deviation of the log-strain components of cell moves (HAL's reference: 0.01).
    """

    interval: int = 10
    n_swap: int = 1
    n_volume: int = 1
    max_log_change: float = 0.02
    n_cell: int = 0
    cell_strain: float = 0.01


# ---------------------------------------------------------------------------------------------------------- driver
@dataclass
class ExplorationResult:
    """Outcome of :meth:`BatchedMD.run`.

    ``stop_reasons``/``stop_steps``: per walker id; ``final``: walker id -> ``ase.Atoms`` of its last evaluated
    state; ``log``: per step and active walker arrays ('step', 'walker', 'temperature' K, 'energy', 'energy_bias' eV,
    'uncertainty' eV, 'max_atom_uncertainty' eV/Å, 'tau', 'tau_stress', 'pressure' GPa, 'volume' Å³, 'force_norm' and
    'bias_force_norm' eV/Å: per-structure norms of the physical and the applied bias forces);
    ``mc_acceptance``: accepted/attempted counts per move kind ('swap', 'volume', 'cell').
    """

    stop_reasons: dict[int, str]
    stop_steps: dict[int, int]
    final: dict[int, Any]
    log: dict[str, np.ndarray]
    pool: Any = None
    mc_acceptance: dict[str, list[int]] = field(default_factory=dict)
    n_steps: int = 0


#: Keys of :attr:`ExplorationResult.log`, in their order.
LOG_KEYS = (
    'step',
    'walker',
    'temperature',
    'energy',
    'energy_bias',
    'uncertainty',
    'max_atom_uncertainty',
    'tau',
    'tau_stress',
    'pressure',
    'volume',
    'force_norm',
    'bias_force_norm',
)


@dataclass
class StepObservables:
    """Per-walker values of one MD step shared by the log and the pool metadata, computed once per step.

    Every field is a (B,) array, one value per active walker row.
    """

    kinetic_temperature: np.ndarray
    """Kinetic temperature 2 E_kin / (3 N k_B), K."""
    pressure: np.ndarray
    """Instantaneous pressure, trace/3 of (1/V) Σ m v⊗v - σ without the bias stress, GPa (NaN without a stress or a
    fully periodic cell)."""
    volume: np.ndarray
    """Cell volume, Å³ (NaN for walkers that are not fully periodic)."""
    u_energy: np.ndarray
    """Energy uncertainty u, eV (NaN when the potential reports none)."""
    max_atom_uncertainty: np.ndarray
    """Largest per-atom uncertainty of the walker, eV/Å (NaN when the potential reports none)."""
    tau: np.ndarray
    """Bias strength τ of ``E - τ u``, dimensionless (0 without a bias)."""
    tau_stress: np.ndarray
    """Stress-bias strength τ_s, dimensionless (0 without a stress bias)."""

    @classmethod
    def of(cls, system: WalkerSystem, result: PotentialResult) -> StepObservables:
        """The values of the walkers ``system`` evaluated as ``result``."""
        n = system.n_structures
        pressure = np.full(n, np.nan)
        if result.stress is not None:
            tensor = pressure_tensor(system, result, include_bias=False)
            pressure = np.where(system.periodic, np.trace(tensor, axis1=1, axis2=2) / 3.0 / GPA, np.nan)
        max_atom = np.full(n, np.nan)
        if result.atom_uncertainty is not None:
            max_atom = segment_max(result.atom_uncertainty, system.structure_index, n)
        return cls(
            kinetic_temperature=system.temperatures(),
            pressure=pressure,
            volume=np.where(system.periodic, system.volumes(), np.nan),
            u_energy=result.uncertainty if result.uncertainty is not None else np.full(n, np.nan),
            max_atom_uncertainty=max_atom,
            tau=result.tau if result.tau is not None else np.zeros(n),
            tau_stress=result.tau_stress if result.tau_stress is not None else np.zeros(n),
        )


def _empty_log() -> dict[str, list]:
    return {key: [] for key in LOG_KEYS}


def _no_moves() -> dict[str, list[int]]:
    return {'swap': [0, 0], 'volume': [0, 0], 'cell': [0, 0]}


@dataclass
class RunState:
    """What :meth:`BatchedMD.run` accumulates while it runs; :meth:`result` makes the :class:`ExplorationResult`."""

    pool: Any = None
    """The ``CandidatePool`` told about every stop (None: no pool)."""
    stop_reasons: dict[int, str] = field(default_factory=dict)
    """Walker id -> why it stopped ('max_steps', 'uncertainty', 'hal_f_tol', 'nan', 'density', 'error: ...'), in
    the order of the stops."""
    stop_steps: dict[int, int] = field(default_factory=dict)
    """Walker id -> MD step at which it stopped (0: before the first step)."""
    final: dict[int, Any] = field(default_factory=dict)
    """Walker id -> ``ase.Atoms`` (Å, with velocities) of its state when it stopped; absent for walkers whose
    evaluation failed or whose state was rejected after an MD step before evaluation (non-finite, density)."""
    log: dict[str, list] = field(default_factory=_empty_log)
    """:data:`LOG_KEYS` -> one value per step and active walker: 'temperature' K (kinetic), 'energy',
    'energy_bias' and 'uncertainty' eV, 'max_atom_uncertainty' eV/Å, 'tau' and 'tau_stress' (dimensionless),
    'pressure' GPa, 'volume' Å³, 'force_norm' and 'bias_force_norm' eV/Å."""
    acceptance: dict[str, list[int]] = field(default_factory=_no_moves)
    """Monte-Carlo move kind ('swap', 'volume', 'cell') -> [accepted, attempted]."""

    def stop(
        self, walkers: Iterable[int], reasons: Iterable[str], step: int, frames: Iterable[Any] | None = None
    ) -> None:
        """Record that ``walkers`` stopped at MD ``step``, one reason each, with their final ``ase.Atoms``
        (``frames``, one each) when given, and tell the pool."""
        walkers, reasons = list(walkers), list(reasons)
        frames = [None] * len(walkers) if frames is None else list(frames)
        if not len(walkers) == len(reasons) == len(frames):
            raise ValueError('need one reason (and one frame, if any) per stopped walker')
        for walker, reason, frame in zip(walkers, reasons, frames, strict=True):
            walker, reason = int(walker), str(reason)
            self.stop_reasons[walker], self.stop_steps[walker] = reason, int(step)
            if frame is not None:
                self.final[walker] = frame
            if self.pool is not None:
                self.pool.record_stop(walker, reason, step)

    def append_log(self, system: WalkerSystem, result: PotentialResult, step: int, observed: StepObservables) -> None:
        """Append one row per active walker of ``system`` at ``step`` to :attr:`log`."""
        n = system.n_structures
        norms = result.force_norms if result.force_norms is not None else np.full(n, np.nan)
        bias = np.full(n, np.nan)
        if result.bias_forces is not None:
            bias = np.sqrt(np.bincount(system.structure_index, np.square(result.bias_forces).sum(axis=1), minlength=n))
        columns = {
            'step': [step] * n,
            'walker': system.walker_ids,
            'temperature': observed.kinetic_temperature,
            'energy': result.energy,
            'energy_bias': result.energy_bias,
            'uncertainty': observed.u_energy,
            'max_atom_uncertainty': observed.max_atom_uncertainty,
            'tau': observed.tau,
            'tau_stress': observed.tau_stress,
            'pressure': observed.pressure,
            'volume': observed.volume,
            'force_norm': norms,
            'bias_force_norm': bias,
        }
        for key, values in columns.items():
            self.log[key].extend(np.asarray(values).tolist())

    def result(self, n_steps: int) -> ExplorationResult:
        """The outcome of a run that made ``n_steps`` steps (the log as arrays)."""
        return ExplorationResult(
            stop_reasons=self.stop_reasons,
            stop_steps=self.stop_steps,
            final=self.final,
            log={key: np.asarray(value) for key, value in self.log.items()},
            pool=self.pool,
            mc_acceptance=self.acceptance,
            n_steps=n_steps,
        )


class BatchedMD:
    """Langevin (BAOAB) MD of many walkers in one batch, optionally NPT (a barostat), with MC moves and stops.

    :param potential: object with ``evaluate(system, forces=True, update_strength=True) -> PotentialResult``.
    :param structures: ASE ``Atoms`` (one per walker) or a :class:`WalkerSystem`.
    :param timestep: fs, a number or one per walker. :param temperature: K, a number, a :class:`Schedule` of the MD
        step or one value per walker. :param friction: Langevin γ, 1/fs.
    :param n_steps: maximum number of MD steps (reason ``max_steps``).
    :param criteria: stop criteria (:class:`UncertaintyThreshold`, :class:`HALStop`, ...).
    :param physical: unphysical-frame checks (default :class:`PhysicalLimits` with the 20 eV/Å force filter).
    :param barostat: a :class:`StochasticCellRescaling` or :class:`BerendsenBarostat` for NPT (the potential must
        compute stresses).
    :param pressure: target pressure, GPa (number, :class:`Schedule` or per walker); for NPT and volume/cell moves
        (None: no volume or cell moves).
    :param monte_carlo: :class:`MonteCarlo` settings (None: no MC).
    :param pool: a ``CandidatePool`` collecting frames and stop frames (None: no pool).
    :param features: callable (system, result) -> (B, d) per-structure features stored with pool frames.
    :param recorders: extra pool metadata, name -> callable (system, result) -> (B,).
    :param seed: seeds the per-walker random streams (velocities and Langevin noise, MC, barostat noise).
    :param initialize_velocities: draw Maxwell-Boltzmann velocities at the initial temperature (zero total momentum);
        otherwise the velocities of the input are used.
    :param wrap: wrap atoms of periodic walkers into their cell every step.
    """

    def __init__(
        self,
        potential: Any,
        structures: Sequence[Any] | WalkerSystem,
        timestep: float | Sequence[float] = 1.0,
        temperature: float | Schedule | Sequence[float] = 300.0,
        friction: float = 0.01,
        n_steps: int = 1000,
        criteria: Sequence[Any] = (),
        physical: PhysicalLimits | None = None,
        barostat: StochasticCellRescaling | BerendsenBarostat | None = None,
        pressure: float | Schedule | Sequence[float] | None = None,
        monte_carlo: MonteCarlo | None = None,
        pool: Any = None,
        features: Callable[[WalkerSystem, PotentialResult], np.ndarray] | None = None,
        recorders: dict[str, Callable[[WalkerSystem, PotentialResult], np.ndarray]] | None = None,
        seed: int = 0,
        initialize_velocities: bool = True,
        wrap: bool = True,
    ) -> None:
        self.potential = potential
        system = structures if isinstance(structures, WalkerSystem) else WalkerSystem.from_atoms(structures)
        self.system = system.copy()
        self.n_walkers = int(self.system.walker_ids.max()) + 1
        self.timestep = timestep
        self.temperature = temperature
        self.friction = float(friction)
        self.n_steps = int(n_steps)
        self.criteria = list(criteria)
        self.physical = PhysicalLimits() if physical is None else physical
        self.barostat = barostat
        self.pressure = pressure
        self.monte_carlo = monte_carlo
        self.pool = pool
        self.features = features
        self.recorders = dict(recorders or {})
        self.wrap = wrap
        sequences = np.random.SeedSequence(int(seed)).spawn(3 * self.n_walkers)  # child i depends on i only
        self._md_rngs = [np.random.default_rng(s) for s in sequences[: self.n_walkers]]
        self._mc_rngs = [np.random.default_rng(s) for s in sequences[self.n_walkers : 2 * self.n_walkers]]
        self._barostat_rngs = [np.random.default_rng(s) for s in sequences[2 * self.n_walkers :]]
        if initialize_velocities:
            self._maxwell_boltzmann()

    # ------------------------------------------------------------------ helpers
    def _dt(self, system: WalkerSystem) -> np.ndarray:
        """(B,) timestep, fs."""
        return _per_walker(self.timestep, 0, system.walker_ids)

    def _maxwell_boltzmann(self) -> None:
        system = self.system
        temperature = _per_walker(self.temperature, 0, system.walker_ids)
        for row, walker in enumerate(system.walker_ids):
            part = system.atoms_slice(row)
            masses = system.masses[part]
            sigma = np.sqrt(KB * temperature[row] / masses)[:, None]
            velocities = self._md_rngs[walker].standard_normal((len(masses), 3)) * sigma
            if len(masses) > 1:
                velocities -= (masses[:, None] * velocities).sum(axis=0) / masses.sum()
            system.velocities[part] = velocities

    def _evaluate(self, system: WalkerSystem, update: bool = True) -> tuple[PotentialResult | None, dict[int, str]]:
        """Evaluate all walkers; on an exception find and report the failing walkers one by one."""
        try:
            return self.potential.evaluate(system, forces=True, update_strength=update), {}
        except Exception:  # isolate the walker that breaks the batch
            pass
        good, failed = [], {}
        for row in range(system.n_structures):
            try:
                self.potential.evaluate(system.subset([row]), forces=True, update_strength=False)
                good.append(row)
            except Exception as exc:
                failed[int(system.walker_ids[row])] = f'error: {type(exc).__name__}'
        if not good:
            return None, failed
        keep = system.subset(good)
        self._replace(system, keep)
        return self.potential.evaluate(system, forces=True, update_strength=update), failed

    @staticmethod
    def _replace(system: WalkerSystem, new: WalkerSystem) -> None:
        for name in ('positions', 'velocities', 'masses', 'numbers', 'cells', 'pbc', 'offsets', 'walker_ids'):
            setattr(system, name, getattr(new, name))

    def _metadata(
        self,
        system: WalkerSystem,
        result: PotentialResult,
        step: int,
        values: dict[str, np.ndarray],
        observed: StepObservables,
    ) -> dict[str, np.ndarray]:
        """Pool metadata of every row (see :mod:`~aiida_alkit.exploration.pool`), name -> (B,)."""
        n = system.n_structures
        target_t = _per_walker(self.temperature, step, system.walker_ids)
        target_p = _per_walker(self.pressure, step, system.walker_ids)
        f_max, s_max = np.full(n, np.nan), np.full(n, np.nan)
        if result.member_forces is not None and result.member_forces.shape[0] > 1:
            f = relative_force_uncertainty(result.member_forces)
            f_max = segment_max(f, system.structure_index, n)
            s_max = softmax_max(f, system.structure_index, n)
        info = {
            'walker': system.walker_ids.astype(np.int64),
            'step': np.full(n, step, dtype=np.int64),
            'temperature': target_t,
            'kinetic_temperature': observed.kinetic_temperature,
            'pressure': observed.pressure,
            'target_pressure': target_p,
            'volume': observed.volume,
            'model_energy': result.energy,
            'biased_energy': result.energy_bias,
            'tau': observed.tau,
            'tau_stress': observed.tau_stress,
            'u_energy': observed.u_energy,
            'max_atom_force_unc': observed.max_atom_uncertainty,
            'f_max': f_max,
            's_max': s_max,
        }
        for name, value in values.items():  # the criteria's own values (e.g. f_max with their ε) take precedence
            info[name] = np.asarray(value, dtype=np.float64)
        for name, recorder in self.recorders.items():
            info[name] = np.asarray(recorder(system, result), dtype=np.float64).reshape(n)
        return info

    def _check(self, system: WalkerSystem, result: PotentialResult) -> tuple[np.ndarray, np.ndarray, dict]:
        """Reasons (B,) ('' = continue), unphysical flags (B,) and recorded values."""
        n = system.n_structures
        reasons = np.full(n, '', dtype=object)
        unphysical = np.zeros(n, dtype=bool)
        values: dict[str, np.ndarray] = {}
        for criterion in [self.physical, *self.criteria]:
            fired, recorded = criterion.check(system, result)
            criterion_unphysical = bool(getattr(criterion, 'unphysical', False))
            values.update(recorded)
            new = (reasons == '') & (np.asarray(fired) != '')
            reasons[new] = np.asarray(fired)[new]
            unphysical |= new & criterion_unphysical
        return reasons.astype(str), unphysical, values

    def _precheck(self, state: RunState, system: WalkerSystem, step: int, frames: bool) -> None:
        """Stop and remove (in place) the walkers that :meth:`PhysicalLimits.precheck` rejects before evaluation.

        :param frames: keep their (unevaluated) configurations as final frames; done for the input walkers only.
        """
        reasons = self.physical.precheck(system)
        bad = np.flatnonzero(reasons != '')
        if bad.size:
            atoms = [system.to_atoms(int(row)) for row in bad] if frames else None
            state.stop(system.walker_ids[bad], reasons[bad], step, atoms)
            self._replace(system, system.subset(np.flatnonzero(reasons == '')))

    def _add_frames(
        self,
        system: WalkerSystem,
        result: PotentialResult,
        step: int,
        reasons: np.ndarray,
        unphysical: np.ndarray,
        values: dict[str, np.ndarray],
        observed: StepObservables,
    ) -> None:
        """Add to the pool the sample frames of this step (every ``pool.interval`` steps, walkers that go on) and the
        stop frames (walkers stopping for a reason that is not unphysical, if the pool keeps stop frames)."""
        stopping = reasons != ''
        interval = int(self.pool.interval or 0)
        sample = interval > 0 and step > 0 and step % interval == 0
        sample_rows = np.flatnonzero(~stopping) if sample else np.zeros(0, dtype=np.int64)
        stop_rows = np.flatnonzero(stopping & ~unphysical) if self.pool.include_stop_frames else []
        rows = np.sort(np.concatenate([sample_rows, np.asarray(stop_rows, dtype=np.int64)]))
        if not rows.size:
            return
        info = self._metadata(system, result, step, values, observed)
        info['frame_kind'] = np.where(stopping, 'stop', 'sample')
        info['stop_reason'] = reasons
        features = None
        if self.features is not None:
            features = np.asarray(self.features(system, result), dtype=np.float64)[rows]
        self.pool.add(system, rows, {k: np.asarray(v)[rows] for k, v in info.items()}, features)

    # ------------------------------------------------------------------ main loop
    def run(self) -> ExplorationResult:
        """Run until every walker has stopped (at the latest after ``n_steps`` steps)."""
        system = self.system
        state = RunState(pool=self.pool)
        self._precheck(state, system, 0, frames=True)  # non-finite input walkers never reach the model
        result, failed = (None, {}) if system.n_structures == 0 else self._evaluate(system)
        state.stop(failed.keys(), failed.values(), 0)
        step = 0
        while result is not None and system.n_structures:
            if step > 0:
                result = self._advance(system, result, step, state)
                if result is None:
                    break
            reasons, unphysical, values = self._check(system, result)
            if step >= self.n_steps:
                reasons = np.where(reasons == '', 'max_steps', reasons)
            observed = StepObservables.of(system, result)
            state.append_log(system, result, step, observed)
            if self.pool is not None:
                self._add_frames(system, result, step, reasons, unphysical, values, observed)
            stopping = reasons != ''
            if stopping.any():
                rows = np.flatnonzero(stopping)
                state.stop(system.walker_ids[rows], reasons[rows], step, [system.to_atoms(int(r)) for r in rows])
                keep = np.flatnonzero(~stopping)
                result = result.subset(keep)
                self._replace(system, system.subset(keep))
            step += 1
        return state.result(step)

    def _advance(
        self, system: WalkerSystem, result: PotentialResult, step: int, state: RunState
    ) -> PotentialResult | None:
        """One BAOAB step (+ barostat, + MC); returns the evaluation at the new positions (None: no walker left)."""
        index = system.structure_index
        dt_walker = self._dt(system)
        dt = (dt_walker * units.fs)[index][:, None]
        inverse_mass = 1.0 / system.masses[:, None]
        forces = result.total_forces()
        system.velocities += 0.5 * dt * forces * inverse_mass  # B
        system.positions += 0.5 * dt * system.velocities  # A
        temperature = _per_walker(self.temperature, step, system.walker_ids)
        c1 = np.exp(-self.friction / units.fs * dt)  # O
        c2 = np.sqrt(1.0 - c1 * c1)
        noise = np.concatenate(
            [
                self._md_rngs[int(walker)].standard_normal((int(size), 3))
                for walker, size in zip(system.walker_ids, system.sizes, strict=True)
            ]
        )
        sigma = np.sqrt(KB * temperature[index][:, None] * inverse_mass)
        system.velocities *= c1
        system.velocities += c2 * sigma * noise
        system.positions += 0.5 * dt * system.velocities  # A
        if self.barostat is not None:
            target = _per_walker(self.pressure if self.pressure is not None else 0.0, step, system.walker_ids)
            rngs = [self._barostat_rngs[int(walker)] for walker in system.walker_ids]
            with np.errstate(all='ignore'):
                self.barostat.apply(system, result, target, dt_walker, temperature=temperature, rngs=rngs)
        if self.wrap:
            with np.errstate(all='ignore'):
                system.wrap()
        self._precheck(state, system, step, frames=False)
        if system.n_structures == 0:
            return None
        new, failed = self._evaluate(system)
        state.stop(failed.keys(), failed.values(), step)
        if new is None:
            return None
        index = system.structure_index
        dt = (self._dt(system) * units.fs)[index][:, None]
        inverse_mass = 1.0 / system.masses[:, None]
        with np.errstate(all='ignore'):
            system.velocities += 0.5 * dt * new.total_forces() * inverse_mass  # B
        if self.monte_carlo is not None and step % max(int(self.monte_carlo.interval), 1) == 0:
            new = self._monte_carlo(system, new, step, state)
        return new

    def _monte_carlo(
        self, system: WalkerSystem, result: PotentialResult, step: int, state: RunState
    ) -> PotentialResult | None:
        """Swap, volume and cell moves (HAL, seed 002); re-evaluates the walkers after an accepted move, stopping
        (with its reason) any walker whose evaluation then fails. None: no walker left."""
        settings = self.monte_carlo
        acceptance = state.acceptance
        kT = KB * _per_walker(self.temperature, step, system.walker_ids)
        npt = self.pressure is not None  # volume and cell moves only under a target pressure
        pressure = _per_walker(self.pressure if npt else 0.0, step, system.walker_ids) * GPA
        rngs = [self._mc_rngs[int(walker)] for walker in system.walker_ids]
        ok = np.isfinite(result.energy_bias)
        if not ok.all():
            return result

        def energy_fn(trial: WalkerSystem) -> np.ndarray:
            return self.potential.evaluate(trial, forces=False, update_strength=False).energy_bias

        energies = result.energy_bias.copy()
        changed = False
        for _ in range(settings.n_swap):
            accepted, energies = swap_move(system, energy_fn, energies, kT, rngs)
            acceptance['swap'][0] += int(accepted.sum())
            acceptance['swap'][1] += sum(
                int(np.unique(system.numbers[system.atoms_slice(row)]).size > 1) for row in range(system.n_structures)
            )
            changed |= bool(accepted.any())
        for _ in range(settings.n_volume if npt else 0):
            accepted, energies = volume_move(system, energy_fn, energies, kT, pressure, rngs, settings.max_log_change)
            acceptance['volume'][0] += int(accepted.sum())
            acceptance['volume'][1] += int(system.periodic.sum())
            changed |= bool(accepted.any())
        for _ in range(settings.n_cell if npt else 0):
            accepted, energies = cell_move(system, energy_fn, energies, kT, pressure, rngs, settings.cell_strain)
            acceptance['cell'][0] += int(accepted.sum())
            acceptance['cell'][1] += int(system.periodic.sum())
            changed |= bool(accepted.any())
        if not changed:
            return result
        new, failed = self._evaluate(system, update=False)
        state.stop(failed.keys(), failed.values(), step)
        return new
