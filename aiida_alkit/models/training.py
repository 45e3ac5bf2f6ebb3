"""Training of GM-NN potentials and committees: :func:`train`, the one entry point for Adam (seeds/001 Sec. 2.2,
eq. 5; seeds/003 "Gaussian moment neural network", eq. 14) and RLEKF (seeds/000, :mod:`aiida_alkit.models.rlekf`),
with one per-epoch callback (:class:`EpochReport`), one checkpoint hook, one history format
(:class:`TrainingResult`), one evaluator (:func:`evaluate_errors`) and one train/validation splitter
(:func:`split_train_valid`).

Loss of one structure k with N_k atoms (eq. 5, plus the stress term of seeds/003 eq. 14)::

    L_k = λ_E (E_k^ref - E_k)^2                                              [eV²]
        + λ_F / (3 N_k) Σ_i ||F_ik^ref - F_ik||^2,   λ_F = 12 N_k Å²         [eV²]
        + λ_S / N_k Σ_{a<=b} (V_k (σ_k,ab^ref - σ_k,ab))^2                   [eV²], periodic structures only

* λ_E = 1 and λ_F = 12 N_at a.u. Å² are the values of seeds/001 (so the force term is 4 Σ_i ||ΔF_i||² = 12 N_k
  times the mean squared force-component error: it grows like N_k).
* seeds/003 adds the squared error of the upper triangle of the (symmetric) stress tensor; its weight did not survive
  the text extraction and seeds/001 trains on energies and forces only. We compare stresses as virials
  ``W = V σ = ∂E/∂ε`` (eV), which do not depend on the vacuum of a slab cell (σ itself is diluted by it), and
  divide the squared virial error by N_k: the term is ``N_k Σ_{a<=b} (Δw_ab)²`` with the virial per atom
  ``w = W / N_k`` (eV/atom). For a given per-atom accuracy (intensive Δw and ΔF) it grows like N_k, as the force
  term does, so their balance does not depend on the cell size (DeePMD-kit also divides its squared virial error by
  the number of atoms). λ_S = 1 a.u. Measured on EMT platinum (bulk, vacancy, fcc(111)/(100) slabs with vacuum,
  31-36 atoms; 32x32 GM-NN, 40 frames, 80 epochs, 3 seeds; test RMSE): without stress 137 meV/Å and 7.0 meV/Å³; the
  former term ``λ_S Σ (V Δσ)²`` with λ_S = 1 (90 % of the loss at the start) 250 meV/Å and 3.7 meV/Å³; this term
  (20 % of the loss at the start, 12 % after training) with λ_S = 0.3 / 1 / 3: 122 / 131 / 156 meV/Å and
  3.9 / 3.5 / 3.7 meV/Å³.
  Structures that are not periodic in all three directions (molecules, slabs with ``pbc = (T, T, F)``) have no
  stress and contribute nothing to this term.
* Eq. (5) sums over the training structures; each optimiser step uses the mean over the structures of one
  mini-batch (a constant factor, so the balance of the terms is unchanged).

Optimiser (seeds/001 Sec. 2.2, seeds/003): Adam with β1 = 0.9, β2 = 0.999, ε = 1e-7, mini-batches of 32, layer-wise
learning rates 0.03 (network), 0.02 (representation), 0.05 (shift μ_Z), 0.001 (scale σ_Z), decayed linearly (here
to ``lr_final_fraction`` of the initial values over the planned number of optimiser steps), early stopping on the
validation set (the weights of the best validation epoch are restored at the end; with ``patience`` training also
stops after that many epochs without improvement). The shift μ_Z and the constant c of eq. (4) are initialised by
:meth:`GMNN.fit_shift` on the training energies.

RLEKF (Algorithm 5 of seeds/000) takes one Kalman step per ``batch_size`` configurations in shuffled order and
keeps its last weights (they match its covariance P); its epochs are evaluated on the whole training set.

Neighbour lists are computed once per structure (:class:`GraphDataset`); a mini-batch is then assembled by index
arithmetic only. Units: Å, eV, eV/Å, eV/Å³ (ASE stress sign). No AiiDA import.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np
import torch

from aiida_alkit.io.arrays import concatenated_ranges as _ranges
from aiida_alkit.models.batching import Batch, batch_from_configurations, species_index_table
from aiida_alkit.models.gmnn import GMNN, PAPER_LEARNING_RATES, count_species
from aiida_alkit.models.neighbors import neighbor_list
from aiida_alkit.models.rlekf import P0_CALIBRATION_CONFIGURATIONS, RLEKF, RLEKFConfig

__all__ = [
    'CheckpointHook',
    'CompiledLoss',
    'EpochCallback',
    'EpochReport',
    'GraphDataset',
    'LossWeights',
    'TrainingConfig',
    'TrainingDivergedError',
    'TrainingResult',
    'evaluate_errors',
    'format_report',
    'log_progress',
    'loss_function',
    'loss_terms',
    'split_train_valid',
    'train',
]

#: Metrics :func:`evaluate_errors` reports (energy per atom eV/atom, forces eV/Å, stress eV/Å³).
ERROR_KEYS = ('energy_rmse', 'energy_mae', 'forces_rmse', 'forces_mae', 'stress_rmse', 'stress_mae')
#: Quantities of the RMSE dictionaries of :class:`EpochReport` (energy per atom, forces, stress).
RMSE_KEYS = ('energy', 'forces', 'stress')
_UPPER = torch.triu_indices(3, 3)  # the six (a <= b) components of a symmetric 3x3 tensor


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite (diverged optimisation or non-finite labels/weights)."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(
            f'training diverged in epoch {epoch} (optimiser step {step}): the loss is {value}; '
            f'lower the learning rates or check the labels for NaN/inf'
        )
        self.epoch = epoch
        self.step = step
        self.value = value


@dataclass
class LossWeights:
    """Weights of the loss (eq. 5 and seeds/003 eq. 14), see the module docstring.

    :param energy: λ_E, a.u. (1).
    :param forces: λ_F / N_at, a.u. Å² (12, i.e. λ_F = 12 N_at; the per-structure force term is 4 Σ_i ||ΔF_i||²).
    :param stress: λ_S on the squared virial errors of the upper triangle divided by the number of atoms,
        ``Σ_{a<=b} (V Δσ_ab)² / N`` (= N × the squared error of the virial per atom ``V σ / N``, eV²), a.u. (1).
    """

    energy: float = 1.0
    forces: float = 12.0
    stress: float = 1.0


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class GraphDataset:
    """Configurations with their neighbour lists computed once; :meth:`batch` assembles any subset quickly.

    Atom and edge data of all structures are stored concatenated (edges with structure-local atom indices), so a
    mini-batch is two range gathers and an index shift. Energies are kept in float64 (large total energies lose
    meV in float32); everything else is in the model's dtype on the model's device.
    """

    positions: torch.Tensor
    species: torch.Tensor
    cells: torch.Tensor
    pbc: torch.Tensor
    atom_offsets: np.ndarray
    edge_offsets: np.ndarray
    edge_i: np.ndarray
    edge_j: np.ndarray
    edge_shifts: torch.Tensor
    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None

    @classmethod
    def from_configurations(
        cls,
        arrays: Any,
        species: Sequence[str],
        cutoff: float,
        device: str | torch.device = 'cpu',
        dtype: torch.dtype = torch.float32,
    ) -> GraphDataset:
        """Compute neighbour lists (cutoff in Å) of every configuration of a ``ConfigurationArrays`` once."""
        offsets = np.asarray(arrays.offsets, dtype=np.int64)
        positions = np.asarray(arrays.positions, dtype=np.float64)
        cells = np.asarray(arrays.cells, dtype=np.float64)
        pbc = np.asarray(arrays.pbc, dtype=bool)
        index = species_index_table(species)[np.asarray(arrays.numbers, dtype=np.int64)]
        if (index < 0).any():
            raise ValueError(f'the configurations contain elements outside the model species {list(species)}')
        edges_i, edges_j, edges_s, counts = [], [], [], []
        for b in range(len(offsets) - 1):
            i, j, shifts = neighbor_list(positions[offsets[b] : offsets[b + 1]], cells[b], pbc[b], cutoff)
            edges_i.append(i)
            edges_j.append(j)
            edges_s.append(shifts)
            counts.append(len(i))
        edge_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=edge_offsets[1:])

        def floats(values: np.ndarray | None, kind: torch.dtype = dtype) -> torch.Tensor | None:
            if values is None:
                return None
            return torch.as_tensor(np.asarray(values, dtype=np.float64), device=device).to(kind)

        return cls(
            positions=floats(positions),
            species=torch.as_tensor(index, device=device),
            cells=floats(cells),
            pbc=torch.as_tensor(pbc, device=device),
            atom_offsets=offsets,
            edge_offsets=edge_offsets,
            edge_i=np.concatenate(edges_i).astype(np.int64) if edges_i else np.zeros(0, np.int64),
            edge_j=np.concatenate(edges_j).astype(np.int64) if edges_j else np.zeros(0, np.int64),
            edge_shifts=torch.as_tensor(
                np.concatenate(edges_s).reshape(-1, 3) if edges_s else np.zeros((0, 3)), device=device
            ).to(torch.int64),
            energy=floats(arrays.energy, torch.float64),
            forces=floats(arrays.forces),
            stress=floats(None if arrays.stress is None else np.reshape(arrays.stress, (-1, 3, 3))),
        )

    def __len__(self) -> int:
        return len(self.atom_offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        """Atoms per configuration."""
        return np.diff(self.atom_offsets)

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def _index_arrays(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Host-side gather indices of the mini-batch ``indices`` (atoms, edges with shifted atom indices, ...)."""
        sizes = self.sizes[indices]
        edge_counts = np.diff(self.edge_offsets)[indices]
        new_starts = np.cumsum(sizes) - sizes
        edge_index = _ranges(self.edge_offsets[indices], edge_counts)
        shift = np.repeat(new_starts, edge_counts)
        return {
            'atoms': _ranges(self.atom_offsets[indices], sizes),
            'structures': indices,
            'structure_index': np.repeat(np.arange(len(indices)), sizes),
            'edge_i': self.edge_i[edge_index] + shift,
            'edge_j': self.edge_j[edge_index] + shift,
            'edges': edge_index,
            'n_atoms': sizes,
        }

    def _assemble(self, index: dict[str, torch.Tensor]) -> Batch:
        atoms, structures = index['atoms'], index['structures']
        return Batch(
            positions=self.positions.index_select(0, atoms),
            species=self.species.index_select(0, atoms),
            cells=self.cells.index_select(0, structures),
            pbc=self.pbc.index_select(0, structures),
            structure_index=index['structure_index'],
            edge_i=index['edge_i'],
            edge_j=index['edge_j'],
            edge_shifts=self.edge_shifts.index_select(0, index['edges']),
            n_atoms=index['n_atoms'],
            energy=None if self.energy is None else self.energy.index_select(0, structures),
            forces=None if self.forces is None else self.forces.index_select(0, atoms),
            stress=None if self.stress is None else self.stress.index_select(0, structures),
        )

    def batch(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """Mini-batch of the configurations ``indices`` (in that order), labels included."""
        return self.batches(len(np.asarray(indices).reshape(-1)) or 1, indices)[0]

    def batches(self, batch_size: int, order: np.ndarray | None = None) -> list[Batch]:
        """Consecutive mini-batches of at most ``batch_size`` configurations (in ``order`` when given).

        The gather indices of all the batches go to the device in ONE copy (a training epoch on a GPU then makes one
        host-to-device transfer, not five per step).
        """
        order = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64).reshape(-1)
        parts = [self._index_arrays(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
        if not parts:
            return []
        keys = list(parts[0])
        lengths = np.array([[len(part[key]) for key in keys] for part in parts], dtype=np.int64).reshape(-1)
        flat = np.concatenate([np.asarray(part[key], dtype=np.int64) for part in parts for key in keys])
        uploaded = torch.from_numpy(flat).to(self.device)
        pieces = iter(torch.split(uploaded, lengths.tolist()))
        return [self._assemble({key: next(pieces) for key in keys}) for _ in parts]


def split_train_valid(
    arrays: Any,
    fraction: float = 0.0,
    seed: int | np.random.Generator = 0,
    *,
    tag: str | None = None,
    tags: bool = False,
) -> tuple[Any, Any | None] | np.ndarray:
    """The one train/validation splitter: from a per-configuration tag, or a seeded random draw.

    :param arrays: a ``ConfigurationArrays`` (with ``tags=True`` also just the number of configurations ``n``).
    :param fraction: share drawn for validation when there is no tag, in [0, 1): ``round(fraction * n)``
        configurations, at least one when ``fraction > 0`` and ``n >= 2``, never all of them.
    :param seed: seed of ``numpy.random.default_rng``, or a generator to draw from (it always draws one
        permutation of ``n``, so that successive calls on a shared generator stay reproducible).
    :param tag: name of an ``info`` array of 'train'/'valid' strings (e.g. ``'split'``): when the set carries it,
        its 'valid' configurations form the validation set and nothing is drawn.
    :param tags: return the 'train'/'valid' labels (dtype ``<U5``) instead of the two subsets.
    :return: ``(train, valid)`` in the original order (``valid`` None when empty; ``arrays`` itself as ``train``
        when nothing is held out), or the labels.
    :raises ValueError: for a fraction outside [0, 1), or a tag that leaves no training configuration.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f'the validation fraction must be in [0, 1), got {fraction}')
    counted = isinstance(arrays, (int, np.integer))
    if counted and not tags:
        raise TypeError('split_train_valid needs configurations to return subsets; pass tags=True for labels')
    n = int(arrays) if counted else len(arrays)
    if tag is not None and not counted and tag in arrays.info:
        valid = np.asarray(arrays.info[tag]) == 'valid'
        if not tags and valid.all():
            raise ValueError(f'the set has no training configurations (every info.{tag} is "valid")')
    else:
        n_valid = 0 if fraction == 0 or n < 2 else min(max(1, round(fraction * n)), n - 1)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        valid = np.zeros(n, dtype=bool)
        valid[rng.permutation(n)[:n_valid]] = True
    if tags:
        return np.where(valid, 'valid', 'train').astype('<U5')
    if not valid.any():
        return arrays, None
    return arrays.subset(np.flatnonzero(~valid)), arrays.subset(np.flatnonzero(valid))


# ---------------------------------------------------------------------------------------------------- loss
def _stress_mask(batch: Batch) -> torch.Tensor:
    """(B,) structures that have a stress: periodic in all three directions with a finite stress label."""
    if batch.stress is None:
        return torch.zeros(batch.n_structures, dtype=torch.bool, device=batch.positions.device)
    return batch.pbc.all(dim=-1) & torch.isfinite(batch.stress).flatten(1).all(dim=-1)


def loss_terms(
    predictions: dict[str, torch.Tensor], batch: Batch, weights: LossWeights | None = None
) -> dict[str, torch.Tensor]:
    """Per-batch loss of eq. (5) with the stress term (mean over the batch's structures), and its parts.

    :return: ``loss`` (scalar, eV²) and the weighted per-structure means ``energy``, ``forces``, ``stress``
        (``λ_S Σ_{a<=b} (V Δσ_ab)² / N``, see the module docstring).
    """
    weights = weights or LossWeights()
    if batch.energy is None:
        raise ValueError('training needs energy labels')
    n_structures = batch.n_structures
    dtype = predictions['energy'].dtype
    energy_error = (predictions['energy'].to(torch.float64) - batch.energy.to(torch.float64)).to(dtype)
    terms = {'energy': weights.energy * energy_error.square().sum() / n_structures}
    zero = energy_error.new_zeros(())
    if weights.forces and batch.forces is not None and 'forces' in predictions:
        # λ_F / (3 N_k) Σ_i ||ΔF_i||² with λ_F = forces · N_k: the per-structure factor is forces / 3.
        terms['forces'] = weights.forces / 3.0 * (predictions['forces'] - batch.forces).square().sum() / n_structures
    else:
        terms['forces'] = zero
    if weights.stress and 'stress' in predictions and batch.stress is not None:
        mask = _stress_mask(batch)  # structures without a stress label contribute 0 (no host synchronisation)
        volume = torch.linalg.det(batch.cells).abs()
        reference = torch.where(mask[:, None, None], batch.stress, predictions['stress'].detach())
        virial_error = (predictions['stress'] - reference) * volume[:, None, None]  # V Δσ, eV
        upper = virial_error[:, _UPPER[0], _UPPER[1]]  # (B, 6)
        per_structure = upper.square().sum(dim=-1) / batch.n_atoms.to(upper.dtype)  # Σ_{a<=b} (V Δσ_ab)² / N
        terms['stress'] = weights.stress * (per_structure * mask).sum() / n_structures
    else:
        terms['stress'] = zero
    terms['loss'] = terms['energy'] + terms['forces'] + terms['stress']
    return terms


def loss_function(
    predictions: dict[str, torch.Tensor], batch: Batch, weights: LossWeights | None = None
) -> torch.Tensor:
    """Loss of eq. (5) + the stress term of seeds/003 eq. (14), averaged over the batch's structures (eV²)."""
    return loss_terms(predictions, batch, weights)['loss']


# ---------------------------------------------------------------------------------------------------- errors
class _ErrorAccumulator:
    """Sums of squared/absolute errors over batches; :meth:`result` gives RMSE/MAE.

    The sums stay on the model's device until :meth:`result` (one host synchronisation per epoch, not per step).
    """

    KEYS = ('e2', 'e1', 'f2', 'f1', 's2', 's1', 'loss', 'stress_components')

    def __init__(self) -> None:
        self.totals: torch.Tensor | None = None
        self.counts: dict[str, int] = dict.fromkeys(('structures', 'force_components'), 0)

    def add(self, predictions: dict[str, torch.Tensor], batch: Batch, loss: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            zero = predictions['energy'].new_zeros((), dtype=torch.float64)
            parts = dict.fromkeys(self.KEYS, zero)
            if batch.energy is not None:
                error = (predictions['energy'].to(torch.float64) - batch.energy.to(torch.float64)) / batch.n_atoms
                parts['e2'], parts['e1'] = error.square().sum(), error.abs().sum()
            if batch.forces is not None and 'forces' in predictions:
                error = (predictions['forces'] - batch.forces).to(torch.float64)
                parts['f2'], parts['f1'] = error.square().sum(), error.abs().sum()
                self.counts['force_components'] += error.numel()
            if 'stress' in predictions and batch.stress is not None:
                mask = _stress_mask(batch)
                reference = torch.where(mask[:, None, None], batch.stress, predictions['stress'])
                error = (predictions['stress'] - reference).to(torch.float64)
                parts['s2'], parts['s1'] = error.square().sum(), error.abs().sum()
                parts['stress_components'] = 9.0 * mask.sum().to(torch.float64)
            if loss is not None:
                parts['loss'] = loss.detach().to(torch.float64) * batch.n_structures
            values = torch.stack([parts[key] for key in self.KEYS])
            self.totals = values if self.totals is None else self.totals + values
            self.counts['structures'] += batch.n_structures

    def result(self) -> dict[str, float | None]:
        totals = [0.0] * len(self.KEYS) if self.totals is None else self.totals.cpu().tolist()
        s = dict(zip(self.KEYS, totals, strict=True))
        n, nf, ns = self.counts['structures'], self.counts['force_components'], round(s['stress_components'])
        self.counts['stress_components'] = ns
        return {
            'energy_rmse': math.sqrt(s['e2'] / n) if n else None,
            'energy_mae': s['e1'] / n if n else None,
            'forces_rmse': math.sqrt(s['f2'] / nf) if nf else None,
            'forces_mae': s['f1'] / nf if nf else None,
            'stress_rmse': math.sqrt(s['s2'] / ns) if ns else None,
            'stress_mae': s['s1'] / ns if ns else None,
            'loss': s['loss'] / n if n else None,
        }


def _needs(data: GraphDataset, weights: LossWeights | None = None) -> tuple[bool, bool]:
    """(forces, stress) worth computing for this data set."""
    forces = data.forces is not None and (weights is None or weights.forces != 0)
    stress = data.stress is not None and bool(data.pbc.all(dim=-1).any()) and (weights is None or weights.stress != 0)
    return forces, stress


def evaluate_errors(
    model: GMNN,
    data: Any,
    batch_size: int = 64,
    weights: LossWeights | None = None,
) -> dict[str, Any]:
    """Errors of a model on labelled configurations.

    :param data: a ``ConfigurationArrays`` or a :class:`GraphDataset`.
    :param weights: also report the mean per-structure ``loss`` (eq. 5 + stress term) with these weights.
    :return: ``energy_rmse``/``energy_mae`` of the energy per atom (eV/atom), ``forces_rmse``/``forces_mae`` over
        force components (eV/Å), ``stress_rmse``/``stress_mae`` over the nine stress components of the structures
        periodic in all three directions (eV/Å³; None when there are none), ``loss`` (None without ``weights``),
        ``n_structures``, ``n_atoms``, ``n_stress_structures``.
    """
    if not isinstance(data, GraphDataset):
        data = GraphDataset.from_configurations(data, model.species, model.cutoff, model.device, model.dtype)
    if data.energy is None:
        raise ValueError('evaluate_errors needs energy labels')
    need_forces, need_stress = _needs(data)
    accumulator = _ErrorAccumulator()
    for batch in data.batches(batch_size):
        predictions = model(batch, compute_forces=need_forces, compute_stress=need_stress, training=False)
        loss = loss_function(predictions, batch, weights) if weights is not None else None
        accumulator.add(predictions, batch, loss)
    result: dict[str, Any] = accumulator.result()
    if weights is None:
        result['loss'] = None
    result['n_structures'] = len(data)
    result['n_atoms'] = int(data.atom_offsets[-1])
    result['n_stress_structures'] = accumulator.counts['stress_components'] // 9
    return result


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class TrainingConfig:
    """Settings of :func:`train` (defaults: the papers' Adam settings, seeds/001 Sec. 2.2 and seeds/003).

    RLEKF uses ``epochs``, ``batch_size`` (configurations per Kalman step; 1 in seeds/000), ``valid_fraction``,
    ``patience``, ``early_stopping_metric``, ``fit_shift``, ``device``, ``eval_batch_size``, ``num_threads`` and the
    loss weights (for the reported loss only); its own settings are an :class:`~aiida_alkit.models.rlekf.RLEKFConfig`.

    :param epochs: planned number of epochs (1000); the linear learning-rate decay spans them.
    :param batch_size: structures per mini-batch (32; smaller when there are fewer training structures).
    :param learning_rates: initial Adam learning rate per parameter group ('nn', 'representation', 'shift',
        'scale'); the groups not given take the model kind's defaults (``default_learning_rates``: GM-NN
        :data:`PAPER_LEARNING_RATES` 0.03, 0.02, 0.05, 0.001; MACE 0.01 for its network), see :meth:`rates_for`.
    :param lr_final_fraction: the learning rates decay linearly to this fraction of their initial values at the end
        of the planned epochs (0: to zero).
    :param adam_betas: Adam β1, β2 (0.9, 0.999). :param adam_eps: Adam ε (1e-7).
    :param energy_weight: λ_E (1). :param forces_weight: λ_F / N_at, Å² (12). :param stress_weight: λ_S on the
        squared virial errors divided by the number of atoms (1); see :class:`LossWeights`.
    :param valid_fraction: fraction of the training set held out for early stopping when :func:`train` is
        given no validation set (0.1; 0 disables).
    :param patience: stop after this many epochs without a better validation value (None: run all epochs; the
        best weights are restored in either case). ``max_epochs_without_improvement`` is an alias.
    :param early_stopping_metric: 'loss' (the validation loss, default), 'energy_rmse', 'forces_rmse' or
        'stress_rmse'.
    :param fit_shift: initialise μ_Z and c of eq. (4) from the training energies first (True).
    :param seed: seed of the validation split and the mini-batch order (the weight initialisation is the model's).
    :param device: where to train (None: where the model is).
    :param eval_batch_size: structures per batch when evaluating errors.
    :param num_threads: torch intra-op threads while training (None: leave the process setting). Small models on
        a busy machine train several times faster with 1.
    :param log_every: epochs between the progress lines of :func:`log_progress` callbacks such as the train job's
        (the callback of :func:`train` itself is called after every epoch).
    :param compile_step: Adam only: evaluate each step's loss (forces and stress by autograd inside) and its gradients
        as one compiled graph (``torch.compile``): 5.6x fewer operator calls per step for the default model (550
        against 3094, ``bench_model.py --compile-step``; kernel launches on a GPU) for a compilation of 20-70 s per
        architecture and process at the start. Off by default: on the CPU a run must be long for the compilation to
        pay. GM-NN models only, and a torch whose compiler traces
        ``torch.autograd.grad`` (``torch._dynamo.config.trace_autograd_ops``, present in torch 2.13).
    """

    epochs: int = 1000
    batch_size: int = 32
    learning_rates: dict[str, float] = field(default_factory=dict)
    lr_final_fraction: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-7
    energy_weight: float = 1.0
    forces_weight: float = 12.0
    stress_weight: float = 1.0
    valid_fraction: float = 0.1
    patience: int | None = None
    max_epochs_without_improvement: int | None = None
    early_stopping_metric: str = 'loss'
    fit_shift: bool = True
    seed: int = 0
    device: str | None = None
    eval_batch_size: int = 64
    num_threads: int | None = None
    log_every: int = 1
    compile_step: bool = False

    def __post_init__(self) -> None:
        rates = {str(key): float(value) for key, value in dict(self.learning_rates).items()}
        unknown = set(rates) - set(PAPER_LEARNING_RATES)
        if unknown:
            raise ValueError(f'unknown parameter groups {sorted(unknown)}; known: {sorted(PAPER_LEARNING_RATES)}')
        self.learning_rates = rates
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))
        if self.max_epochs_without_improvement is not None:
            if self.patience is not None and self.patience != self.max_epochs_without_improvement:
                raise ValueError('patience and max_epochs_without_improvement are aliases; give one of them')
            self.patience = self.max_epochs_without_improvement
        self.max_epochs_without_improvement = self.patience
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f'num_threads must be positive or None, got {self.num_threads}')
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1 or self.log_every < 1:
            raise ValueError('epochs, batch_size, eval_batch_size and log_every must be positive')
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f'lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}')
        if self.patience is not None and self.patience < 1:
            raise ValueError(f'patience must be positive or None, got {self.patience}')
        if self.early_stopping_metric not in ('loss', 'energy_rmse', 'forces_rmse', 'stress_rmse'):
            raise ValueError(f'unknown early-stopping metric {self.early_stopping_metric!r}')
        if min(self.energy_weight, self.forces_weight, self.stress_weight) < 0:
            raise ValueError('loss weights must be non-negative')
        if not isinstance(self.compile_step, bool):
            raise ValueError(f'compile_step must be true or false, got {self.compile_step!r}')

    def rates_for(self, model: Any) -> dict[str, float]:
        """The learning rate of every parameter group: :attr:`learning_rates` over the model kind's defaults."""
        return {**getattr(model, 'default_learning_rates', PAPER_LEARNING_RATES), **self.learning_rates}

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(self.energy_weight, self.forces_weight, self.stress_weight)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data['adam_betas'] = list(self.adam_betas)
        data['learning_rates'] = dict(self.learning_rates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {item.name for item in fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        if 'adam_betas' in values:
            values['adam_betas'] = tuple(values['adam_betas'])
        return cls(**values)


@dataclass(frozen=True)
class EpochReport:
    """What :func:`train` passes to its callback after every epoch, for every optimizer and committee member.

    :param epoch: epoch of this run (1 ... ``epochs``). :param epochs: planned number of epochs of the run.
    :param train_loss: loss (eq. 5 + stress term, eV²) on the training set: Adam, the mean over the epoch's
        mini-batches, each taken before its step; RLEKF, evaluated after the epoch.
    :param valid_loss: loss on the validation set after the epoch (None without one).
    :param train_rmse: ``{'energy': eV/atom, 'forces': eV/Å, 'stress': eV/Å³}`` (None where not labelled).
    :param valid_rmse: the same on the validation set after the epoch (empty without one).
    :param lr: Adam's learning rate of the network group after the epoch (None for RLEKF).
    :param seconds: wall time of the epoch, its validation included, s.
    :param member: committee member (None for a single model).
    :param best: the model keeps these weights if training ends now (Adam: the best early-stopping value so far,
        restored at the end; RLEKF keeps its last weights, which match its covariance P).
    :param kalman_lambda: RLEKF's fading-memory factor λ after the epoch (None for Adam).
    """

    epoch: int
    epochs: int
    train_loss: float | None
    valid_loss: float | None
    train_rmse: dict[str, float | None]
    valid_rmse: dict[str, float | None]
    lr: float | None
    seconds: float
    member: int | None = None
    best: bool = False
    kalman_lambda: float | None = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any], epochs: int, best: bool) -> EpochReport:
        """The report of one :attr:`TrainingResult.history` entry."""

        def rmse(split: str) -> dict[str, float | None]:
            if f'{split}_loss' not in entry:
                return {}
            return {key: entry.get(f'{split}_{key}_rmse') for key in RMSE_KEYS}

        return cls(
            epoch=entry['epoch'],
            epochs=epochs,
            train_loss=entry.get('train_loss'),
            valid_loss=entry.get('valid_loss'),
            train_rmse=rmse('train'),
            valid_rmse=rmse('valid'),
            lr=entry.get('lr'),
            seconds=entry['time_s'],
            member=entry.get('member'),
            best=best,
            kalman_lambda=entry.get('lambda'),
        )


