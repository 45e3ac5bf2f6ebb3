"""RLEKF optimizer (reorganized-layer extended Kalman filter) and Kalman Prediction Uncertainty (KPU) for GM-NN.

Implements ``seeds/000`` (ALKPU paper):

* Sec. 2, Algorithm 1 (EKF with fading memory, EKFfm): ``λ_{t+1} = λ_t ν + 1 - ν`` with ``λ_1 = 0.98``,
  ``ν = 0.9987``, ``P_0 = I`` (we scale ``P_0`` to GM-NN's gradients instead, see "Initial covariance" below).
* Appendix A, Algorithm 4 (one RLEKF update): the prediction vector ``Y`` is made a scalar by the sign flip
  ``Y_j, Y_j^DFT -> -Y_j, -Y_j^DFT`` wherever ``Y_j >= Y_j^DFT`` (so every error ``Y_j^DFT - Y_j`` is >= 0), then
  ``Y = mean_j Y_j``, ``er = mean_j (Y_j^DFT - Y_j)``, ``H = ∇_w Y``, ``α = 1 / (λ L + Hᵀ P H)`` (``L`` = number of
  reorganised layers) and, per block ``l``: ``K = P_l H_l``, ``P_l <- (P_l - α K Kᵀ) / λ``, ``w_l <- w_l + α er K``;
  finally ``λ <- λ ν + 1 - ν``. This is Algorithm 1 with the measurement noise ``α_t² R_t = L`` and a
  block-diagonal ``P`` (line 13 of Algorithm 4 prints ``α er K Y``; the derivation in Appendix A and Algorithm 1
  line 8 give ``α er K``, which is what we do).
* Appendix A, Algorithm 5 (one training step per configuration): one energy update, then ``n_F = 4`` force
  updates, each on the 3 ``n_a`` force components of ``n_a = 6`` randomly chosen atoms, forces recomputed with
  the current weights before each update. λ advances after every update (Algorithm 4 line 17).
* Sec. 3.1, Definition 3.1 and Algorithms 2-3 (KPU): ``KPU(x) = D_w h P_t D_w hᵀ = Σ_l H_l P_l H_lᵀ`` with the
  stored (trained) ``P_t`` and the factor ``α_t^{-2}`` neglected, as in the paper. ``KPU_force`` of a configuration
  is the mean of the KPUs of the 3 n force components of ``n = floor(N_a frac)`` random atoms (``frac = 0.5``),
  each with ``H = ∂F_jk/∂w``. Units: (eV/Å)² times the units of ``P`` (``P_0 = p0 I`` is in units of the squared
  parameters, so the KPU is a relative measure; it is compared with ``KPU_trained`` = mean over training data).

Layer reorganisation ("splitting big and gathering adjacent small layers", Appendix A; details in ref. [33] of the
paper, which this paper does not restate): the trainable parameters, in ``model.named_parameters()`` order, are
cut into contiguous blocks of at most ``block_size`` entries. A parameter tensor with more than ``block_size``
entries is split into full blocks of ``block_size``; its remainder and the following small tensors are gathered
into one block as long as the sum stays <= ``block_size``; a small tensor is never split. The paper defers the
block size to [33]; we use ``block_size = 10240`` as default.

Initial covariance (a departure from the paper's ``P_0 = I``, see :func:`automatic_p0`): one update moves the
scalar prediction by the linearised amount ``er ρ / (1 + ρ)`` with ``ρ = Hᵀ P H / (λ L)``; ``ρ >> 1`` lets the data
dominate, ``ρ << 1`` freezes the weights. The paper's DeePMD (standard parametrisation, O(1) weight gradients, output
in eV) has ``||∂E_i/∂w||² ≈ 10²`` for its [400, 50, 50, 50, 1] fitting net at initialisation (our estimate) and a few
blocks, so ``P_0 = I`` means ``ρ_1`` of order 10: a diffuse prior, data-dominated first updates. GM-NN's NTK
parametrisation (``W x / sqrt(d)``, eq. 3 of seeds/001) and output scale ``c`` (eq. 4, the per-atom RMSE of the
element regression, ≈ 0.01 eV on rattled EMT copper) give ``||∇_w (E/N)||² ≈ 5 c² ≈ 6e-4 eV²``, so ``P_0 = I``
means ``ρ_1 ≈ 1e-4``: each update corrects 0.01 % of its error. The default ``p0=None`` therefore sets
``P_0 = p0 I`` with ``p0 = ρ_0 λ_1 L / mean_k ||∇_w h_E(x_k)||²`` over (at most 32) training configurations at
initialisation, ``ρ_0 = p0_ratio = 1`` (the first energy update halves its error). Scaling a measurement by ``s`` is
the same as ``P_0 -> s² P_0``, so this is the paper's ``P_0 = I`` with the energy measured in units of
``sqrt(mean ||H_E||² / (λ_1 L))``. Measured (validation force RMSE after 5 epochs on 12 rattled EMT copper cells):
16x16 GM-NN with ``block_size = 512`` (L = 5): ``p0 = 1`` (the paper) 368 meV/Å (369 before training),
``p0 = 1e3 / 1e4 / 1e5`` (ρ_1 = 0.13 / 1.3 / 13) 11.7 / 8.8 / 7.2 meV/Å, ``p0 = 1e6`` erratic, ``p0 >= 1e7``
diverges; 64x64 with ``block_size = 1024`` on 24 cells: ρ_0 = 0.1 / 1 / 10 / 100 give 13.8 / 7.8 / 7.1 / 25.5 meV/Å
(Adam with the papers' 1000 epochs: 14.2). ρ_0 = 1 sits in the middle of the working range. ``p0=1.0`` reproduces
the paper's literal setting. Stress labels are not used: Algorithm 5 trains on energies and forces.

Choices where the paper is silent or ambiguous (all configurable in :class:`RLEKFConfig`):

* Energy measurement: ``h_E`` is the energy per atom ``E / N_a`` (eV/atom) by default (``energy_per_atom``), so that
  configurations of different size weigh alike against the noise term ``λ L``; Algorithm 5 literally writes the
  total energy (``energy_per_atom=False``). Optional prefactors ``energy_weight``/``force_weight`` multiply the
  scalarised prediction and its label (1.0 = the paper, which uses none).
* A batch of ``B > 1`` configurations (the paper updates per configuration, ``batch_size = 1``) is handled by
  applying the sign-flip scalarisation to the components of all configurations together (``B`` per-atom energies;
  ``n_a`` atoms of every configuration for forces).
* Configurations with fewer than ``n_a`` atoms use all their atoms; ``n = max(1, floor(N_a frac))`` in the KPU.

Numerics and dtype: ``P`` is always float64 (the subtractive update ``P - α K Kᵀ`` loses positive definiteness in
float32); the update is written as ``P - k kᵀ`` with ``k = sqrt(α) K`` so that ``P`` stays exactly symmetric.
Gradients are taken in the model's dtype (a float64 GM-NN, ``GMNNHyperparameters(dtype='float64')``, is
recommended) and weight updates are cast back to it.

Memory of ``P``: ``Σ_l n_l² × 8`` bytes (float64) over the blocks ``l`` of ``n_l <= block_size`` entries, i.e.
about ``n_params × block_size × 8`` bytes, see :func:`covariance_memory_bytes`. With ``block_size = 10240``:

* default GM-NN, ``GMNNHyperparameters(species=['Cu'])`` (910-512-512-1, 729 666 parameters): 73 blocks
  (70 × 10240 + 7169 + 5632 + 65), 59 385 201 680 bytes ≈ 59.4 GB (55.3 GiB) — impractical on one GPU; the
  paper's DeePMD (a few 10⁴ parameters) suits RLEKF much better. ``block_size = 1024`` gives 5.97 GB,
  ``block_size = 256`` 1.49 GB.
* small preset, ``GMNNHyperparameters.small(['Cu'])`` (94-32-32-1, 4146 parameters): 1 block, 4146² × 8 =
  137 514 528 bytes ≈ 137.5 MB.

The epoch loop of Algorithm 5 is :func:`aiida_alkit.models.training.train` with ``optimizer='rlekf'``. No AiiDA
import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from aiida_alkit.models.batching import Batch, batch_from_configurations

__all__ = [
    'DEFAULT_BLOCK_SIZE',
    'RLEKF',
    'ParameterBlock',
    'RLEKFConfig',
    'automatic_p0',
    'covariance_memory_bytes',
    'kalman_prediction_uncertainty',
    'kpu_trained',
    'partition_parameters',
]

#: Default maximal number of parameters per reorganised layer (block of P), from ref. [33] of seeds/000.
DEFAULT_BLOCK_SIZE = 10240
#: Configurations of the training set whose energy gradients set the automatic P_0 (:func:`automatic_p0`).
P0_CALIBRATION_CONFIGURATIONS = 32
STATE_KIND = 'rlekf'
STATE_VERSION = 1


@dataclass
class RLEKFConfig:
    """Settings of RLEKF (defaults: seeds/000 Sec. 5 and Appendix A).

    :param block_size: largest number of parameters in one reorganised layer (one block of P).
    :param lambda1: initial fading-memory factor λ_1 (0.98).
    :param nu: ν of the update λ <- λ ν + 1 - ν (0.9987).
    :param p0: P_0 = p0 · I, in squared parameter units per eV² of the measurement. None (default): automatic,
        ``p0 = p0_ratio λ_1 L / mean_k ||∇_w h_E(x_k)||²`` on the training data (:func:`automatic_p0`; GM-NN's
        NTK gradients are ~1e4 times smaller than DeePMD's, so the paper's P_0 = I barely learns). 1.0: the paper.
    :param p0_ratio: ρ_0 = Hᵀ P_0 H / (λ_1 L) of the mean first energy measurement for ``p0=None`` (1.0: the first
        energy update corrects half of its error).
    :param n_atoms_per_force_update: n_a, atoms sampled for one force update (6).
    :param n_force_updates: n_F, force updates per training step (4).
    :param energy_per_atom: measure the energy per atom, eV/atom (True) or the total energy, eV (False).
    :param energy_weight: prefactor of the scalarised energy measurement (1.0: none, as in the paper).
    :param force_weight: prefactor of the scalarised force measurement (1.0: none, as in the paper).
    :param seed: seed of the atom sampling and of the shuffling in :func:`~aiida_alkit.models.training.train`.
    """

    block_size: int = DEFAULT_BLOCK_SIZE
    lambda1: float = 0.98
    nu: float = 0.9987
    p0: float | None = None
    p0_ratio: float = 1.0
    n_atoms_per_force_update: int = 6
    n_force_updates: int = 4
    energy_per_atom: bool = True
    energy_weight: float = 1.0
    force_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.block_size) < 1:
            raise ValueError(f'block_size must be positive, got {self.block_size}')
        if not 0.0 < self.lambda1 <= 1.0:
            raise ValueError(f'lambda1 must be in (0, 1], got {self.lambda1}')
        if not 0.0 < self.nu < 1.0:
            raise ValueError(f'nu must be in (0, 1), got {self.nu}')
        if self.p0 is not None and not float(self.p0) > 0.0:
            raise ValueError(f'p0 must be positive or None (automatic), got {self.p0}')
        if not float(self.p0_ratio) > 0.0:
            raise ValueError(f'p0_ratio must be positive, got {self.p0_ratio}')
        self.p0 = None if self.p0 is None else float(self.p0)
        self.p0_ratio = float(self.p0_ratio)
        if int(self.n_atoms_per_force_update) < 1 or int(self.n_force_updates) < 0:
            raise ValueError('n_atoms_per_force_update must be >= 1 and n_force_updates >= 0')
        self.block_size = int(self.block_size)
        self.n_atoms_per_force_update = int(self.n_atoms_per_force_update)
        self.n_force_updates = int(self.n_force_updates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLEKFConfig:
        names = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class ParameterBlock:
    """One reorganised layer: ``segments`` are ``(parameter name, start, stop)`` ranges of flattened tensors."""

    segments: tuple[tuple[str, int, int], ...]

    @property
    def size(self) -> int:
        return sum(stop - start for _, start, stop in self.segments)


def partition_parameters(named_sizes: Sequence[tuple[str, int]], block_size: int) -> list[ParameterBlock]:
    """Layer reorganisation of RLEKF (Appendix A): split big tensors, gather adjacent small ones (see module doc).

    :param named_sizes: ``(name, number of entries)`` of the trainable tensors, in order.
    :return: blocks of <= ``block_size`` entries covering every entry exactly once, in parameter order.
    """
    if block_size < 1:
        raise ValueError(f'block_size must be positive, got {block_size}')
    blocks: list[ParameterBlock] = []
    current: list[tuple[str, int, int]] = []
    filled = 0

    def close() -> None:
        nonlocal current, filled
        if current:
            blocks.append(ParameterBlock(tuple(current)))
        current, filled = [], 0

    for name, size in named_sizes:
        size = int(size)
        if size == 0:
            continue
        if size > block_size:  # split a big layer into full blocks; the remainder stays open for gathering
            close()
            n_full = size // block_size
            for index in range(n_full):
                blocks.append(ParameterBlock(((name, index * block_size, (index + 1) * block_size),)))
            if size > n_full * block_size:
                current, filled = [(name, n_full * block_size, size)], size - n_full * block_size
            continue
        if filled + size > block_size:
            close()
        current.append((name, 0, size))
        filled += size
    close()
    return blocks


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


def covariance_memory_bytes(
    model: nn.Module | Sequence[tuple[str, int]], block_size: int = DEFAULT_BLOCK_SIZE, itemsize: int = 8
) -> int:
    """Bytes of the block-diagonal P (``Σ_l n_l² × itemsize``) without allocating it."""
    named = [(name, p.numel()) for name, p in _trainable(model)] if isinstance(model, nn.Module) else list(model)
    return sum(block.size**2 * itemsize for block in partition_parameters(named, block_size))


def _flatten(parameters: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Concatenate flattened gradients as float64 (zeros for parameters the output does not depend on)."""
    return torch.cat(
        [
            torch.zeros(p.numel(), dtype=torch.float64, device=p.device) if g is None else g.reshape(-1).double()
            for p, g in zip(parameters, gradients, strict=True)
        ]
    )


