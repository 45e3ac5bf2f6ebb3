"""Committees (ensembles) of independently initialised models of one kind, the DP-GEN baseline's uncertainty.

DP-GEN trains four models on the same data from different random initialisations and measures the spread of
their predictions. For atom i with member forces F_i^k (k = 1..K) and the member mean F̄_i, the force deviation is

    ε_i = sqrt( (1/K) Σ_k ||F_i^k - F̄_i||² )                                    [eV/Å]

and the per-structure indicator is ``max_i ε_i`` (the quantity DP-GEN's trust window ``[lo, hi]`` is applied to).
Standard deviations are population ones (divide by K), as DP-GEN's ``np.std``.

A committee is trained by :func:`~aiida_alkit.models.training.train` (member k with the seed ``config.seed + k``,
all members on the same training and validation sets). One file holds the whole committee:
:func:`~aiida_alkit.models.serialization.save_potential_file` with ``model_kind = '<member kind>-committee'``
(``gmnn-committee``, ``mace-committee``), the member hyper-parameters in the JSON header and the member weights
under ``members.<k>.``. No AiiDA import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from aiida_alkit.models.batching import Batch, batch_from_atoms
from aiida_alkit.models.potential import build_potential, committee_kind, hyperparameters_from_dict, is_committee

__all__ = ['COMMITTEE_KIND', 'Committee', 'CommitteeCalculator']

#: The kind of a GM-NN committee file (other kinds: ``committee_kind(member kind)``).
COMMITTEE_KIND = committee_kind('gmnn')
#: Members of a DP-GEN committee.
DEFAULT_MEMBERS = 4


class Committee(nn.Module):
    """K models of one kind with identical hyper-parameters except the initialisation seed.

    :param hyperparameters: shared hyper-parameters; member k gets ``seed = seeds[k]``.
    :param n_members: K (4, as DP-GEN).
    :param seeds: member seeds (default ``hyperparameters.seed + k``).
    """

    def __init__(
        self,
        hyperparameters: Any | Sequence[Any],
        n_members: int = DEFAULT_MEMBERS,
        seeds: Sequence[int] | None = None,
        device: str | torch.device = 'cpu',
    ) -> None:
        super().__init__()
        if not isinstance(hyperparameters, Sequence):
            if seeds is None:
                seeds = [hyperparameters.seed + k for k in range(n_members)]
            if len(seeds) < 1 or len(set(seeds)) != len(seeds):
                raise ValueError(f'a committee needs distinct member seeds, got {list(seeds)}')
            member_hps = [replace(hyperparameters, seed=int(seed)) for seed in seeds]
        else:
            member_hps = list(hyperparameters)
        if not member_hps:
            raise ValueError('a committee needs at least one member')
        first = member_hps[0]
        for hp in member_hps[1:]:
            if (
                hp.model_kind != first.model_kind
                or hp.species != first.species
                or hp.cutoff != first.cutoff
                or hp.dtype != first.dtype
            ):
                raise ValueError('committee members must share kind, species, cutoff and dtype')
        self.members = nn.ModuleList([build_potential(hp, device=device) for hp in member_hps])

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.members)

    @property
    def hyperparameters(self) -> Any:
        """Hyper-parameters of the first member (all share species, cutoff, dtype)."""
        return self.members[0].hyperparameters

    @property
    def species(self) -> list[str]:
        return self.members[0].species

    @property
    def cutoff(self) -> float:
        """Cutoff radius, Å."""
        return self.members[0].cutoff

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def make_batch(self, structures: Sequence[Any], labels: bool = False) -> Batch:
        """Batch of ASE ``Atoms`` for this committee (one neighbour list serves every member)."""
        return batch_from_atoms(structures, self.species, self.cutoff, self.device, self.dtype, labels=labels)

    # ------------------------------------------------------------------ prediction
    def predict(self, batch: Batch, compute_forces: bool = True, compute_stress: bool = False) -> dict[str, Any]:
        """Member mean and spread of the predictions for a batch.

        :return: ``energy``/``energy_std`` (B,) eV; with forces: ``forces``/``forces_std`` (N, 3) eV/Å (component-wise
            population std), ``atom_force_deviation`` (N,) ε_i and ``max_force_deviation`` (B,) max_i ε_i, eV/Å;
            with stress: ``stress``/``stress_std`` (B, 3, 3) eV/Å³; ``member_energies`` (K, B) eV. Tensors are
            detached.
        """
        outputs = [
            member(batch, compute_forces=compute_forces, compute_stress=compute_stress, training=False)
            for member in self.members
        ]
        result: dict[str, Any] = {}
        energies = torch.stack([out['energy'].detach() for out in outputs])
        result['energy'] = energies.mean(dim=0)
        result['energy_std'] = energies.std(dim=0, unbiased=False)
        result['member_energies'] = energies
        if compute_forces:
            forces = torch.stack([out['forces'].detach() for out in outputs])  # (K, N, 3)
            mean = forces.mean(dim=0)
            result['forces'] = mean
            result['forces_std'] = forces.std(dim=0, unbiased=False)
            deviation = (forces - mean).square().sum(dim=-1).mean(dim=0).sqrt()  # (N,)
            result['atom_force_deviation'] = deviation
            maximum = torch.zeros(batch.n_structures, dtype=deviation.dtype, device=deviation.device)
            result['max_force_deviation'] = maximum.scatter_reduce(
                0, batch.structure_index, deviation, reduce='amax', include_self=False
            )
        if compute_stress:
            stresses = torch.stack([out['stress'].detach() for out in outputs])
            result['stress'] = stresses.mean(dim=0)
            result['stress_std'] = stresses.std(dim=0, unbiased=False)
        return result

    def forward(
        self, batch: Batch, compute_forces: bool = True, compute_stress: bool = False, training: bool = False
    ) -> dict[str, Any]:
        """Member means (and spreads), with the signature of ``GMNN.forward`` so that committees can be evaluated
        like single models (``training`` is accepted for that and ignored: the outputs are detached)."""
        return self.predict(batch, compute_forces=compute_forces, compute_stress=compute_stress)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, extras: dict[str, Any] | None = None) -> None:
        """Write the committee to ONE potential file (member weights under ``members.<k>.``)."""
        from aiida_alkit.models.serialization import save_potential_file

        hyperparameters = {
            'model_kind': self.kind,
            'species': list(self.species),
            'cutoff': float(self.cutoff),
            'n_members': len(self.members),
            'members': [member.hyperparameters.to_dict() for member in self.members],
        }
        save_potential_file(path, self.state_dict(), hyperparameters, extras)

    @property
    def kind(self) -> str:
        """The committee's kind, ``<member kind>-committee``."""
        return committee_kind(self.members[0].kind)

    @classmethod
    def load(cls, path: str | os.PathLike | Any, device: str | torch.device = 'cpu') -> Committee:
        """Read a committee written by :meth:`save` (no unpickling of arbitrary objects)."""
        from aiida_alkit.models.serialization import load_potential_file

        return cls._from_content(load_potential_file(path), path, device)

    @classmethod
    def _from_content(cls, content: Any, path: Any, device: str | torch.device) -> Committee:
        from aiida_alkit.models.serialization import PotentialFileError

        header = content.hyperparameters
        if not is_committee(header.get('model_kind')):
            raise PotentialFileError(f'{path}: model kind {header.get("model_kind")!r} is not a committee kind')
        try:
            member_hps = [hyperparameters_from_dict(item) for item in header['members']]
            committee = cls(member_hps, device=device)
        except (KeyError, TypeError, ValueError) as exc:
            raise PotentialFileError(f'{path}: invalid committee hyper-parameters: {exc}') from exc
        if committee.kind != header['model_kind']:
            raise PotentialFileError(
                f'{path}: members of kind {committee.members[0].kind!r} in a {header["model_kind"]!r}'
            )
        if header.get('n_members', len(member_hps)) != len(member_hps):
            raise PotentialFileError(f'{path}: n_members does not match the member hyper-parameters')
        try:
            committee.load_state_dict(content.state_dict)
        except RuntimeError as exc:
            raise PotentialFileError(f'{path}: weights do not match the hyper-parameters: {exc}') from exc
        return committee