class EpochCallback(Protocol):
    """``callback(report)`` of :func:`train`, called after every epoch; returning True stops the training."""

    def __call__(self, report: EpochReport, /) -> bool | None: ...


class CheckpointHook(Protocol):
    """``checkpoint(epoch, state)`` of :func:`train`, called after every epoch (after the callback).

    ``state`` holds ``model`` (the current weights, a state dict, not the best ones), ``optimizer`` (Adam's or
    RLEKF's state dict) and ``member`` (None for a single model). The tensors are the live ones: save or copy them
    in the hook. An exception it raises ends the training (the train job's walltime stop).
    """

    def __call__(self, epoch: int, state: dict[str, Any], /) -> None: ...


def format_report(report: EpochReport) -> str:
    """One progress line: epoch, learning rate (or RLEKF's λ), train/valid loss, energy (meV/atom) and force
    (meV/Å) RMSE; ``member k:`` in front for a committee member, ``*`` at the end when ``report.best``."""

    def fmt(value: float | None, scale: float = 1.0) -> str:
        return '-' if value is None else f'{value * scale:.4g}'

    rate = f'lr {report.lr:.3g}' if report.lr is not None else f'λ {fmt(report.kalman_lambda)}'
    train, valid = report.train_rmse, report.valid_rmse
    line = (
        f'epoch {report.epoch:4d}  {rate}  loss {fmt(report.train_loss)}/{fmt(report.valid_loss)}  '
        f'E {fmt(train.get("energy"), 1e3)}/{fmt(valid.get("energy"), 1e3)} meV/atom  '
        f'F {fmt(train.get("forces"), 1e3)}/{fmt(valid.get("forces"), 1e3)} meV/Å  (train/valid RMSE)'
    )
    prefix = '' if report.member is None else f'member {report.member}: '
    return prefix + line + ('  *' if report.best else '')


