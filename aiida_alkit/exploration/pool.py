"""Candidate pool of an exploration run: frames every k MD steps plus each walker's stopping frame.

Each frame carries per-configuration metadata in ``ConfigurationArrays.info``: ``walker``, ``step``, ``temperature``
(target, K), ``kinetic_temperature`` (K), ``pressure`` (instantaneous, GPa; NaN without stress), ``target_pressure``
(GPa), ``volume`` (Å³), ``model_energy`` and ``biased_energy`` (eV), ``tau``, ``tau_stress``, the uncertainties
(``u_energy`` eV, ``max_atom_force_unc`` eV/Å, ``f_max``, ``s_max``, criterion values such as the calibrated atom
uncertainty), ``frame_kind`` (``'sample'``/``'stop'``) and ``stop_reason`` (``''`` for samples). The model energy is
stored as ``model_energy``, not ``energy``: the container's ``energy`` is a reference label, and ``info['energy']``
would be read back as one by ``ConfigurationArrays.from_atoms``.

Optional per-structure feature vectors (for batch selection, seeds/003) are kept as a separate (n_frames, d) array.
On disk: ``<name>.npz`` (``ConfigurationArrays.save``), ``<name>_features.npz`` (``features``, ``walker``, ``step``)
and ``<name>_stops.json`` (walker -> reason and step). No AiiDA import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from aiida_alkit.io.arrays import ConfigurationArrays

__all__ = ['CandidatePool']


class CandidatePool:
    """Collects candidate frames from :class:`~aiida_alkit.exploration.dynamics.BatchedMD`.

    :param interval: record every ``interval`` MD steps (None or 0: stop frames only).
    :param include_stop_frames: record each walker's stopping frame (unphysical stops are never recorded).
    """

    def __init__(self, interval: int | None = 10, include_stop_frames: bool = True) -> None:
        self.interval = int(interval or 0)
        self.include_stop_frames = bool(include_stop_frames)
        self._positions: list[np.ndarray] = []
        self._numbers: list[np.ndarray] = []
        self._cells: list[np.ndarray] = []
        self._pbc: list[np.ndarray] = []
        self._sizes: list[int] = []
        self._info: list[dict[str, Any]] = []
        self._features: list[np.ndarray | None] = []
        self.stop_reasons: dict[int, str] = {}
        self.stop_steps: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._sizes)

    def add(
        self, system: Any, rows: np.ndarray, info: dict[str, np.ndarray], features: np.ndarray | None = None
    ) -> None:
        """Add the walkers ``rows`` of a ``WalkerSystem`` with their metadata (one value per row) and features."""
        rows = np.asarray(rows, dtype=np.int64)
        if features is not None:
            features = np.asarray(features, dtype=np.float64).reshape(len(rows), -1)
        for k, row in enumerate(rows):
            part = slice(int(system.offsets[row]), int(system.offsets[row + 1]))
            self._positions.append(np.array(system.positions[part], dtype=np.float64))
            self._numbers.append(np.array(system.numbers[part]))
            self._cells.append(np.array(system.cells[row], dtype=np.float64))
            self._pbc.append(np.array(system.pbc[row], dtype=bool))
            self._sizes.append(part.stop - part.start)
            self._info.append({name: np.asarray(values)[k].item() for name, values in info.items()})
            self._features.append(None if features is None else features[k])

    def record_stop(self, walker: int, reason: str, step: int) -> None:
        """Remember why and when ``walker`` stopped."""
        self.stop_reasons[int(walker)] = str(reason)
        self.stop_steps[int(walker)] = int(step)

    @property
    def features(self) -> np.ndarray | None:
        """(n_frames, d) feature vectors, or None when no frame has features."""
        if not self._features or all(f is None for f in self._features):
            return None
        if any(f is None for f in self._features):
            raise ValueError('some pool frames have features and others not')
        return np.stack(self._features)

    def to_arrays(self) -> ConfigurationArrays:
        """The frames as ``ConfigurationArrays`` (unlabelled) with the metadata in ``info``."""
        if not self._sizes:
            raise ValueError('the candidate pool is empty')
        names = sorted(set().union(*(frame.keys() for frame in self._info)))
        info: dict[str, np.ndarray] = {}
        for name in names:
            values = [frame.get(name) for frame in self._info]
            present = [v for v in values if v is not None]
            if all(isinstance(v, str) for v in present):
                info[name] = np.array([v if v is not None else '' for v in values])
            elif all(isinstance(v, (int, np.integer, bool)) for v in present):
                info[name] = np.array([v if v is not None else -1 for v in values], dtype=np.int64)
            else:
                info[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return ConfigurationArrays(
            positions=np.concatenate(self._positions),
            numbers=np.concatenate(self._numbers),
            cells=np.stack(self._cells),
            pbc=np.stack(self._pbc),
            offsets=np.concatenate([[0], np.cumsum(self._sizes)]),
            info=info,
        )

    def save(self, directory: str | os.PathLike, name: str = 'pool') -> dict[str, Path]:
        """Write ``<name>.npz``, ``<name>_features.npz`` (if any features) and ``<name>_stops.json``; return paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        if len(self):
            arrays = self.to_arrays()
            paths['pool'] = directory / f'{name}.npz'
            arrays.save(paths['pool'])
            features = self.features
            if features is not None:
                paths['features'] = directory / f'{name}_features.npz'
                np.savez(paths['features'], features=features, walker=arrays.info['walker'], step=arrays.info['step'])
        paths['stops'] = directory / f'{name}_stops.json'
        stops = {
            str(w): {'reason': r, 'step': self.stop_steps.get(w, -1)} for w, r in sorted(self.stop_reasons.items())
        }
        paths['stops'].write_text(json.dumps(stops, indent=1))
        return paths

    @staticmethod
    def load(directory: str | os.PathLike, name: str = 'pool') -> tuple[ConfigurationArrays, np.ndarray | None, dict]:
        """Read what :meth:`save` wrote: (arrays, features or None, {walker: {'reason', 'step'}})."""
        directory = Path(directory)
        arrays = ConfigurationArrays.load(directory / f'{name}.npz')
        features = None
        feature_path = directory / f'{name}_features.npz'
        if feature_path.exists():
            with np.load(feature_path, allow_pickle=False) as data:
                features = data['features']
        stops = json.loads((directory / f'{name}_stops.json').read_text())
        return arrays, features, {int(w): v for w, v in stops.items()}
