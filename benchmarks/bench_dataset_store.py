"""Storing many configurations: one DatasetData node vs one StructureData node per configuration.

Measured side by side in one run on a throw-away SQLite profile:
  * ``dataset_100k_s``: build + validate + store ONE DatasetData with N configurations of 32 atoms (positions,
    cells, energies, forces, stress), N = 100 000 (10 000 with ``--quick``);
  * ``structuredata_per_config_s``: storing M StructureData nodes (M = 1 000, 100 with ``--quick``), per node;
  * ``speedup_per_config``: the ratio of the per-configuration costs.
Prints one JSON line. Target: N = 100 000 in under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def make_arrays(n_configs: int, seed: int = 0):
    import numpy as np
    from ase.build import bulk

    from aiida_alkit.io.arrays import ConfigurationArrays

    rng = np.random.default_rng(seed)
    base = bulk('Cu', 'fcc', a=3.61, cubic=True) * (2, 2, 2)
    n_atoms = len(base)
    positions = (base.positions[None] + rng.normal(0.0, 0.08, (n_configs, n_atoms, 3))).reshape(-1, 3)
    return ConfigurationArrays(
        positions=positions,
        numbers=np.tile(base.numbers, n_configs),
        cells=np.repeat(base.cell[:][None], n_configs, axis=0),
        pbc=np.ones((n_configs, 3), bool),
        offsets=np.arange(n_configs + 1) * n_atoms,
        energy=rng.normal(-100.0, 1.0, n_configs),
        forces=rng.normal(0.0, 0.5, (n_configs * n_atoms, 3)),
        stress=rng.normal(0.0, 0.01, (n_configs, 3, 3)),
        info={'walker': rng.integers(0, 8, n_configs), 'step': np.arange(n_configs)},
    ), base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='10x smaller run (seconds)')
    args = parser.parse_args()
    n_configs, n_structures = (10_000, 100) if args.quick else (100_000, 1_000)

    with tempfile.TemporaryDirectory() as home:
        os.environ['AIIDA_PATH'] = home  # before AiiDA is imported
        from aiida import load_profile, orm
        from aiida.manage.configuration import create_profile, get_config

        config = get_config(create=True)
        create_profile(
            config, name='bench', email='bench@localhost', storage_backend='core.sqlite_dos', storage_config={}
        )
        config.store()
        load_profile('bench', allow_switch=True)

        from aiida_alkit.data import DatasetData

        arrays, base = make_arrays(n_configs)
        start = time.perf_counter()
        node = DatasetData(arrays)  # validates (finite values, elements, cells, overlapping atoms)
        node.store()
        dataset_s = time.perf_counter() - start

        structures = [base.copy() for _ in range(n_structures)]
        for k, atoms in enumerate(structures):
            atoms.positions = arrays.positions[k * len(base) : (k + 1) * len(base)]
        start = time.perf_counter()
        for atoms in structures:
            orm.StructureData(ase=atoms).store()
        per_structure_s = (time.perf_counter() - start) / n_structures

    per_config_dataset_s = dataset_s / n_configs
    print(
        json.dumps(
            {
                'benchmark': 'dataset_store',
                'n_configs': n_configs,
                'atoms_per_config': len(base),
                'dataset_100k_s': round(dataset_s * 100_000 / n_configs, 4),
                'dataset_measured_s': round(dataset_s, 4),
                'structuredata_per_config_s': round(per_structure_s, 6),
                'speedup_per_config': round(per_structure_s / per_config_dataset_s, 1),
                'quick': args.quick,
            }
        )
    )


if __name__ == '__main__':
    main()
