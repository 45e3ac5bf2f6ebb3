"""Cost of uncertainty-biased MD against unbiased MD: same committee, same walkers, same process.

Setting: Cu fcc 3x3x3 (108 atoms), 4 walkers in one batch, a committee of K GM-NN members (untrained: the cost does
not depend on the weights), Langevin (BAOAB) at 600 K, 2 fs. Unbiased MD integrates the committee-mean forces;
biased MD adds the committee σ bias (seeds/002 eq. 1, 9-11) with the adaptive strength of eq. 12 and records the
force deviation and HAL's f_i every step. Both go through ``BatchedMD``; runs alternate (unbiased, biased, ...) and the
best per-step wall time of each is kept (robust on a shared machine); the same ratio of process CPU times is
reported too (``biased_over_unbiased_cpu``, less sensitive to other processes).

Prints one JSON line: ``biased_over_unbiased`` (target <= 1.3), ``us_per_atom_step`` (biased, wall µs per atom per
MD step), the unbiased value, and for reference ``single_model_us_per_atom_step`` (one member, unbiased).
``ops_per_md_step`` / ``unbiased_ops_per_md_step``: aten operator calls (torch profiler) of one potential evaluation
of all walkers, biased and unbiased (on CUDA also ``kernel_launches_per_md_step``).
``--quick`` runs 3 steps per run, 2 repeats, a 2-member small committee (seconds).

``--bias gradient`` / ``--bias hal`` time the single-model biases of the explore job instead (``bias.kind`` gradient
and hal): one model (member 0 of the same committee), unbiased against biased with the term the job builds:
``GradientFeatureUncertainty.from_data(model, train, kind='posterior', dim=512)`` (seeds/003; sketched gradient
features, atom uncertainties for the calibrated stop included) or ``HALUncertainty`` on a ``BayesianRidge`` fitted to
last-layer features and energies (seeds/002, ``atom_quantity=None`` as in the job), ``train`` being 16 rattled
Cu-108 cells with EMT energies. These terms are not energy-level: ∇u is a second backward pass through the model
(``BiasedPotential``'s general path), so their ratio is the cost of that pass. ``single_model_us_per_atom_step`` is
then the unbiased value. The line's ``bias`` key names the bias.
"""

from __future__ import annotations

import argparse
import json
import math
import time