def _energy_measurement(model: nn.Module, batch: Batch, config: RLEKFConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, label) of the energy measurement h_E: ``energy_weight`` × (E/N_a, eV/atom, or E, eV), (B,)."""
    energy = model(batch, compute_forces=False)['energy']
    label = batch.energy.to(energy.dtype)
    if config.energy_per_atom:
        n_atoms = batch.n_atoms.to(energy.dtype)
        energy, label = energy / n_atoms, label / n_atoms
    return config.energy_weight * energy, config.energy_weight * label


def automatic_p0(model: nn.Module, calibration: Batch | Sequence[Batch], config: RLEKFConfig | None = None) -> float:
    """The default ``p0`` of ``P_0 = p0 I``: ``p0 = ρ_0 λ_1 L / mean_k ||∇_w h_E(x_k)||²`` (squared parameter units/eV²).

    ``h_E(x_k)`` is the energy measurement of configuration ``k`` (energy per atom, eV/atom, times
    ``energy_weight``) with the current weights, ``L`` the number of reorganised layers, ``ρ_0 = config.p0_ratio``.
    With it the first energy update of Algorithm 4 has ``Hᵀ P_0 H / (λ_1 L) = ρ_0`` on average and corrects
    ``ρ_0 / (1 + ρ_0)`` of its error (linearised): the paper's data-dominated start, whatever the output scale of
    the model (see the module docstring for why ``P_0 = I`` does not give it on GM-NN).

    :param calibration: labelled batch(es); every configuration counts once (per-configuration gradients).
    """
    config = config or RLEKFConfig()
    named = _trainable(model)
    parameters = [parameter for _, parameter in named]
    n_blocks = len(partition_parameters([(n, p.numel()) for n, p in named], config.block_size))
    batches = [calibration] if isinstance(calibration, Batch) else list(calibration)
    squared = []
    for batch in batches:
        if batch.energy is None:
            raise ValueError('the automatic P_0 needs energy labels on the calibration batches')
        for index in range(batch.n_structures):
            single = _select_structure(batch, index) if batch.n_structures > 1 else batch
            with torch.enable_grad():
                prediction, _ = _energy_measurement(model, single, config)
                gradient = _flatten(parameters, torch.autograd.grad(prediction.sum(), parameters, allow_unused=True))
            squared.append(float(gradient.square().sum()))
    mean = float(np.mean(squared)) if squared else 0.0
    if not math.isfinite(mean) or mean <= 0.0:
        raise ValueError(f'cannot set the automatic P_0: the mean squared energy gradient is {mean}')
    return config.p0_ratio * config.lambda1 * n_blocks / mean


def _sign_flip_scalarise(prediction: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Algorithm 4 lines 1-6: flip components with ``Y_j >= Y_j^DFT``; return ``(mean Y_j, mean error >= 0)``."""
    label = label.detach().to(prediction.dtype)
    sign = torch.where(prediction.detach() >= label, -1.0, 1.0).to(prediction.dtype)
    y = (sign * prediction).mean()
    error = (sign * (label - prediction.detach())).mean()
    return y, float(error)


