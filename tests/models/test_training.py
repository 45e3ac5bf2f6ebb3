"""Adam training (eq. 5 + stress term), error metrics, early stopping, divergence, and DP-GEN-style committees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc100, fcc111, molecule
from ase.calculators.emt import EMT

from aiida_alkit.io.arrays import ConfigurationArrays
from aiida_alkit.models.batching import batch_from_configurations
from aiida_alkit.models.committee import Committee, CommitteeCalculator
from aiida_alkit.models.gmnn import GMNN, PAPER_LEARNING_RATES, GMNNHyperparameters
from aiida_alkit.models.serialization import PotentialFileError, load_potential_file
from aiida_alkit.models.training import (
    GraphDataset,
    LossWeights,
    TrainingConfig,
    TrainingDivergedError,
    evaluate_errors,
    log_progress,
    loss_function,
    loss_terms,
    split_train_valid,
    train,
)

pytestmark = pytest.mark.usefixtures('one_thread')


def _label(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    if atoms.pbc.all():
        atoms.get_stress()
    return atoms


def _copper(n: int = 20, seed: int = 0) -> ConfigurationArrays:
    """Rattled, strained fcc Cu cells with 4 or 8 atoms, labelled with EMT (eV, eV/Å, eV/Å³)."""
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61 * (1.0 + rng.uniform(-0.03, 0.03)), cubic=True) * [(1, 1, 1), (2, 1, 1)][k % 2]
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        structures.append(_label(atoms))
    return ConfigurationArrays.from_atoms(structures)


@pytest.fixture(scope='module')
def copper() -> ConfigurationArrays:
    return _copper()


def _model(seed: int = 0) -> GMNN:
    return GMNN(GMNNHyperparameters.small(['Cu'], seed=seed))


def _config(**overrides) -> TrainingConfig:
    settings = {'epochs': 12, 'batch_size': 4, 'valid_fraction': 0.0}
    settings.update(overrides)
    return TrainingConfig(**settings)


# ---------------------------------------------------------------------------------------------- configuration
def test_config_defaults_are_the_papers():
    config = TrainingConfig()
    assert config.learning_rates == {}  # the model kind's defaults apply
    assert config.rates_for(GMNN(GMNNHyperparameters.small(['Cu']))) == PAPER_LEARNING_RATES
    assert (config.adam_betas, config.adam_eps, config.batch_size, config.epochs) == ((0.9, 0.999), 1e-7, 32, 1000)
    assert (config.energy_weight, config.forces_weight) == (1.0, 12.0)  # λ_E = 1, λ_F = 12 N_at (eq. 5)
    assert TrainingConfig(max_epochs_without_improvement=7).patience == 7
    assert TrainingConfig.from_dict(TrainingConfig(epochs=3, learning_rates={'nn': 0.01}).to_dict()) == TrainingConfig(
        epochs=3, learning_rates={'nn': 0.01}
    )
    with pytest.raises(ValueError, match='unknown parameter groups'):
        TrainingConfig(learning_rates={'output': 0.1})


def test_split_train_valid_is_a_seeded_partition(copper):
    train, valid = split_train_valid(copper, 0.25, seed=3)
    assert (len(train), len(valid)) == (15, 5)
    again_train, _ = split_train_valid(copper, 0.25, seed=3)
    np.testing.assert_array_equal(train.positions, again_train.positions)
    positions = {tuple(np.round(p, 8)) for p in copper.positions}
    both = {tuple(np.round(p, 8)) for p in np.concatenate([train.positions, valid.positions])}
    assert both == positions and train.n_atoms_total + valid.n_atoms_total == copper.n_atoms_total
    assert split_train_valid(copper, 0.0)[1] is None


def test_graph_dataset_batches_match_the_direct_batch(copper):
    model = _model()
    data = GraphDataset.from_configurations(copper, model.species, model.cutoff)
    indices = [7, 2, 11]
    fast = data.batch(indices)
    direct = batch_from_configurations(copper, model.species, model.cutoff, indices=indices)
    for name in ('positions', 'species', 'cells', 'structure_index', 'edge_i', 'edge_j', 'edge_shifts', 'forces'):
        assert torch.equal(getattr(fast, name), getattr(direct, name)), name
    a = model(fast, compute_forces=True, compute_stress=True)
    b = model(direct, compute_forces=True, compute_stress=True)
    for key in ('energy', 'forces', 'stress'):
        torch.testing.assert_close(a[key], b[key])


# ---------------------------------------------------------------------------------------------- loss and errors
def test_loss_is_eq5_plus_the_virial_term(copper):
    model = _model()
    batch = GraphDataset.from_configurations(copper, model.species, model.cutoff, dtype=torch.float64).batch([0, 1])
    model = model.double()
    predictions = model(batch, compute_forces=True, compute_stress=True)
    weights = LossWeights(energy=1.0, forces=12.0, stress=0.5)
    terms = loss_terms(predictions, batch, weights)
    energy = predictions['energy'].detach().numpy() - copper.energy[:2]
    forces = predictions['forces'].detach().numpy() - copper.forces[: copper.offsets[2]]
    sizes = copper.sizes[:2]
    force_sums = [np.sum(forces[: sizes[0]] ** 2), np.sum(forces[sizes[0] :] ** 2)]
    virial = (predictions['stress'].detach().numpy() - copper.stress[:2]) * np.abs(np.linalg.det(copper.cells[:2]))[
        :, None, None
    ]
    upper = [virial[k][np.triu_indices(3)] for k in range(2)]
    expected = [
        energy[k] ** 2 + 12.0 * sizes[k] / (3 * sizes[k]) * force_sums[k] + 0.5 * np.sum(upper[k] ** 2) / sizes[k]
        for k in range(2)
    ]
    np.testing.assert_allclose(float(terms['loss'].detach()), np.mean(expected), rtol=1e-10)
    np.testing.assert_allclose(float(terms['forces'].detach()), np.mean([4.0 * s for s in force_sums]), rtol=1e-10)
    # the stress term is λ_S N Σ_{a<=b} (Δw_ab)² with the virial per atom w = V σ / N (eV/atom)
    per_atom = [np.sum((upper[k] / sizes[k]) ** 2) * sizes[k] for k in range(2)]
    np.testing.assert_allclose(float(terms['stress'].detach()), 0.5 * np.mean(per_atom), rtol=1e-10)


def test_stress_is_masked_for_non_periodic_structures(copper):
    water = molecule('H2O')
    water.center(vacuum=3.0)
    water.calc = EMT()
    water.get_potential_energy()
    water.get_forces()
    crystal = copper.get_atoms(0)
    # The molecule gets a stress label of garbage: it must not count.
    arrays = ConfigurationArrays(
        positions=np.concatenate([crystal.positions, water.positions]),
        numbers=np.concatenate([crystal.numbers, water.numbers]),
        cells=np.stack([crystal.cell[:], water.cell[:]]),
        pbc=np.stack([crystal.pbc, water.pbc]),
        offsets=np.array([0, len(crystal), len(crystal) + len(water)]),
        energy=np.array([crystal.get_potential_energy(), water.get_potential_energy()]),
        forces=np.concatenate([crystal.get_forces(), water.get_forces()]),
        stress=np.stack([copper.stress[0], np.full((3, 3), 1e3)]),
    )
    model = GMNN(GMNNHyperparameters.small(['H', 'O', 'Cu'], dtype='float64'))
    data = GraphDataset.from_configurations(arrays, model.species, model.cutoff, dtype=torch.float64)
    both = data.batch([0, 1])
    predictions = model(both, compute_forces=True, compute_stress=True, training=True)
    stress_term = float(loss_terms(predictions, both, LossWeights())['stress'].detach())
    crystal_only = data.batch([0])
    alone = float(
        loss_terms(model(crystal_only, compute_forces=True, compute_stress=True), crystal_only)['stress'].detach()
    )
    assert stress_term > 0
    np.testing.assert_allclose(stress_term, alone / 2, rtol=1e-12)  # mean over the 2 structures, molecule adds 0
    molecule_only = data.batch([1])
    out = model(molecule_only, compute_forces=True, compute_stress=True)
    assert float(loss_terms(out, molecule_only)['stress']) == 0.0
    loss_function(predictions, both).backward()  # the garbage label leaves the gradients finite
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    errors = evaluate_errors(model, data)
    assert errors['n_stress_structures'] == 1
    reference = evaluate_errors(model, arrays.subset([0]))
    assert errors['stress_rmse'] == pytest.approx(reference['stress_rmse'], rel=1e-12)


def test_evaluate_errors_units_and_definitions(copper):
    model = _model().double()
    subset = copper.subset([0, 1, 2])
    errors = evaluate_errors(model, subset)
    batch = batch_from_configurations(subset, model.species, model.cutoff, dtype=torch.float64)
    out = model(batch, compute_forces=True, compute_stress=True)
    per_atom = (out['energy'].detach().numpy() - subset.energy) / subset.sizes
    force = out['forces'].detach().numpy() - subset.forces
    stress = out['stress'].detach().numpy() - subset.stress
    assert errors['energy_rmse'] == pytest.approx(np.sqrt(np.mean(per_atom**2)), rel=1e-9)
    assert errors['energy_mae'] == pytest.approx(np.mean(np.abs(per_atom)), rel=1e-9)
    assert errors['forces_rmse'] == pytest.approx(np.sqrt(np.mean(force**2)), rel=1e-9)
    assert errors['forces_mae'] == pytest.approx(np.mean(np.abs(force)), rel=1e-9)
    assert errors['stress_rmse'] == pytest.approx(np.sqrt(np.mean(stress**2)), rel=1e-9)
    assert (errors['n_structures'], errors['n_atoms'], errors['loss']) == (3, subset.n_atoms_total, None)


def _platinum(n: int, seed: int) -> ConfigurationArrays:
    """Rattled, strained EMT Pt: bulk (8 atoms), bulk with a vacancy (15), fcc(111) and fcc(100) slabs (12 atoms,
    4 Å of vacuum on each side, periodic in 3D so that their stress is defined per cell volume, vacuum included)."""
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            atoms = bulk('Pt', 'fcc', a=3.92, cubic=True) * (2, 1, 1)
        elif kind == 1:
            atoms = bulk('Pt', 'fcc', a=3.92, cubic=True) * (2, 2, 1)
            del atoms[int(rng.integers(len(atoms)))]
        else:
            atoms = (fcc111 if kind == 2 else fcc100)('Pt', (2, 2, 3), a=3.92, vacuum=4.0)
            atoms.pbc = True
        atoms.set_cell(atoms.cell[:] * (1.0 + rng.uniform(-0.03, 0.03, 3)), scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        structures.append(_label(atoms))
    return ConfigurationArrays.from_atoms(structures)


@pytest.fixture(scope='module')
def platinum() -> dict[str, ConfigurationArrays]:
    return {'train': _platinum(24, seed=0), 'test': _platinum(24, seed=1)}


def test_stress_term_of_a_slab_does_not_depend_on_its_vacuum():
    """The virial V σ = ∂E/∂ε (not σ, which the vacuum dilutes) enters the loss: more vacuum, same stress term."""
    model = GMNN(GMNNHyperparameters.small(['Pt'], dtype='float64'))
    terms = []
    for vacuum in (4.0, 8.0):
        slab = fcc111('Pt', (2, 2, 3), a=3.92, vacuum=vacuum)
        slab.pbc = True
        slab.rattle(0.05, seed=1)
        arrays = ConfigurationArrays.from_atoms([_label(slab)])
        batch = GraphDataset.from_configurations(arrays, model.species, model.cutoff, dtype=torch.float64).batch([0])
        out = model(batch, compute_forces=True, compute_stress=True)
        terms.append(float(loss_terms(out, batch)['stress']))
    assert terms[0] > 0
    assert terms[1] == pytest.approx(terms[0], rel=1e-8)


def test_stress_training_keeps_the_force_accuracy(platinum):
    """Bulk + vacancy + slab Pt, same seeds and epochs: adding the stress term (default λ_S) costs at most 10 % in
    test force RMSE and lowers the test stress RMSE. The former term λ_S Σ (V Δσ)² (without the 1/N) was 83 % of
    the loss at the start (now 28 %) and doubled the test force RMSE here (0.28 -> 0.59 eV/Å)."""
    errors = {}
    for stress_weight in (0.0, TrainingConfig().stress_weight):
        model = GMNN(GMNNHyperparameters.small(['Pt'], hidden_widths=(16, 16)))
        config = _config(epochs=40, batch_size=8, stress_weight=stress_weight)
        train(model, platinum['train'], None, config)
        errors[stress_weight] = evaluate_errors(model, platinum['test'])
    without, with_stress = errors[0.0], errors[1.0]
    assert with_stress['forces_rmse'] <= 1.10 * without['forces_rmse']
    assert with_stress['stress_rmse'] < 0.8 * without['stress_rmse']


# ---------------------------------------------------------------------------------------------- training
def test_adam_lowers_the_validation_force_error(copper):
    train_set, valid = split_train_valid(copper, 0.25, seed=1)
    model = _model()
    lines: list[str] = []
    result = train(model, train_set, valid, _config(epochs=15), callback=log_progress(lines.append, 5))
    initial = result.history[0]  # after fit_shift, before any step
    untrained = _model()
    untrained.fit_shift(train_set.energy, np.asarray(train_set.sizes, dtype=float)[:, None])
    assert initial['valid_forces_rmse'] == pytest.approx(evaluate_errors(untrained, valid)['forces_rmse'], rel=1e-5)
    final = evaluate_errors(model, valid)
    assert final['forces_rmse'] < 0.7 * initial['valid_forces_rmse']
    assert final['forces_rmse'] == pytest.approx(result.best['valid_forces_rmse'], rel=1e-5)  # best weights restored
    assert result.best_epoch >= 1 and result.metric == 'valid_loss'
    assert (result.n_train, result.n_valid, result.epochs_run) == (15, 5, 15)
    assert len(lines) == 3 and lines[0].startswith('epoch    5')
    assert result.history[-1]['lr'] == pytest.approx(0.0, abs=1e-12)  # linear decay to lr_final_fraction = 0


def test_training_loss_decreases(copper):
    model = _model(seed=3)
    result = train(model, copper, None, _config(epochs=10, lr_final_fraction=0.1))
    losses = [entry['train_loss'] for entry in result.history[1:]]
    assert losses[-1] < 0.5 * losses[0]
    assert result.n_valid == 0 and result.metric == 'train_loss'


def test_same_seed_gives_bit_identical_weights(copper):
    subset = copper.subset(range(8))
    states = []
    for seed in (5, 5, 6):
        model = _model()
        train(model, subset, None, _config(epochs=3, seed=seed, valid_fraction=0.25))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not all(torch.equal(states[0][key], states[2][key]) for key in states[0])


def test_patience_stops_early_and_restores_the_best_epoch(copper):
    train_set, valid = split_train_valid(copper.subset(range(8)), 0.25, seed=0)
    model = _model()
    # A huge learning rate of the shift makes every step worse than the fitted start.
    config = _config(epochs=30, patience=2, learning_rates={'shift': 50.0, 'nn': 0.0, 'representation': 0.0})
    result = train(model, train_set, valid, config)
    assert result.stopped_early and result.epochs_run == result.best_epoch + 2
    assert evaluate_errors(model, valid, weights=config.loss_weights)['loss'] == pytest.approx(
        result.best_metric, rel=1e-5
    )


def test_nan_loss_raises_training_diverged_naming_the_epoch(copper):
    model = _model()
    with torch.no_grad():
        model.network[0].weight[0, 0] = float('nan')
    with pytest.raises(TrainingDivergedError, match='epoch 1') as info:
        train(model, copper.subset(range(4)), None, _config(epochs=2))
    assert info.value.epoch == 1


# ---------------------------------------------------------------------------------------------- committee
@pytest.fixture(scope='module')
def committee(copper) -> Committee:
    previous = torch.get_num_threads()  # module fixtures run before the function-scoped one_thread
    torch.set_num_threads(1)
    try:
        trained = Committee(GMNNHyperparameters.small(['Cu'], seed=10), n_members=3)
        results = train(trained, copper.subset(range(8)), None, _config(epochs=2)).members
    finally:
        torch.set_num_threads(previous)
    assert len(results) == 3 and all(r.n_train == 8 for r in results)
    return trained


def test_committee_members_differ_and_spread_is_dp_gen(committee, copper):
    assert [member.hyperparameters.seed for member in committee.members] == [10, 11, 12]
    assert Committee(GMNNHyperparameters.small(['Cu'])).__len__() == 4  # DP-GEN default
    w0, w1 = (committee.members[k].network[0].weight for k in (0, 1))
    assert not torch.equal(w0, w1)
    batch = GraphDataset.from_configurations(copper, committee.species, committee.cutoff).batch([0, 1, 2])
    out = committee.predict(batch, compute_stress=True)
    assert out['energy'].shape == (3,) and out['forces'].shape == (batch.n_atoms_total, 3)
    assert (out['energy_std'] > 0).all() and (out['forces_std'] > 0).any() and out['stress'].shape == (3, 3, 3)
    members = np.stack(
        [
            member(batch, compute_forces=True)['forces'].detach().numpy().astype(np.float64)
            for member in committee.members
        ]
    )
    deviation = np.sqrt(np.mean(np.sum((members - members.mean(axis=0)) ** 2, axis=-1), axis=0))
    index = batch.structure_index.numpy()
    expected = [deviation[index == b].max() for b in range(3)]
    np.testing.assert_allclose(out['max_force_deviation'].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(out['forces_std'].numpy(), members.std(axis=0), rtol=1e-4, atol=1e-7)


def test_committee_save_load_round_trip(committee, copper, tmp_path):
    path = tmp_path / 'committee.pt'
    committee.save(path)
    content = load_potential_file(path)
    assert content.hyperparameters['model_kind'] == 'gmnn-committee'
    assert content.hyperparameters['n_members'] == 3
    assert all(name.startswith('members.') for name in content.state_dict)
    loaded = Committee.load(path)
    batch = GraphDataset.from_configurations(copper, committee.species, committee.cutoff).batch([3, 4])
    a, b = committee.predict(batch), loaded.predict(batch)
    for key in ('energy', 'energy_std', 'forces', 'forces_std', 'max_force_deviation'):
        assert torch.equal(a[key], b[key]), key
    committee.members[0].save(tmp_path / 'single.pt')
    with pytest.raises(PotentialFileError, match="'gmnn' is not a committee kind"):
        Committee.load(tmp_path / 'single.pt')


def test_committee_calculator(committee, copper):
    atoms = copper.get_atoms(1)
    atoms.calc = CommitteeCalculator(committee)
    energy = atoms.get_potential_energy()
    results = atoms.calc.results
    assert {'energy', 'free_energy', 'forces', 'stress', 'energy_std', 'forces_std', 'max_force_deviation'} <= set(
        results
    )
    assert results['forces_std'].shape == (len(atoms), 3) and results['stress'].shape == (6,)
    batch = committee.make_batch([atoms])
    out = committee.predict(batch)
    assert energy == pytest.approx(float(out['energy'][0]))
    assert results['max_force_deviation'] == pytest.approx(float(out['max_force_deviation'][0]))
    assert results['energy_std'] > 0
    water = molecule('H2O')
    water.calc = CommitteeCalculator(Committee(GMNNHyperparameters.small(['H', 'O']), n_members=2))
    water.get_forces()
    assert 'stress' not in water.calc.results and water.calc.results['forces_std'].shape == (3, 3)


# ---------------------------------------------------------------------------------------------- compiled step
def _aten_calls(function) -> int:
    from torch.profiler import ProfilerActivity, profile

    function()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    return sum(event.count for event in profiler.key_averages() if event.key.startswith('aten::'))


def _label_cluster(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    return atoms


def test_compiled_adam_step_trains_as_the_eager_one(copper):
    """compile_step: train() gives the eager run's losses and weights (float64) over mini-batches of different sizes
    and structure counts, a cluster without a stress among them, from ONE compiled graph; a compiled step makes at
    least 4x fewer operator calls than the eager one. Two torch threads: with more than one, inductor's OpenMP code
    for the per-species gradients failed to generate or crashed (torch 2.13) until the step asked for
    single-threaded generated code."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _compare_compiled_and_eager_training(copper)
    finally:
        torch.set_num_threads(previous_threads)


