"""Cost of sketched gradient features relative to plain energy + forces, same structures, same model, one run.

Measured on 1 000 rattled fcc Cu-108 structures (3x3x3 conventional cells) with the default GM-NN model
(``GMNNHyperparameters(species=['Cu'])``: d_0 = 910, 512x512, float32), batches of 32 structures whose neighbour lists
are built once beforehand (not timed):

* ``energy_forces_s``: ``model(batch, compute_forces=True)`` over all batches;
* ``features_s``: :func:`aiida_alkit.uncertainty.features.compute_features` with the tensor sketch (512 random
  projections, ``seeds/003`` eq. 20-21), atomic and structure features kept;
* ``structure_features_s`` (structure features only) and ``last_layer_s`` (FEAT(LL)) for reference;
* ``features_over_energy_forces`` = ``features_s / energy_forces_s`` (target <= 3).

Each value is the best of ``--repeats`` passes after one warm-up batch. ``--quick``: 20 structures and the small
model (``GMNNHyperparameters.small``), a few seconds. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def copper_structures(count: int, seed: int = 0) -> list:
    from ase.build import bulk

    structures = []
    for index in range(count):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (3, 3, 3)
        atoms.rattle(0.05, seed=seed + index)
        structures.append(atoms)
    return structures


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def run(quick: bool, n_structures: int | None, repeats: int, batch_size: int) -> dict:
    import torch

    from aiida_alkit.models.gmnn import GMNN, GMNNHyperparameters
    from aiida_alkit.uncertainty.features import GradientFeatureMap, compute_features

    count = n_structures or (20 if quick else 1000)
    hyperparameters = GMNNHyperparameters.small(['Cu']) if quick else GMNNHyperparameters(species=['Cu'])
    model = GMNN(hyperparameters)
    structures = copper_structures(count)
    start = time.perf_counter()
    batches = [model.make_batch(structures[i : i + batch_size]) for i in range(0, count, batch_size)]
    neighbours_s = time.perf_counter() - start
    sketch = GradientFeatureMap(model, kind='sketch', dim=512, seed=0)
    last_layer = GradientFeatureMap(model, kind='last_layer')

    def energy_forces() -> None:
        for batch in batches:
            out = model(batch, compute_forces=True)
            out['forces'].detach()

    def features(per_atom: bool = True, feature_map: GradientFeatureMap = sketch) -> None:
        compute_features(model, batches, per_atom=per_atom, feature_map=feature_map)

    # warm-up on one batch each
    model(batches[0], compute_forces=True)
    compute_features(model, batches[0], feature_map=sketch)
    times = {
        'energy_forces_s': best_of(energy_forces, repeats),
        'features_s': best_of(features, repeats),
        'structure_features_s': best_of(lambda: features(per_atom=False), repeats),
        'last_layer_s': best_of(lambda: features(feature_map=last_layer), repeats),
    }
    n_atoms = sum(len(atoms) for atoms in structures)
    return {
        'benchmark': 'gradient_features_vs_energy_forces',
        'quick': quick,
        'features_over_energy_forces': round(times['features_s'] / times['energy_forces_s'], 3),
        **{key: round(value, 3) for key, value in times.items()},
        'structure_features_over_energy_forces': round(times['structure_features_s'] / times['energy_forces_s'], 3),
        'us_per_atom_features': round(times['features_s'] / n_atoms * 1e6, 2),
        'us_per_atom_energy_forces': round(times['energy_forces_s'] / n_atoms * 1e6, 2),
        'neighbours_s': round(neighbours_s, 3),
        'n_structures': count,
        'n_atoms': n_atoms,
        'batch_size': batch_size,
        'sketch_dim': 512,
        'hidden_widths': list(hyperparameters.hidden_widths),
        'n_descriptors': hyperparameters.n_features,
        'dtype': hyperparameters.dtype,
        'repeats': repeats,
        'target': 3.0,
        'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'cpu': platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='20 structures and the small model (a few seconds)')
    parser.add_argument('--structures', type=int, default=None, help='number of Cu-108 structures (default 1000)')
    parser.add_argument('--repeats', type=int, default=1, help='timed passes per measurement (best is reported)')
    parser.add_argument('--batch-size', type=int, default=32, help='structures per batch')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(json.dumps(run(args.quick, args.structures, args.repeats, args.batch_size)))


if __name__ == '__main__':
    main()
