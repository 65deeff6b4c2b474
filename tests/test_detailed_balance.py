"""Invariants of the kernel: detailed balance of every hop pair, conservation, incremental rates.

Detailed balance is checked on the numba kernel's own rates: a hop X -> Y is
forced through :func:`kmc._kernels.run_events` with an engineered uniform
``u2`` that selects it, and the kernel's rate of the reverse hop in Y (after
its incremental update) is compared with the forward one. Energies come from
the brute-force global :func:`rates.ratelaw.total_energy`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from kmc import _kernels as K
from kmc.state import RateParams, fill_rates, make_state, rate_drift
from lattice import HalideSublattice, build_random_mix, place_defects
from lattice.defects import DefectSet
from lattice.environment import class_label
from lattice.orientation import ALIGNED, ROTATED
from lattice.species import BR, BRIDGE, I, KIND_INTERSTITIAL, KIND_VACANCY, STATE_NAMES, VACANCY
from lattice.sublattice import HOP_BACK
from rates.ratelaw import K_B_EV, total_energy

RATIO_RTOL = 1e-9


def _strong_catalog(catalog):
    """Large energy differences so that all three branches of max(E_KRA + dE/2, dE, 0) occur."""
    cat = copy.deepcopy(catalog)
    J = np.zeros((4, 4))
    idx = {name: n for n, name in enumerate(STATE_NAMES)}
    for (a, b), v in {("V", "I"): 0.05, ("I", "Br"): 0.02, ("B", "I"): -0.02, ("V", "Br"): 0.01,
                      ("V", "B"): 0.03}.items():
        J[idx[a], idx[b]] = J[idx[b], idx[a]] = v
    cat.pair_eV = J
    cat.bridge_eV = np.array([1.0, 0.5, 0.0])
    cat.name = "strong-energies"
    return cat


def _defects(config, n_vac, n_int, seed):
    rng = np.random.default_rng(seed)
    base = place_defects(config, n_vac, n_int, seed=seed)
    bridge = base.bridge.copy()
    bridge[n_vac:, 1] = rng.integers(0, 2, size=n_int)
    return DefectSet(kinds=base.kinds, sites=base.sites, bridge=bridge)


def _energy(state, nbr, params):
    return total_energy(state.occ, nbr, state.bridge_n_br(), params.J, params.e_bridge)


def _oriented(catalog):
    """``catalog`` in the oriented interstitial model (rotation barriers per kind and bridge)."""
    cat = copy.deepcopy(catalog)
    cat.interstitial_model = "oriented"
    cat.rotation_E_eV = np.array([0.20, 0.22, 0.25, 0.16, 0.18, 0.21])
    cat.rotation_prefactor_Hz = np.full(6, 2e12)
    cat.name += "-oriented"
    return cat


@pytest.mark.parametrize("temperature_K", [300.0, 600.0])
@pytest.mark.parametrize("which", ["default", "strong", "oriented", "strong-oriented"])
def test_detailed_balance_of_kernel_hops(default_catalog, run_kernel, temperature_K, which):
    catalog = default_catalog if which in ("default", "oriented") else _strong_catalog(default_catalog)
    if which.endswith("oriented"):
        catalog = _oriented(catalog)
    lat = HalideSublattice((4, 4, 4))
    nbr = lat.neighbour_table
    config = build_random_mix(lat, 0.5, seed=int(temperature_K))
    defects = _defects(config, 5, 5, seed=7)
    state = make_state(config, defects, catalog)
    params = RateParams.from_catalog(catalog, temperature_K)
    fill_rates(state, params)
    beta = 1.0 / (K_B_EV * temperature_K)
    rng = np.random.default_rng(11)
    branches = {"kra": 0, "final": 0, "zero": 0}
    kinds = {KIND_VACANCY: 0, KIND_INTERSTITIAL: 0}
    classes_seen = set()
    n_hops = 150
    n_rot = 0
    step = 0
    while step < n_hops:
        flat = state.rates.ravel().copy()
        open_channels = np.flatnonzero(flat > 0.0)
        j = int(rng.choice(open_channels))
        d, c = divmod(j, K.N_CHANNELS)
        rate_f = flat[j]
        u2 = (flat[:j].sum() + 0.5 * rate_f) / state.tree[1]
        if c >= K.N_KICK_CHANNELS:
            # a rotation: the new orientation has a rotation channel back, at the same rate (energy-neutral)
            o_before = int(state.def_or[d])
            e_x = _energy(state, nbr, params)
            status, _, upos, _log = run_kernel(state, params, np.array([0.5, u2]), t=0.0, max_events=1,
                                               log_capacity=1)
            assert status == K.STOP_EVENTS and upos == 2
            assert _energy(state, nbr, params) == pytest.approx(e_x, abs=1e-12)
            s_site = int(state.def_site[d]) % 3
            back = [r for r in range(3) if ROTATED[s_site, int(state.def_or[d]), r] == o_before]
            assert len(back) == 1 and int(state.def_or[d]) != o_before
            assert state.rates[d, K.N_KICK_CHANNELS + back[0]] == pytest.approx(rate_f, rel=RATIO_RTOL)
            n_rot += 1
            continue
        step += 1
        slot, k = divmod(c, 8)
        cls_f = int(state.classes[d, c])
        site_a = int(state.def_site[d])
        site_b = int(nbr[site_a, k])
        e_x = _energy(state, nbr, params)
        if int(state.def_or[d]) >= 0:
            assert ALIGNED[site_a % 3, int(state.def_or[d]), slot, k], "an open kick-out must be aligned"
        # u2 in the middle of channel j's interval of the cumulative rates
        status, _, upos, log = run_kernel(state, params, np.array([0.5, u2]), t=0.0, max_events=1, log_capacity=1)
        assert status == K.STOP_EVENTS and upos == 2
        assert (log["defect"][0], log["from_site"][0], log["to_site"][0], log["cls"][0]) == (
            d, site_a, site_b, cls_f), f"step {step}: the engineered u2 did not select channel {c} of defect {d}"
        e_y = _energy(state, nbr, params)
        de = e_y - e_x
        # the reverse hop: back through HOP_BACK, moved atom is slot 0 of a new bridge
        c_rev = int(HOP_BACK[site_a % 3, k])
        assert nbr[site_b, c_rev] == site_a
        rate_b = state.rates[d, c_rev]
        cls_b = int(state.classes[d, c_rev])
        assert cls_b == cls_f, f"reverse hop has class {class_label(cls_b)}, forward {class_label(cls_f)}"
        # the forward rate follows the rate law with the global energy change
        e_kra = params.e_kra[cls_f]
        ea = max(e_kra + 0.5 * de, de, 0.0)
        assert rate_f == pytest.approx(params.prefactor[cls_f] * math.exp(-beta * ea), rel=RATIO_RTOL)
        assert rate_f / rate_b == pytest.approx(math.exp(-beta * de), rel=RATIO_RTOL), (
            f"step {step}: class {class_label(cls_f)}, dE = {de} eV")
        if ea == 0.0:
            branches["zero"] += 1
        elif ea == de:
            branches["final"] += 1
        else:
            branches["kra"] += 1
        kinds[int(state.def_kind[d])] += 1
        classes_seen.add(cls_f)
    assert min(kinds.values()) > 20
    assert len(classes_seen) > 15
    if which.endswith("oriented"):
        assert n_rot > 0
    if which.startswith("strong"):
        assert min(branches.values()) > 0, branches
    assert rate_drift(state, params) < 1e-12


def test_every_hop_pair_is_class_symmetric(default_catalog, run_kernel):
    """A class fixes (kind, mover, pair_nI, shell_nI), all invariant under reversal, so one E_KRA and one
    prefactor per class give equal forward and reverse barriers. Check every open hop of a random
    configuration: do it with the kernel, then compare the kernel's class of the reverse channel."""
    lat = HalideSublattice((3, 3, 3))
    nbr = lat.neighbour_table
    config = build_random_mix(lat, 0.5, seed=5)
    defects = _defects(config, 3, 3, seed=6)
    params = RateParams.from_catalog(default_catalog, 450.0)
    base = make_state(config, defects, default_catalog)
    fill_rates(base, params)
    # one E_KRA and one prefactor per class: the rate arrays are indexed by class only
    assert params.e_kra.shape == params.prefactor.shape == (104,)
    n_pairs = 0
    for d in range(base.n_defects):
        for c in range(K.N_CHANNELS):
            if base.rates[d, c] <= 0.0:
                continue
            state = copy.deepcopy(base)
            cls_f = int(state.classes[d, c])
            site_a = int(state.def_site[d])
            k = c % 8
            flat = state.rates.ravel()
            j = d * K.N_CHANNELS + c
            u2 = (flat[:j].sum() + 0.5 * flat[j]) / state.tree[1]
            _, _, _, log = run_kernel(state, params, np.array([0.5, u2]), max_events=1, log_capacity=1)
            assert log["defect"][0] == d and log["to_site"][0] == nbr[site_a, k]
            c_rev = int(HOP_BACK[site_a % 3, k])
            assert state.classes[d, c_rev] == cls_f, (d, c, class_label(cls_f))
            n_pairs += 1
    # 3 vacancies x <= 8 channels + 3 bridges x <= 16 channels
    assert n_pairs >= 50


