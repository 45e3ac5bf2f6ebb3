"""Speed of the default GM-NN model (and of the default MACE model): energy + forces per atom and step, and one Adam
training epoch.

Measured in one run, for each model asked for (``--model``):
  * ``us_per_atom_step``: wall time of one energy + forces evaluation of fcc Cu with 864 atoms (6x6x6 conventional
    cells; 108 atoms with ``--quick``) divided by the number of atoms, µs, on the CPU, including the neighbour list
    (what one MD step costs); ``per_size`` gives, for 108 and 864 atoms (32 and 108 with ``--quick``), the same
    value (``us_per_atom_step``), the model alone (``model_us_per_atom_step``) and the neighbour list alone;
  * ``train_epoch_s``: one Adam epoch of :func:`~aiida_alkit.models.training.train` over 100 rattled Cu-32
    configurations (EMT labels, batch 32; 8 configurations with ``--quick``), without the one-off neighbour lists;
  * the same on CUDA when ``torch.cuda.is_available()`` (keys prefixed ``cuda_``; ``--device`` picks one);
  * ``ops_per_train_step`` / ``ops_per_md_step``: aten operator calls (torch profiler) of one Adam step on 32 Cu-32
    configurations and of one energy + forces evaluation of Cu-108, and on CUDA the kernel launches of each
    (``cuda_kernel_launches_per_train_step`` / ``..._md_step``): the same operator count on CPU and GPU, so it can be
    tracked without a GPU;
  * ``md_verlet_us_per_atom_step``: the same evaluation as MD steps make it, positions moving a little every step
    and the neighbour list kept within the explore job's 1 Å Verlet skin (``md_verlet_rebuilds``: lists built/needed);
  * ``--production``: also the single Cu-6912 cell (12x12x12 conventional cells), the production MD size;
  * ``--compile-step`` (GM-NN): the trainer's Adam step compiled (``TrainingConfig.compile_step``) next to the same
    step eager, on the same 32 configurations: ``compile_s`` (the first step, compilation included),
    ``trainer_ops_per_train_step`` / ``compiled_ops_per_train_step`` (aten calls of one step of the trainer itself:
    the loss, its gradients, Adam with the four parameter groups and the learning-rate schedule),
    ``compiled_ops_cut`` (their ratio), ``trainer_train_step_s`` / ``compiled_train_step_s`` (median of 10 steps)
    and, on CUDA, the kernel launches of each.
Model: ``GMNNHyperparameters(species=['Cu'])`` (cutoff 5 Å, 9 Gaussians, 7 radial functions, d_0 = 910, 512x512,
float32). Prints one JSON line. Target: ``us_per_atom_step`` <= 100 µs on a 2-core CPU.

``--model {gmnn,mace,both}`` (default ``gmnn``: the run and its line as above). ``mace`` measures instead the campaign
protocol's default MACE model (``active_learning.yaml``, ``model_kinds: mace: default``: cutoff 5 Å, 32 channels,
max_ell 3, correlation 2, radial MLP 32x32; the other settings MACEHyperparameters' defaults, float64) with
``avg_num_neighbors`` from the benchmark's training set (:meth:`MACEPotential.complete_hyperparameters`, as the train
job does), on the same cells, training set and procedure. Every part above applies to both kinds (they only use the
potential interface) and is measured for MACE too; building a model (and importing mace, several seconds) is outside
every measured time. ``both`` measures GM-NN then MACE in the same process and prints one line per model, then one line
``{"ratio_mace_over_gmnn": {...}}`` with the MACE / GM-NN ratios of that run (``us_per_atom_step``,
``model_us_per_atom_step``, ``md_verlet_us_per_atom_step``, ``train_epoch_s``, the operator counts, and per size);
with ``mace`` or ``both`` each model line has a ``model`` key: the kind and the hyper-parameters used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from typing import Any

#: The campaign protocol's default MACE model (``active_learning.yaml``, ``model_kinds: mace: default``), kept here
#: so that the benchmark measures a fixed model; ``avg_num_neighbors`` comes from the training set.
MACE_PROTOCOL_DEFAULT: dict[str, Any] = {
    'cutoff': 5.0,
    'channels': 32,
    'max_ell': 3,
    'correlation': 2,
    'radial_mlp': [32, 32],
}
MODEL_CHOICES = ('gmnn', 'mace', 'both')


def copper(repeats: int, rattle: float = 0.05, seed: int = 0):
    from ase.build import bulk

    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True) * (repeats, repeats, repeats)
    atoms.rattle(rattle, seed=seed)
    return atoms


def time_evaluation(model, atoms, repeats: int) -> dict[str, float]:
    """Per-atom µs of neighbour list + model, model only, neighbour list only (best of ``repeats``)."""
    import numpy as np
    import torch

    from aiida_alkit.models.batching import VerletBatcher, batch_from_arrays

    def synchronize() -> None:
        if model.device.type == 'cuda':
            torch.cuda.synchronize()

    def make_batch():
        return batch_from_arrays(
            atoms.get_positions(),
            atoms.numbers,
            np.asarray(atoms.cell[:])[None],
            atoms.pbc[None],
            np.array([0, len(atoms)]),
            model.species,
            model.cutoff,
            device=model.device,
            dtype=model.dtype,
        )

    def step() -> None:
        out = model(make_batch(), compute_forces=True)
        out['forces'].cpu()

    batch = make_batch()

    def model_only() -> None:
        out = model(batch, compute_forces=True)
        out['forces'].cpu()

    def best(function) -> float:
        function()  # warm-up
        times = []
        for _ in range(repeats):
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times.append(time.perf_counter() - start)
        return min(times) / len(atoms) * 1e6

    # as MD steps do it: positions move a little every step (0.01 Å per component, ~ 2 fs at 600 K), the list is
    # kept within a 1 Å Verlet skin (the explore job's default) and rebuilt when the bound fails
    verlet = VerletBatcher(model.species, model.cutoff, 1.0, device=model.device, dtype=model.dtype)
    rng = np.random.default_rng(0)
    moving = atoms.get_positions().copy()

    def md_step() -> None:
        moving[:] += rng.normal(0.0, 0.01, moving.shape)
        out = model(
            verlet(moving, atoms.numbers, np.asarray(atoms.cell[:])[None], atoms.pbc[None], np.array([0, len(atoms)])),
            compute_forces=True,
        )
        out['forces'].cpu()

    def mean(function, steps: int) -> float:
        function()  # warm-up (and the first list)
        synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            function()
        synchronize()
        return (time.perf_counter() - start) / steps / len(atoms) * 1e6

    md_steps = max(20, 4 * repeats)
    return {
        'us_per_atom_step': best(step),
        'model_us_per_atom_step': best(model_only),
        'neighbors_us_per_atom_step': best(make_batch),
        'md_verlet_us_per_atom_step': mean(md_step, md_steps),
        'md_verlet_rebuilds': f'{verlet.rebuilds}/{verlet.requests}',
        'n_edges': int(batch.edge_i.shape[0]),
    }


def training_set(n_configs: int):
    from ase.calculators.emt import EMT

    from aiida_alkit.io.arrays import ConfigurationArrays

    structures = []
    for index in range(n_configs):
        atoms = copper(2, rattle=0.08, seed=index)
        atoms.set_cell(atoms.cell[:] * (1.0 + 0.005 * (index % 7 - 3)), scale_atoms=True)
        atoms.calc = EMT()
        atoms.get_forces()
        atoms.get_stress()
        structures.append(atoms)
    return ConfigurationArrays.from_atoms(structures)


def model_hyperparameters(kind: str, data) -> Any:
    """Hyper-parameters of the benchmarked model of a kind (``gmnn``: GM-NN's defaults; ``mace``: the protocol's
    default MACE model), completed from the training set ``data`` as the train job does."""
    from aiida_alkit.models.potential import MODEL_KINDS, hyperparameters_from_dict

    settings = {'model_kind': kind, 'species': ['Cu'], **(MACE_PROTOCOL_DEFAULT if kind == 'mace' else {})}
    hyperparameters = hyperparameters_from_dict(settings)
    return MODEL_KINDS[kind].model_class().complete_hyperparameters(hyperparameters, data)


def build_model(hyperparameters: Any, device: str):
    """A new model; whatever building it prints (mace prints a line on import) goes to stderr, not into the JSON."""
    from aiida_alkit.models.potential import build_potential

    with contextlib.redirect_stdout(sys.stderr):
        return build_potential(hyperparameters, device=device)


def time_training_epoch(hyperparameters: Any, device: str, data) -> dict[str, float]:
    from aiida_alkit.models.training import TrainingConfig, train

    model = build_model(hyperparameters, device)
    start = time.perf_counter()
    result = train(model, data, None, TrainingConfig(epochs=1, batch_size=32, valid_fraction=0.0))
    return {'train_epoch_s': result.history[1]['time_s'], 'train_total_s': time.perf_counter() - start}


def operator_counts(model, data) -> dict[str, int]:
    """Operator calls (and CUDA kernel launches) of one Adam step on 32 configurations and of one energy + forces
    evaluation of Cu-108 (neighbour list outside)."""
    import torch
    from profiling import count_operator_calls

    from aiida_alkit.models.training import GraphDataset, loss_function

    graphs = GraphDataset.from_configurations(data, model.species, model.cutoff, model.device, model.dtype)
    batch = graphs.batch(list(range(min(32, len(graphs)))))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=model.device.type == 'cuda')

    def train_step() -> None:
        predictions = model(batch, compute_forces=True, compute_stress=True, training=True)
        loss = loss_function(predictions, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    atoms = copper(3)
    md_batch = model.make_batch([atoms])

    def md_step() -> None:
        model(md_batch, compute_forces=True)['forces'].detach()

    train, md = count_operator_calls(train_step), count_operator_calls(md_step)
    return {
        'ops_per_train_step': train['ops'],
        'ops_per_md_step': md['ops'],
        'kernel_launches_per_train_step': train['kernel_launches'],
        'kernel_launches_per_md_step': md['kernel_launches'],
    }


def compiled_step_counts(hyperparameters: Any, device: str, data) -> dict[str, Any]:
    """The trainer's Adam step, eager and compiled, on the same 32 configurations (see the module docstring)."""
    import statistics

    import torch
    from profiling import count_operator_calls

    from aiida_alkit.models.training import GraphDataset, TrainingConfig, _AdamEpochs

    report: dict[str, Any] = {}
    for name, compiled in (('trainer', False), ('compiled', True)):
        model = build_model(hyperparameters, device)
        graphs = GraphDataset.from_configurations(data, model.species, model.cutoff, model.device, model.dtype)
        batch = graphs.batch(list(range(min(32, len(graphs)))))
        config = TrainingConfig(epochs=100, batch_size=32, fit_shift=False, compile_step=compiled)
        epochs = _AdamEpochs(model, data, graphs, config, None)

        def step(epochs=epochs, batch=batch) -> None:
            epochs.train_step(batch)
            if epochs.model.device.type == 'cuda':
                torch.cuda.synchronize()

        start = time.perf_counter()
        step()
        if compiled:
            report['compile_s'] = round(time.perf_counter() - start, 1)
        counts = count_operator_calls(step)
        report[f'{name}_ops_per_train_step'] = counts['ops']
        if device == 'cuda':
            report[f'{name}_kernel_launches_per_train_step'] = counts['kernel_launches']
        times = []
        for _ in range(10):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        report[f'{name}_train_step_s'] = round(statistics.median(times), 4)
    report['compiled_ops_cut'] = round(report['trainer_ops_per_train_step'] / report['compiled_ops_per_train_step'], 2)
    return report