def _compare_compiled_and_eager_training(copper):
    import torch._dynamo.utils

    from aiida_alkit.models.training import _AdamEpochs

    # Cu cells of 4 and 8 atoms and a Cu cluster without a cell (no stress term)
    cluster = Atoms('Cu4', positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    cluster.center(vacuum=3.0)  # a cell, but not periodic: its stress label does not count
    data = ConfigurationArrays.from_atoms(
        [*copper.subset(range(5)).to_atoms(), _label_cluster(cluster), *copper.subset(range(5, 10)).to_atoms()]
    )
    assert not data.pbc[5].any() and data.pbc[0].all()
    hyperparameters = GMNNHyperparameters.small(['Cu'], dtype='float64')
    graphs_before = torch._dynamo.utils.counters['stats']['unique_graphs']
    results, models = {}, {}
    for compiled in (False, True):
        models[compiled] = GMNN(hyperparameters)
        config = _config(epochs=2, batch_size=3, compile_step=compiled)  # batches of 3, 3, 3, 2 structures
        results[compiled] = train(models[compiled], data, None, config)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs_before <= 1  # no recompilation
    eager, compiled = results[False].series('train_loss'), results[True].series('train_loss')
    assert len(eager) == 3 and eager[1] > eager[2]
    np.testing.assert_allclose(compiled[1:], eager[1:], rtol=1e-9)
    for name, value in models[False].state_dict().items():
        torch.testing.assert_close(models[True].state_dict()[name], value, rtol=1e-7, atol=1e-10, msg=name)

    calls = {}
    for compiled in (False, True):
        model = GMNN(hyperparameters)
        graphs = GraphDataset.from_configurations(data, model.species, model.cutoff, dtype=torch.float64)
        epochs = _AdamEpochs(model, data, graphs, _config(fit_shift=False, compile_step=compiled), None)
        batch = graphs.batch([0, 1, 5, 7])
        calls[compiled] = _aten_calls(lambda epochs=epochs, batch=batch: epochs.train_step(batch))
    assert 4 * calls[True] <= calls[False], calls


def test_compile_step_is_refused_where_it_does_not_apply(copper):
    with pytest.raises(ValueError, match='compile_step must be true or false'):
        TrainingConfig(compile_step=1)
    with pytest.raises(ValueError, match='compile_step applies to Adam only; rlekf trains uncompiled'):
        train(_model(), copper, None, _config(compile_step=True), optimizer='rlekf')