class CommitteeCalculator(Calculator):
    """ASE calculator of a :class:`Committee`: member means plus the spread.

    ``energy``, ``free_energy`` (eV), ``forces`` (eV/Å) and, for structures periodic in all three directions,
    ``stress`` (eV/Å³, Voigt order) are member means; ``energy_std`` (eV), ``forces_std`` (N, 3) (eV/Å),
    ``max_force_deviation`` (max_i ε_i, eV/Å) and ``atom_force_deviation`` (N,) describe the spread.
    """

    implemented_properties: ClassVar[list[str]] = [
        'energy',
        'free_energy',
        'forces',
        'stress',
        'energy_std',
        'forces_std',
        'max_force_deviation',
        'atom_force_deviation',
    ]

    def __init__(self, committee: Committee, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.committee = committee

    def calculate(
        self, atoms: Any = None, properties: list[str] | None = None, system_changes: list[str] = all_changes
    ) -> None:
        super().calculate(atoms, properties or ['energy'], system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        committee = self.committee
        # labels=False: the atoms may carry a previous calculator's results that must not enter the batch
        batch = batch_from_atoms(
            [atoms], committee.species, committee.cutoff, committee.device, committee.dtype, labels=False
        )
        out = committee.predict(batch, compute_forces=True, compute_stress=periodic)

        def array(tensor: torch.Tensor) -> np.ndarray:
            return tensor.cpu().numpy().astype(np.float64)

        energy = float(out['energy'][0])
        self.results = {
            'energy': energy,
            'free_energy': energy,
            'forces': array(out['forces']),
            'energy_std': float(out['energy_std'][0]),
            'forces_std': array(out['forces_std']),
            'max_force_deviation': float(out['max_force_deviation'][0]),
            'atom_force_deviation': array(out['atom_force_deviation']),
        }
        if periodic:
            s = array(out['stress'][0])
            self.results['stress'] = full_3x3_to_voigt_6_stress(s)