def cell_repeats(quick: bool, production: bool) -> tuple[int, ...]:
    """Conventional cells per direction of the measured Cu cells: 32/108 atoms (quick) or 108/864 (+ 6912)."""
    sizes = (2, 3) if quick else (3, 6)
    return (*sizes, 12) if production else sizes


def headline_size(quick: bool) -> str:
    """The ``per_size`` key (number of atoms) whose ``us_per_atom_step`` is the headline one."""
    return str(4 * cell_repeats(quick, False)[1] ** 3)


def run(
    quick: bool,
    device_choice: str = 'all',
    production: bool = False,
    kind: str = 'gmnn',
    data=None,
    with_model: bool = False,
    compile_step: bool = False,
) -> dict:
    """The report of one model kind (``data``: the training set, made here when None; ``with_model``: add the
    ``model`` key, the kind and its hyper-parameters)."""
    import torch

    sizes = cell_repeats(quick, production)
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    if device_choice != 'all':
        devices = [d for d in devices if d == device_choice]
    if data is None:
        data = training_set(8 if quick else 100)
    hyperparameters = model_hyperparameters(kind, data)
    report: dict = {
        'benchmark': f'{kind}_default_model_speed',
        **({'model': {'kind': kind, 'hyperparameters': hyperparameters.to_dict()}} if with_model else {}),
        'quick': quick,
        'device': 'cpu',
        'devices': devices,
        'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'cpu': platform.processor() or platform.machine(),
    }
    for device in devices:
        model = build_model(hyperparameters, device)
        prefix = '' if device == 'cpu' else f'{device}_'
        per_size = {}
        for repeats in sizes:
            atoms = copper(repeats)
            n_repeats = 3 if quick or len(atoms) > 500 else 5
            per_size[str(len(atoms))] = {
                k: round(v, 2) if isinstance(v, float) else v
                for k, v in time_evaluation(model, atoms, n_repeats).items()
            }
        report[f'{prefix}per_size'] = per_size
        report[f'{prefix}us_per_atom_step'] = per_size[headline_size(quick)]['us_per_atom_step']
        counts = operator_counts(model, data)
        report.update({f'{prefix}{k}': v for k, v in counts.items() if device == 'cuda' or 'launches' not in k})
        report.update(
            {f'{prefix}{k}': round(v, 3) for k, v in time_training_epoch(hyperparameters, device, data).items()}
        )
        if compile_step:
            try:
                compiled = compiled_step_counts(hyperparameters, device, data)
            except ValueError as exc:  # e.g. a torch whose compiler cannot trace autograd.grad: keep the rest
                compiled = {'compile_error': str(exc)}
            report.update({f'{prefix}{k}': v for k, v in compiled.items()})
    report['train_configs'] = len(data)
    report['target_us_per_atom_step'] = 100.0
    return report


