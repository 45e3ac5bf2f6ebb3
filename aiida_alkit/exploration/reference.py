"""Reference molecular dynamics with an ASE calculator (e.g. EMT): held-out test frames for demos and benchmarks.

Not the active-learning exploration (that is :mod:`aiida_alkit.exploration.dynamics`, driven by the potential being
trained): here the reference calculator itself drives a Langevin walker, and frames are taken at fixed intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ['langevin_frames', 'with_labels']


def with_labels(atoms: Any, calculator_factory: Callable[[], Any]) -> Any:
    """Unconstrained copy of ``atoms`` with energy (eV), forces (eV/Å) and, for periodic cells, stress (eV/Å³) from
    a fresh calculator, stored on a ``SinglePointCalculator``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.set_constraint()
    frame.calc = calculator_factory()
    results = {'energy': frame.get_potential_energy(), 'forces': frame.get_forces()}
    if frame.pbc.all():
        results['stress'] = frame.get_stress()
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


def langevin_frames(
    atoms: Any,
    calculator_factory: Callable[[], Any],
    temperature: float,
    n_frames: int,
    interval: int,
    seed: int,
    equilibration: int = 0,
    timestep_fs: float = 5.0,
    friction_per_fs: float = 0.02,
    labelled: bool = True,
    rng: np.random.Generator | None = None,
) -> list[Any]:
    """Frames of one Langevin walker (ASE) at ``temperature`` K, one every ``interval`` steps after
    ``equilibration`` steps; the centre of mass is fixed; seeded velocities and noise.

    :param labelled: attach the reference labels (:func:`with_labels`); otherwise bare geometries.
    :param rng: random stream of the velocities and the Langevin noise (default: a new one seeded with ``seed``),
        for callers that drew from the same stream before (e.g. a random cell strain).
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md import velocitydistribution
    from ase.md.langevin import Langevin

    rng = np.random.default_rng(seed) if rng is None else rng
    atoms = atoms.copy()
    atoms.calc = calculator_factory()
    atoms.set_constraint(FixCom())
    thermalize = getattr(velocitydistribution, 'thermalize_momenta', None)  # ASE >= 3.29
    if thermalize is None:
        velocitydistribution.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    else:
        thermalize(atoms, temperature, rng=rng)
    dynamics = Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    dynamics.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dynamics.run(interval)
        if labelled:
            frame = with_labels(atoms, calculator_factory)
        else:
            frame = atoms.copy()
            frame.set_constraint()
        frame.info.update(temperature=float(temperature), walker_seed=int(seed))
        frames.append(frame)
    return frames