def run(
    n_members: int = 4,
    size: str = 'small',
    n_steps: int = 10,
    repeat: int = 5,
    n_walkers: int = 4,
    threads: int | None = None,
    device: str = 'cpu',
    bias: str = 'committee',
) -> dict:
    import numpy as np
    import torch
    from ase.build import bulk

    from aiida_alkit.exploration.bias import AdaptiveStrength, BiasedPotential, CommitteeUncertainty
    from aiida_alkit.exploration.dynamics import BatchedMD
    from aiida_alkit.models.committee import Committee
    from aiida_alkit.models.gmnn import GMNNHyperparameters

    if threads:
        torch.set_num_threads(threads)
    hp = GMNNHyperparameters.small(['Cu']) if size == 'small' else GMNNHyperparameters(['Cu'])
    committee = Committee(hp, n_members=n_members, device=device)
    single = Committee(hp, n_members=1, device=device)
    walkers = []
    for index in range(n_walkers):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (3, 3, 3)
        atoms.rattle(0.05, seed=index)
        walkers.append(atoms)
    n_atoms = sum(len(atoms) for atoms in walkers)

    def md(potential) -> tuple[float, float]:
        """Wall and process-CPU seconds per MD step (the initial evaluation counts as one step)."""
        engine = BatchedMD(potential, walkers, timestep=2.0, temperature=600.0, n_steps=n_steps, seed=0)
        start, start_cpu = time.perf_counter(), time.process_time()
        engine.run()
        if device != 'cpu':
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / (n_steps + 1), (time.process_time() - start_cpu) / (n_steps + 1)

    if bias == 'committee':

        def potentials():
            return {
                'unbiased': BiasedPotential(committee),
                'biased': BiasedPotential(committee, CommitteeUncertainty(), strength=AdaptiveStrength(0.1)),
                'single': BiasedPotential(single),
            }
    else:
        model = committee.members[0]
        term = feature_term(model, bias, device)

        def potentials():
            return {
                'unbiased': BiasedPotential(model),
                'biased': BiasedPotential(model, term, strength=AdaptiveStrength(0.1)),
                'single': BiasedPotential(model),
            }

    from profiling import count_operator_calls

    from aiida_alkit.exploration.dynamics import WalkerSystem

    system = WalkerSystem.from_atoms(walkers)
    counts = {name: count_operator_calls(lambda p=p: p.evaluate(system)) for name, p in potentials().items()}
    md(potentials()['biased'])  # warm-up
    best = {'unbiased': math.inf, 'biased': math.inf, 'single': math.inf}
    best_cpu = dict(best)
    for _ in range(repeat):
        for name, potential in potentials().items():
            wall, cpu = md(potential)
            best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu)
    return {
        'benchmark': 'biased_md',
        'system': f'Cu{len(walkers[0])} x {n_walkers} walkers',
        'bias': bias,
        'model': size,
        'members': n_members if bias == 'committee' else 1,
        'steps_per_run': n_steps,
        'repeat': repeat,
        'threads': torch.get_num_threads(),
        'device': device,
        'unbiased_s_per_step': round(best['unbiased'], 5),
        'biased_s_per_step': round(best['biased'], 5),
        'biased_over_unbiased': round(best['biased'] / best['unbiased'], 3),
        'biased_over_unbiased_cpu': round(best_cpu['biased'] / best_cpu['unbiased'], 3),
        'target': 1.3,
        'us_per_atom_step': round(1e6 * best['biased'] / n_atoms, 2),
        'unbiased_us_per_atom_step': round(1e6 * best['unbiased'] / n_atoms, 2),
        'single_model_us_per_atom_step': round(1e6 * best['single'] / n_atoms, 2),
        'ops_per_md_step': counts['biased']['ops'],
        'unbiased_ops_per_md_step': counts['unbiased']['ops'],
        'kernel_launches_per_md_step': counts['biased']['kernel_launches'],
        'unbiased_kernel_launches_per_md_step': counts['unbiased']['kernel_launches'],
        'numpy': np.__version__,
        'torch': torch.__version__,
    }


def feature_term(model, bias: str, device: str):
    """The explore job's gradient (seeds/003) or HAL (seeds/002) term for ``model``, fitted on 16 rattled Cu-108."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from aiida_alkit.exploration.terms import GradientFeatureUncertainty, HALUncertainty
    from aiida_alkit.io.arrays import ConfigurationArrays
    from aiida_alkit.uncertainty.features import compute_features
    from aiida_alkit.uncertainty.hal import BayesianRidge, build_design_matrix

    frames = []
    for index in range(16):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (3, 3, 3)
        atoms.rattle(0.1, seed=100 + index)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    train = ConfigurationArrays.from_atoms(frames)
    if bias == 'gradient':
        return GradientFeatureUncertainty.from_data(model, train, kind='posterior', dim=512)
    if bias == 'hal':
        features = np.asarray(compute_features(model, train, kind='last_layer', per_atom=False).structure)
        design, targets = build_design_matrix(features, train.energy)
        return HALUncertainty(model, BayesianRidge().fit(design, targets), atom_quantity=None)
    raise ValueError(f'unknown bias {bias!r}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='3 steps, 2 repeats, 2 small members (seconds)')
    parser.add_argument('--members', type=int, default=4)
    parser.add_argument('--model', choices=('small', 'default'), default='small')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--walkers', type=int, default=4)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--bias', choices=('committee', 'gradient', 'hal'), default='committee',
        help="committee: the committee σ (default); gradient, hal: one model's feature-based bias (see above)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        result = run(2, 'small', 3, 2, args.walkers, args.threads, args.device, args.bias)
    else:
        result = run(
            args.members, args.model, args.steps, args.repeat, args.walkers, args.threads, args.device, args.bias
        )
    print(json.dumps(result))


if __name__ == '__main__':
    main()