def log_progress(write: Callable[[str], None], every: int = 1) -> EpochCallback:
    """A :func:`train` callback that writes :func:`format_report` lines (e.g. ``print``) every ``every`` epochs
    and at the last planned epoch."""

    def callback(report: EpochReport) -> None:
        if report.epoch % every == 0 or report.epoch == report.epochs:
            write(format_report(report))

    return callback


@dataclass
class TrainingResult:
    """Outcome of :func:`train`, the same for every optimizer (JSON with :meth:`to_dict`).

    :param history: one entry per epoch (epoch 0 = after ``fit_shift``, before any step) and committee member:
        ``epoch``, ``member`` (None for a single model), ``lr`` (Adam's network group; None for RLEKF), ``lambda``
        (RLEKF's λ, RLEKF only), ``train_*`` (Adam: running errors of the epoch's mini-batches, taken before each
        step, from epoch 1; RLEKF: evaluated after the epoch) and ``valid_*`` (after the epoch) for ``loss`` (eV²)
        and the energy (eV/atom), force (eV/Å) and stress (eV/Å³) ``rmse``/``mae``, ``time_s`` (s).
    :param best_epoch: epoch whose weights the model holds at the end (Adam: the best one, restored; RLEKF: the
        last one). :param best_metric: its early-stopping value. Both None for a committee (see ``members``).
    :param metric: the early-stopping key (``valid_loss``, or ``train_loss`` without a validation set, ...).
    :param optimizer: 'adam' or 'rlekf'.
    :param members: a committee's per-member results (their entries are also in ``history``).
    :param rlekf: the trained :class:`~aiida_alkit.models.rlekf.RLEKF` (P and λ; not in :meth:`to_dict`).
    """

    history: list[dict[str, Any]]
    best_epoch: int | None
    best_metric: float | None
    epochs_run: int
    stopped_early: bool
    shift: dict[str, Any] | None
    n_train: int
    n_valid: int
    wall_time_s: float
    metric: str = 'valid_loss'
    optimizer: str = 'adam'
    members: list[TrainingResult] = field(default_factory=list)
    rlekf: RLEKF | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy; a committee's members without their history (it is in ``history``)."""
        data = {
            item.name: copy.deepcopy(getattr(self, item.name))
            for item in fields(self)
            if item.name not in ('members', 'rlekf')
        }
        data['members'] = [{k: v for k, v in member.to_dict().items() if k != 'history'} for member in self.members]
        return data

    def series(self, key: str, member: int | None = None) -> list[Any]:
        """``key`` of every history entry of ``member`` (None: a single model), in epoch order."""
        return [entry.get(key) for entry in self.history if entry.get('member') == member]

    @property
    def best(self) -> dict[str, Any]:
        """History entry of the best epoch (a single model)."""
        return next(entry for entry in self.history if entry['epoch'] == self.best_epoch)


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _prefixed(split: str, errors: dict[str, Any]) -> dict[str, Any]:
    """``{split}_{key}`` for the error keys and the loss of an :func:`evaluate_errors` result."""
    return {f'{split}_{key}': errors[key] for key in (*ERROR_KEYS, 'loss')}


