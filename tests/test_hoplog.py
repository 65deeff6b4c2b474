"""Replaying the KMC event log on atom identities (kmc.hoplog) against the kernel's own bookkeeping."""

import numpy as np
import pytest

from common.diffusion import lattice_msd
from kmc.hoplog import initial_atoms, replay
from kmc.simulation import Simulation
from lattice import HalideSublattice, build_configuration, place_defects
from rates.catalog import load_catalog


def _run(kind, n_v, n_i, kw, events=3000, seed=3):
    lat = HalideSublattice((4, 4, 4))
    config = build_configuration(lat, kind, **kw)
    defects = place_defects(config, n_v, n_i, seed=seed)
    sim = Simulation(config, defects, load_catalog("default"), 600.0, seed, event_log=events)
    sim.advance(np.inf, max_events=events)
    return config, defects, sim


@pytest.mark.parametrize("kind,kw", [("pure", {"species": "I"}), ("random", {"x_I": 0.5, "seed": 2})])
def test_replay_reproduces_kernel_msd_and_final_state(kind, kw):
    config, defects, sim = _run(kind, 2, 2, kw)
    a = 6.2
    atoms, paths = replay(config, defects, sim.event_log(), a, sim.time_s)
    assert atoms.n_hops == sim.n_events
    # total displacement of every atom, in (a/2)^2, summed per species = the kernel's msd counters
    tot = np.zeros((atoms.atom_species.size, 3))
    np.add.at(tot, atoms.atom, atoms.step_A)
    sq = np.sum((tot / (0.5 * a)) ** 2, axis=1)
    for sp in (0, 1):
        assert np.isclose(sq[atoms.atom_species == sp].sum(), sim.state.msd[sp], rtol=0, atol=1e-6)
    # the same number from the multi-origin estimator at the full-run lag (one origin)
    full = lattice_msd(atoms, [sim.time_s], "X", n_origins=1)[0] / (0.5 * a) ** 2
    assert np.isclose(full, sim.state.msd.sum(), atol=1e-6)
    # defect paths end where the engine's defect displacements say
    for k, p in enumerate(paths):
        np.testing.assert_allclose(p.step_A.sum(axis=0) / (0.5 * a), sim.state.def_disp[k], atol=1e-9)


def test_initial_numbering_counts_every_halide():
    config, defects, _ = _run("random", 1, 3, {"x_I": 0.4, "seed": 1}, events=10)
    site_atom, bridge_atoms, species = initial_atoms(config, defects)
    n_halides = config.lattice.n_sites - 1 + 3  # one vacancy; each bridge holds two atoms
    assert species.size == n_halides
    assert np.all(bridge_atoms[defects.kinds == 1] >= 0)
    assert np.unique(np.concatenate([site_atom[site_atom >= 0], bridge_atoms[bridge_atoms >= 0]])).size == n_halides