def ratios(numerator: dict, denominator: dict, quick: bool) -> dict[str, Any]:
    """``numerator / denominator`` (3 significant digits) of two reports of the same run: the per-atom step times of
    the headline size, the training epoch and the operator counts, and the step times per size (``per_size``)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else float(f'{a / b:.3g}')

    step_keys = ('us_per_atom_step', 'model_us_per_atom_step', 'md_verlet_us_per_atom_step')
    result: dict[str, Any] = {}
    for prefix in ('', 'cuda_'):
        if f'{prefix}per_size' not in numerator or f'{prefix}per_size' not in denominator:
            continue
        top, bottom = numerator[f'{prefix}per_size'], denominator[f'{prefix}per_size']
        per_size = {size: {key: ratio(top[size][key], bottom[size][key]) for key in step_keys} for size in top}
        result.update({f'{prefix}{key}': value for key, value in per_size[headline_size(quick)].items()})
        for key in ('train_epoch_s', 'ops_per_train_step', 'ops_per_md_step'):
            result[f'{prefix}{key}'] = ratio(numerator.get(f'{prefix}{key}'), denominator.get(f'{prefix}{key}'))
        result[f'{prefix}per_size'] = per_size
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='smaller cells and training set (a few seconds)')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    parser.add_argument('--device', choices=('all', 'cpu', 'cuda'), default='all', help='devices to measure')
    parser.add_argument('--production', action='store_true', help='also the Cu-6912 cell (production MD size)')
    parser.add_argument(
        '--model', choices=MODEL_CHOICES, default='gmnn', help='model kind(s) to measure (both: one line each + ratios)'
    )
    parser.add_argument(
        '--compile-step', action='store_true', help="GM-NN: also the trainer's compiled Adam step against the eager one"
    )
    args = parser.parse_args()
    if args.compile_step and args.model != 'gmnn':
        parser.error('--compile-step measures GM-NN (the kind whose training step compiles)')
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.model == 'gmnn':
        print(json.dumps(run(args.quick, args.device, args.production, compile_step=args.compile_step)))
        return
    data = training_set(8 if args.quick else 100)
    kinds = ['gmnn', 'mace'] if args.model == 'both' else [args.model]
    reports = {}
    for kind in kinds:
        reports[kind] = run(args.quick, args.device, args.production, kind, data, with_model=True)
        print(json.dumps(reports[kind]), flush=True)
    if args.model == 'both':
        print(json.dumps({'ratio_mace_over_gmnn': ratios(reports['mace'], reports['gmnn'], args.quick)}))


if __name__ == '__main__':
    main()