class RLEKF:
    """Reorganised-layer extended Kalman filter for a model's trainable parameters (Algorithms 4-5 of seeds/000).

    :param model: a :class:`~aiida_alkit.models.gmnn.GMNN` (any module whose forward takes a batch and returns
        ``energy`` (B,) eV and ``forces`` (N, 3) eV/Å).
    :param config: settings; defaults are the paper's except ``p0`` (automatic, see the module docstring).
    :param calibration: labelled batch(es) for the automatic ``P_0`` (needed when ``config.p0`` is None, ignored
        otherwise); ``self.config.p0`` then holds the value used.

    Attributes: ``P`` (list of float64 (n_l, n_l) tensors, the blocks of P_t), ``lam`` (λ of the next update),
    ``n_updates`` (number of Algorithm 4 updates done), ``blocks`` (the layer reorganisation).
    """

    def __init__(
        self, model: nn.Module, config: RLEKFConfig | None = None, calibration: Batch | Sequence[Batch] | None = None
    ) -> None:
        self.model = model
        config = config or RLEKFConfig()
        named = _trainable(model)
        if not named:
            raise ValueError('the model has no trainable parameters')
        if config.p0 is None:
            if calibration is None:
                raise ValueError(
                    'RLEKFConfig.p0 = None (automatic P_0) needs calibration batches: pass calibration=..., use '
                    "models.training.train, or give p0 explicitly (p0=1.0 is the paper's P_0 = I)"
                )
            config = replace(config, p0=automatic_p0(model, calibration, config))
        self.config = config
        self.parameter_names = [name for name, _ in named]
        self.parameters = [parameter for _, parameter in named]
        self.blocks = partition_parameters([(n, p.numel()) for n, p in named], self.config.block_size)
        self.block_sizes = [block.size for block in self.blocks]
        device = self.parameters[0].device
        self.P = [self.config.p0 * torch.eye(size, dtype=torch.float64, device=device) for size in self.block_sizes]
        self.lam = float(self.config.lambda1)
        self.n_updates = 0
        self.rng = np.random.default_rng(self.config.seed)

    # ------------------------------------------------------------------ sizes
    @property
    def n_parameters(self) -> int:
        return sum(self.block_sizes)

    @property
    def n_blocks(self) -> int:
        """L, the number of reorganised layers."""
        return len(self.blocks)

    def memory_bytes(self) -> int:
        """Bytes held by the P blocks."""
        return sum(block.numel() * block.element_size() for block in self.P)

    # ------------------------------------------------------------------ Algorithm 4
    def _flat_gradient(self, scalar: torch.Tensor) -> torch.Tensor:
        return _flatten(self.parameters, torch.autograd.grad(scalar, self.parameters, allow_unused=True))

    @torch.no_grad()
    def _kalman_update(self, H: torch.Tensor, error: float) -> dict[str, float]:
        """Algorithm 4 lines 8-17 for the gradient ``H`` (flat, float64) of the scalar prediction and ``er >= 0``."""
        lam = self.lam
        H_blocks = H.split(self.block_sizes)
        K_blocks = [P @ h for P, h in zip(self.P, H_blocks, strict=True)]
        hph = float(sum(torch.dot(h, k) for h, k in zip(H_blocks, K_blocks, strict=True)))
        alpha = 1.0 / (lam * self.n_blocks + hph)
        root = math.sqrt(alpha)
        for P, K in zip(self.P, K_blocks, strict=True):
            k = root * K
            P.addr_(k, k, alpha=-1.0).div_(lam)  # (P - α K Kᵀ) / λ, in place and exactly symmetric
        step = (alpha * error) * torch.cat(K_blocks)
        offset = 0
        for parameter in self.parameters:
            n = parameter.numel()
            parameter.add_(step[offset : offset + n].view_as(parameter).to(parameter.dtype))
            offset += n
        self.lam = lam * self.config.nu + 1.0 - self.config.nu
        self.n_updates += 1
        return {'error': error, 'alpha': alpha, 'hph': hph, 'lambda': lam}

    def update_energy(self, batch: Batch) -> dict[str, float]:
        """One RLEKF update on the energies of ``batch`` (Algorithm 5 lines 2-3).

        :return: ``error`` (scalarised abs(ΔE), eV/atom or eV, times ``energy_weight``), ``alpha``, ``hph``, ``lambda``.
        """
        if batch.energy is None:
            raise ValueError('the batch has no energy labels')
        with torch.enable_grad():
            y, error = _sign_flip_scalarise(*_energy_measurement(self.model, batch, self.config))
            H = self._flat_gradient(y)
        return self._kalman_update(H, error)

    def sample_atoms(self, batch: Batch, n_atoms: int | None = None) -> torch.Tensor:
        """Global indices of ``n_a`` random atoms of every configuration (all atoms where fewer)."""
        n_atoms = self.config.n_atoms_per_force_update if n_atoms is None else n_atoms
        sizes = batch.n_atoms.cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        chosen = [
            offsets[b] + np.sort(self.rng.choice(int(sizes[b]), size=min(n_atoms, int(sizes[b])), replace=False))
            for b in range(len(sizes))
        ]
        return torch.as_tensor(np.concatenate(chosen), dtype=torch.int64, device=batch.positions.device)

    def update_forces(self, batch: Batch, atoms: torch.Tensor | None = None) -> dict[str, float]:
        """One RLEKF update on the 3 n_a force components of ``atoms`` (default: :meth:`sample_atoms`), eV/Å."""
        if batch.forces is None:
            raise ValueError('the batch has no force labels')
        atoms = self.sample_atoms(batch) if atoms is None else atoms
        with torch.enable_grad():
            forces = self.model(batch, compute_forces=True, training=True)['forces']
            prediction = forces[atoms].reshape(-1)
            label = batch.forces[atoms].reshape(-1).to(forces.dtype)
            weight = self.config.force_weight
            y, error = _sign_flip_scalarise(weight * prediction, weight * label)
            H = self._flat_gradient(y)
        return self._kalman_update(H, error)

    def step(self, batch: Batch) -> dict[str, Any]:
        """One training step of Algorithm 5: an energy update, then ``n_F`` force updates (new atoms each time)."""
        energy = self.update_energy(batch)
        forces = [self.update_forces(batch) for _ in range(self.config.n_force_updates)]
        return {'energy': energy, 'forces': forces}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """P blocks (float64 tensors), λ, counters, config and sampler state: plain values for potential extras."""
        return {
            'kind': STATE_KIND,
            'version': STATE_VERSION,
            'config': self.config.to_dict(),
            'lambda': float(self.lam),
            'n_updates': int(self.n_updates),
            'parameter_names': list(self.parameter_names),
            'block_sizes': list(self.block_sizes),
            'P': list(self.P),
            'rng_state': json.dumps(self.rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the model must have the same trainable parameters and block size."""
        _check_state(state)
        config = RLEKFConfig.from_dict(state['config'])
        blocks = partition_parameters([(n, p.numel()) for n, p in _trainable(self.model)], config.block_size)
        if [block.size for block in blocks] != list(state['block_sizes']) or len(state['P']) != len(blocks):
            raise ValueError('the RLEKF state does not match the model parameters (different blocks of P)')
        device = self.parameters[0].device
        self.config = config
        self.blocks = blocks
        self.block_sizes = [block.size for block in blocks]
        self.P = [torch.as_tensor(P, dtype=torch.float64).to(device).clone() for P in state['P']]
        self.lam = float(state['lambda'])
        self.n_updates = int(state['n_updates'])
        self.rng = np.random.default_rng(config.seed)
        if state.get('rng_state'):
            self.rng.bit_generator.state = json.loads(state['rng_state'])

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: dict[str, Any]) -> RLEKF:
        _check_state(state)
        optimizer = cls(model, RLEKFConfig.from_dict(state['config']))
        optimizer.load_state_dict(state)
        return optimizer


def _check_state(state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or state.get('kind') != STATE_KIND:
        raise ValueError('not an RLEKF state (missing "kind": "rlekf")')
    if int(state.get('version', 0)) > STATE_VERSION:
        raise ValueError(f'RLEKF state version {state.get("version")} is newer than this code ({STATE_VERSION})')


# ---------------------------------------------------------------------- KPU (Sec. 3.1)
def _covariance_from(model: nn.Module, rlekf_state: RLEKF | dict[str, Any]) -> tuple[list[torch.Tensor], list[int]]:
    if isinstance(rlekf_state, RLEKF):
        P, sizes = rlekf_state.P, rlekf_state.block_sizes
    else:
        _check_state(rlekf_state)
        P, sizes = list(rlekf_state['P']), list(rlekf_state['block_sizes'])
    n_parameters = sum(p.numel() for _, p in _trainable(model))
    if sum(sizes) != n_parameters or len(P) != len(sizes):
        raise ValueError(f'the RLEKF state covers {sum(sizes)} parameters, the model has {n_parameters}')
    device = next(model.parameters()).device
    return [torch.as_tensor(block, dtype=torch.float64).to(device) for block in P], sizes


def _force_jacobian(forces: torch.Tensor, parameters: list[nn.Parameter], rows: torch.Tensor) -> torch.Tensor:
    """(M, n_params) float64 Jacobian ∂F_row/∂w of the flat force components ``rows``, one backward pass each."""
    flat = forces.reshape(-1)[rows]
    out = []
    for index in range(flat.shape[0]):
        gradients = torch.autograd.grad(flat[index], parameters, retain_graph=True, allow_unused=True)
        out.append(_flatten(parameters, gradients))
    return torch.stack(out)


def kalman_prediction_uncertainty(
    model: nn.Module,
    rlekf_state: RLEKF | dict[str, Any],
    batch: Batch,
    fraction: float = 0.5,
    seed: int | None = 0,
) -> np.ndarray:
    """KPU_force of every configuration of ``batch`` (Definition 3.1, Algorithms 2-3 of seeds/000).

    For ``n = max(1, floor(N_a fraction))`` random atoms ``j`` of a configuration and ``k = x, y, z``:
    ``KPU_jk = Σ_l H_l P_l H_lᵀ`` with ``H = ∂F_jk/∂w`` (Algorithm 2, block-diagonal trained P, factor α_t^{-2}
    neglected); ``KPU_force = Σ_jk KPU_jk / 3n`` (Algorithm 3).

    :param rlekf_state: an :class:`RLEKF` or its :meth:`RLEKF.state_dict`.
    :param seed: seed of the atom selection.
    :return: (B,) non-negative KPUs.
    """
    P, sizes = _covariance_from(model, rlekf_state)
    parameters = [p for _, p in _trainable(model)]
    rng = np.random.default_rng(seed)
    counts = batch.n_atoms.cpu().numpy()
    result = np.zeros(len(counts))
    for b, n_atoms in enumerate(counts):
        n = min(int(n_atoms), max(1, math.floor(int(n_atoms) * fraction)))
        atoms = np.sort(rng.choice(int(n_atoms), size=n, replace=False))
        rows = torch.as_tensor((3 * atoms[:, None] + np.arange(3)).reshape(-1), device=batch.positions.device)
        single = _select_structure(batch, b) if len(counts) > 1 else batch  # backward passes over one structure
        with torch.enable_grad():
            forces = model(single, compute_forces=True, training=True)['forces']
            jacobian = _force_jacobian(forces, parameters, rows)
        with torch.no_grad():
            total = sum(((J @ block) * J).sum() for block, J in zip(P, jacobian.split(sizes, dim=1), strict=True))
        result[b] = float(total) / len(rows)
    return result


def _select_structure(batch: Batch, index: int) -> Batch:
    """Structure ``index`` of ``batch`` as a batch of its own (atoms and edges renumbered)."""
    offsets = torch.cat([batch.n_atoms.new_zeros(1), torch.cumsum(batch.n_atoms, 0)])
    start, stop = int(offsets[index]), int(offsets[index + 1])
    edges = batch.structure_index[batch.edge_i] == index
    return Batch(
        positions=batch.positions[start:stop],
        species=batch.species[start:stop],
        cells=batch.cells[index : index + 1],
        pbc=batch.pbc[index : index + 1],
        structure_index=torch.zeros(stop - start, dtype=torch.int64, device=batch.positions.device),
        edge_i=batch.edge_i[edges] - start,
        edge_j=batch.edge_j[edges] - start,
        edge_shifts=batch.edge_shifts[edges],
        n_atoms=batch.n_atoms[index : index + 1],
        energy=None if batch.energy is None else batch.energy[index : index + 1],
        forces=None if batch.forces is None else batch.forces[start:stop],
        stress=None if batch.stress is None else batch.stress[index : index + 1],
    )


def kpu_trained(
    model: nn.Module,
    rlekf_state: RLEKF | dict[str, Any],
    train: Any,
    fraction: float = 0.5,
    seed: int | None = 0,
    max_configurations: int | None = None,
    batch_size: int = 16,
) -> float:
    """KPU_trained: mean KPU_force over (a random subset of ``max_configurations`` of) the training data (Sec. 3.2)."""
    hp = model.hyperparameters
    indices = np.arange(len(train))
    rng = np.random.default_rng(seed)
    if max_configurations is not None and max_configurations < len(indices):
        indices = np.sort(rng.choice(indices, size=max_configurations, replace=False))
    values = []
    for start in range(0, len(indices), batch_size):
        batch = batch_from_configurations(
            train, hp.species, hp.cutoff, indices[start : start + batch_size], model.device, model.dtype
        )
        values.append(kalman_prediction_uncertainty(model, rlekf_state, batch, fraction, int(rng.integers(2**31))))
    return float(np.mean(np.concatenate(values)))