class CompiledLoss:
    """The loss of eq. (5) of a mini-batch and its gradients with respect to the model's parameters as one compiled
    graph (``torch.compile``, dynamic shapes): forces and stress come from ``torch.autograd.grad`` inside it, and the
    parameter gradients from a second ``torch.autograd.grad``, so the compiler sees the whole step and no backward
    pass has to go through a compiled region twice (which torch does not support: the force terms' gradients would
    be lost). The model's ``prepare_batch`` and ``derivative_inputs`` run before, uncompiled.

    Calling it returns ``(loss, predictions, gradients)``, all detached; ``gradients`` follow ``parameters``.
    """

    def __init__(self, model: Any, weights: LossWeights, need_forces: bool, need_stress: bool) -> None:
        if not getattr(model, 'supports_compiled_training', False):
            raise ValueError(
                f'compile_step is implemented for GM-NN models only; a {getattr(model, "kind", type(model).__name__)} '
                'model trains uncompiled (set compile_step to false)'
            )
        import torch._dynamo

        if not hasattr(torch._dynamo.config, 'trace_autograd_ops'):
            raise ValueError(
                f'compile_step needs a torch whose compiler traces torch.autograd.grad (torch 2.13 does); this is '
                f'torch {torch.__version__}: set compile_step to false'
            )
        self.model, self.need_forces, self.need_stress = model, need_forces, need_stress
        self.parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        parameters = self.parameters

        def loss_and_gradients(batch: Batch, positions: torch.Tensor, strain: torch.Tensor | None):
            predictions = model.evaluate_at(batch, positions, strain, need_forces, training=True)
            loss = loss_function(predictions, batch, weights)
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
            gradients = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, gradients, strict=True)]
            detached = {key: value.detach() for key, value in predictions.items()}
            return loss.detach(), detached, [gradient.detach() for gradient in gradients]

        self._function = torch.compile(loss_and_gradients, dynamic=True)

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]]:
        import torch._dynamo
        import torch._inductor.config

        batch = self.model.prepare_batch(batch)
        positions, strain = self.model.derivative_inputs(batch, self.need_forces, self.need_stress)
        # no duck sizing: sizes that happen to be equal in one batch (e.g. pairs and padded slots of a cell without
        # empty slots) would otherwise be assumed equal, and the next batch would compile again; single-threaded
        # generated C++ on the CPU (the matrix products still use every torch thread): with OpenMP, inductor (torch
        # 2.13) failed to generate the scatter-add of the per-species gradients, or the compiled step crashed
        with (
            torch._dynamo.config.patch(trace_autograd_ops=True),
            torch.fx.experimental._config.patch(use_duck_shape=False),
            torch._inductor.config.patch({'cpp.threads': 1}),
        ):
            return self._function(batch, positions, strain)