@pytest.mark.parametrize("which", ["default", "strong"])
def test_species_conservation_and_incremental_rates_long_run(default_catalog, run_kernel, which):
    lat = HalideSublattice((6, 6, 6))
    config = build_random_mix(lat, 0.5, seed=17)
    n_vac, n_int = 20, 20
    defects = _defects(config, n_vac, n_int, seed=18)
    # independent count: lattice atoms, minus vacancies, plus the added bridge atoms
    expect = np.array([np.count_nonzero(config.occ == sp) for sp in (I, BR)], dtype=np.int64)
    for d in range(len(defects)):
        if defects.kinds[d] == KIND_VACANCY:
            expect[config.occ[defects.sites[d]]] -= 1
        else:
            expect[defects.bridge[d, 1]] += 1
    catalog = default_catalog if which == "default" else _strong_catalog(default_catalog)
    state = make_state(config, defects, catalog)
    params = RateParams.from_catalog(catalog, 500.0)
    fill_rates(state, params)
    np.testing.assert_array_equal(state.species_totals(), expect)
    n_chunk = 25000
    ubuf = np.random.default_rng(19).random(2 * 4 * n_chunk)
    upos, t = 0, 0.0
    for chunk in range(4):
        status, t, upos, _ = run_kernel(state, params, ubuf, upos=upos, t=t, max_events=n_chunk, log_capacity=0)
        assert status == K.STOP_EVENTS
        np.testing.assert_array_equal(state.species_totals(), expect)
        assert np.count_nonzero(state.occ == VACANCY) == n_vac
        assert np.count_nonzero(state.occ == BRIDGE) == n_int
        np.testing.assert_array_equal(state.occ[state.def_site],
                                      np.where(state.def_kind == KIND_VACANCY, VACANCY, BRIDGE))
        np.testing.assert_array_equal(state.plane_count.sum(axis=1), expect)
        np.testing.assert_array_equal(state.msd, state.squared_displacements())
        drift = rate_drift(state, params)
        assert drift < 1e-12, f"after {n_chunk * (chunk + 1)} events the incremental rates drift by {drift}"
    assert state.counters[K.C_EVENTS] == 4 * n_chunk
    assert state.hop_count.sum() == 4 * n_chunk
    # every defect moved
    assert np.all(np.abs(state.def_disp).sum(axis=1) > 0)
    assert t > 0
