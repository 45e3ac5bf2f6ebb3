"""Reference Langevin MD with EMT: frames at the right interval, labels equal to a fresh EMT call, seeded."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from aiida_alkit.exploration.reference import langevin_frames


def test_frames_are_labelled_and_reproducible():
    start = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 1)
    frames = langevin_frames(start, EMT, temperature=600.0, n_frames=3, interval=5, seed=4, equilibration=5)
    again = langevin_frames(start, EMT, temperature=600.0, n_frames=3, interval=5, seed=4, equilibration=5)
    assert len(frames) == 3
    for frame, twin in zip(frames, again, strict=True):
        np.testing.assert_array_equal(frame.positions, twin.positions)
        reference = frame.copy()
        reference.calc = EMT()
        assert frame.get_potential_energy() == reference.get_potential_energy()
        np.testing.assert_allclose(frame.get_forces(), reference.get_forces())
        assert frame.info['temperature'] == 600.0
    assert not np.allclose(frames[0].positions, frames[1].positions)  # the walker moved between frames
    bare = langevin_frames(start, EMT, temperature=600.0, n_frames=1, interval=5, seed=4, labelled=False)
    assert bare[0].calc is None