class _AdamEpochs:
    """Adam (seeds/001 Sec. 2.2) on mini-batches of a :class:`GraphDataset`; restores the best weights."""

    restores_best = True
    rlekf = None

    def __init__(self, model: GMNN, train_set: Any, data: GraphDataset, config: TrainingConfig, _: Any) -> None:
        self.model, self.data, self.config = model, data, config
        self.shift = None
        if config.fit_shift:
            self.shift = model.fit_shift(
                train_set.energy, count_species(train_set.numbers, train_set.offsets, model.species)
            )
        groups = model.parameter_groups()
        self.rates = config.rates_for(model)
        self.optimizer = torch.optim.Adam(
            [{'params': groups[name], 'lr': self.rates[name], 'name': name} for name in groups if groups[name]],
            betas=config.adam_betas,
            eps=config.adam_eps,
            fused=model.device.type == 'cuda',  # one kernel per step on the GPU; the CPU keeps the default (foreach)
        )
        self.batch_size = min(config.batch_size, len(data))
        total_steps = config.epochs * math.ceil(len(data) / self.batch_size)
        final = config.lr_final_fraction
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 1.0 - (1.0 - final) * min(step / total_steps, 1.0)
        )
        self.need_forces, self.need_stress = _needs(data, config.loss_weights)
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self.compiled = None
        if config.compile_step:
            self.compiled = CompiledLoss(model, config.loss_weights, self.need_forces, self.need_stress)

    def train_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimiser step on a mini-batch: the loss (eq. 5, on the device) and the predictions."""
        if self.compiled is not None:
            loss, predictions, gradients = self.compiled(batch)
            for parameter, gradient in zip(self.compiled.parameters, gradients, strict=True):
                parameter.grad = gradient
        else:
            predictions = self.model(
                batch, compute_forces=self.need_forces, compute_stress=self.need_stress, training=True
            )
            loss = loss_function(predictions, batch, self.config.loss_weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss, predictions

    def initial(self) -> dict[str, Any]:
        return {'lr': self.rates['nn']}

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        model = self.model
        model.train()
        accumulator = _ErrorAccumulator()
        losses = []
        for batch in self.data.batches(self.batch_size, self.rng.permutation(len(self.data))):
            loss, predictions = self.train_step(batch)
            accumulator.add(predictions, batch, loss)
            losses.append(loss.detach())
        # the loss is checked once per epoch (no host synchronisation per step); the best weights come back anyway
        values = torch.stack(losses).to(torch.float64).cpu().numpy()
        self.step += len(values)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise TrainingDivergedError(epoch, self.step - len(values) + int(bad[0]) + 1, float(values[bad[0]]))
        model.eval()
        return {'lr': self.optimizer.param_groups[0]['lr'], **_prefixed('train', accumulator.result())}

    def state(self) -> dict[str, Any]:
        return {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict()}


class _RLEKFEpochs:
    """RLEKF (seeds/000 Algorithm 5): per epoch, one step per ``batch_size`` configurations in shuffled order.

    A new :class:`RLEKF` (``settings`` None or an :class:`RLEKFConfig`) follows ``fit_shift``; with ``p0`` None it
    sets P_0 by :func:`~aiida_alkit.models.rlekf.automatic_p0` on at most ``P0_CALIBRATION_CONFIGURATIONS`` (32)
    evenly spaced training configurations. An :class:`RLEKF` given as ``settings`` is continued (no ``fit_shift``).
    """

    restores_best = False

    def __init__(self, model: GMNN, train_set: Any, data: GraphDataset, config: TrainingConfig, settings: Any) -> None:
        if train_set.forces is None:
            raise ValueError('RLEKF training needs energy and force labels')
        self.model, self.train_set, self.data, self.config = model, train_set, data, config
        self.shift = None
        self.cache: dict[int, Batch] = {}
        if isinstance(settings, RLEKF):
            self.rlekf = settings
        else:
            if config.fit_shift:
                self.shift = model.fit_shift_from_batch(self._batch(np.arange(len(train_set))))
            calibration = None
            if settings is None or settings.p0 is None:
                count = min(len(train_set), P0_CALIBRATION_CONFIGURATIONS)
                calibration = self._batch(np.unique(np.linspace(0, len(train_set) - 1, count).round().astype(np.int64)))
            self.rlekf = RLEKF(model, settings, calibration)
        self.shuffle_rng = np.random.default_rng(self.rlekf.config.seed + 1)

    def _batch(self, indices: np.ndarray) -> Batch:
        hp = self.model.hyperparameters
        return batch_from_configurations(
            self.train_set, hp.species, hp.cutoff, indices, self.model.device, self.model.dtype
        )

    def initial(self) -> dict[str, Any]:
        return self._metrics()

    def _metrics(self) -> dict[str, Any]:
        """λ and the errors on the whole training set with the current weights."""
        errors = evaluate_errors(self.model, self.data, self.config.eval_batch_size, self.config.loss_weights)
        return {'lr': None, 'lambda': self.rlekf.lam, **_prefixed('train', errors)}

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        batch_size = self.config.batch_size
        order = self.shuffle_rng.permutation(len(self.train_set))
        for first in range(0, len(order), batch_size):
            indices = order[first : first + batch_size]
            if batch_size == 1:  # the paper's setting: the same few batches again every epoch
                key = int(indices[0])
                if key not in self.cache:
                    self.cache[key] = self._batch(indices)
                batch = self.cache[key]
            else:
                batch = self._batch(indices)
            self.rlekf.step(batch)
        return self._metrics()

    def state(self) -> dict[str, Any]:
        return {'model': self.model.state_dict(), 'optimizer': self.rlekf.state_dict()}


_OPTIMIZERS = {'adam': _AdamEpochs, 'rlekf': _RLEKFEpochs}


def train(
    model: GMNN | Any,
    train_set: Any,
    valid_set: Any | None = None,
    config: TrainingConfig | None = None,
    *,
    optimizer: str = 'adam',
    rlekf: RLEKFConfig | RLEKF | None = None,
    callback: EpochCallback | None = None,
    checkpoint: CheckpointHook | None = None,
) -> TrainingResult:
    """Train a GM-NN model or a committee in place: the one training entry point.

    :param model: a :class:`GMNN`, or a :class:`~aiida_alkit.models.committee.Committee` (anything with
        ``members``), whose members are trained one after the other on the same data, DP-GEN style: member k
        with ``config.seed + k`` (and ``rlekf.seed + k``).
    :param train_set: labelled ``ConfigurationArrays`` (energy required; forces, and stress for Adam, used when
        present; RLEKF needs forces).
    :param valid_set: labelled ``ConfigurationArrays`` for early stopping and the validation errors; when None,
        ``config.valid_fraction`` of ``train_set`` is held out with ``config.seed`` (once, for all members).
    :param config: epochs, batch size, ``fit_shift``, ``patience``, ``eval_batch_size``, device, threads, the loss
        weights (Adam's loss, and the loss reported for RLEKF) and Adam's settings.
    :param optimizer: 'adam' (the best validation weights are restored at the end) or 'rlekf' (the last weights
        are kept; ``result.rlekf`` holds P and λ).
    :param rlekf: RLEKF settings, or an :class:`RLEKF` of this model to continue (single models only).
    :param callback: called with an :class:`EpochReport` after every epoch; returning True stops the training.
    :param checkpoint: called as ``checkpoint(epoch, state)`` after every epoch, see :class:`CheckpointHook`.
    :raises TrainingDivergedError: when Adam's loss becomes NaN/inf, naming the epoch (best weights restored).
    """
    config = config or TrainingConfig()
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f'unknown optimizer {optimizer!r}: use "adam" or "rlekf"')
    if train_set.energy is None:
        raise ValueError('training needs energy labels on the training configurations')
    if config.compile_step and optimizer != 'adam':
        raise ValueError(f'compile_step applies to Adam only; {optimizer} trains uncompiled')
    members = getattr(model, 'members', None)
    if members is not None and isinstance(rlekf, RLEKF):
        raise ValueError('an RLEKF state belongs to one model; give RLEKFConfig settings to train a committee')
    previous = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        if valid_set is None and config.valid_fraction > 0 and len(train_set) >= 2:
            train_set, valid_set = split_train_valid(train_set, config.valid_fraction, config.seed)
        if members is None:
            return _train_model(model, train_set, valid_set, config, optimizer, rlekf, callback, checkpoint)
        started = time.perf_counter()
        results = []
        for k, member in enumerate(members):
            member_config = replace(config, seed=config.seed + k, valid_fraction=0.0)
            settings = None if rlekf is None else replace(rlekf, seed=rlekf.seed + k)
            results.append(
                _train_model(member, train_set, valid_set, member_config, optimizer, settings, callback, checkpoint, k)
            )
        return TrainingResult(
            history=[entry for result in results for entry in result.history],
            best_epoch=None,
            best_metric=None,
            epochs_run=max(result.epochs_run for result in results),
            stopped_early=any(result.stopped_early for result in results),
            shift=None,
            n_train=results[0].n_train,
            n_valid=results[0].n_valid,
            wall_time_s=time.perf_counter() - started,
            metric=results[0].metric,
            optimizer=optimizer,
            members=results,
        )
    finally:
        torch.set_num_threads(previous)


def _train_model(
    model: GMNN,
    train_set: Any,
    valid_set: Any | None,
    config: TrainingConfig,
    optimizer: str,
    settings: RLEKFConfig | RLEKF | None,
    callback: EpochCallback | None,
    checkpoint: CheckpointHook | None,
    member: int | None = None,
) -> TrainingResult:
    """One model: the epoch loop shared by the optimizers (validation, early stopping, callback, checkpoint)."""
    started = time.perf_counter()
    if config.device is not None:
        model.to(torch.device(config.device))
    device, dtype = model.device, model.dtype
    weights = config.loss_weights
    train_data = GraphDataset.from_configurations(train_set, model.species, model.cutoff, device, dtype)
    valid_data = None
    if valid_set is not None and len(valid_set) > 0:
        valid_data = GraphDataset.from_configurations(valid_set, model.species, model.cutoff, device, dtype)
    epochs = _OPTIMIZERS[optimizer](model, train_set, train_data, config, settings)
    metric_key = ('valid_' if valid_data is not None else 'train_') + config.early_stopping_metric

    def finish(entry: dict[str, Any]) -> dict[str, Any]:
        if valid_data is not None:
            entry.update(_prefixed('valid', evaluate_errors(model, valid_data, config.eval_batch_size, weights)))
        return entry

    def metric_of(entry: dict[str, Any]) -> float:
        value = entry.get(metric_key)
        return math.inf if value is None or not math.isfinite(value) else float(value)

    history = [finish({'epoch': 0, 'member': member, **epochs.initial(), 'time_s': 0.0})]
    best_epoch, best_metric, best_state = 0, metric_of(history[0]), _clone_state(model)
    without_improvement, stopped_early = 0, False
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        try:
            entry = {'epoch': epoch, 'member': member, **epochs.run_epoch(epoch)}
        except TrainingDivergedError:
            model.load_state_dict(best_state)
            raise
        finish(entry)['time_s'] = time.perf_counter() - epoch_started
        history.append(entry)
        improved = metric_of(entry) < best_metric
        if improved:
            best_metric, without_improvement = metric_of(entry), 0
            if epochs.restores_best:
                best_epoch, best_state = epoch, _clone_state(model)
        else:
            without_improvement += 1
        report = EpochReport.from_entry(entry, config.epochs, improved or not epochs.restores_best)
        stop = callback is not None and bool(callback(report))
        if checkpoint is not None:
            checkpoint(epoch, {**epochs.state(), 'member': member})
        if stop or (config.patience is not None and without_improvement >= config.patience):
            stopped_early = True
            break
    if not epochs.restores_best:
        best_epoch, best_metric = history[-1]['epoch'], metric_of(history[-1])
    else:
        if best_epoch == 0 and valid_data is None:
            best_epoch, best_state = history[-1]['epoch'], _clone_state(model)  # no metric before training
        model.load_state_dict(best_state)
    return TrainingResult(
        history=copy.deepcopy(history),
        best_epoch=best_epoch,
        best_metric=best_metric,
        epochs_run=history[-1]['epoch'],
        stopped_early=stopped_early,
        shift=epochs.shift,
        n_train=len(train_data),
        n_valid=0 if valid_data is None else len(valid_data),
        wall_time_s=time.perf_counter() - started,
        metric=metric_key,
        optimizer=optimizer,
        rlekf=epochs.rlekf,
    )
