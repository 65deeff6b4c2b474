"""Cluster-expansion energy model: icet agreement, local energy changes, kernel vs reference, catalog v3."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from kmc.state import RateParams, fill_rates, make_state, rate_drift
from lattice import HalideSublattice, build_heterojunction, build_random_mix, place_defects
from lattice.cluster_expansion import (
    A_REF,
    COEFF_QUANTUM_EV,
    ClusterExpansion,
    ClusterExpansionError,
    cluster_space,
    delta_energy_ce,
    kernel_tables,
    local_orbits_of,
    orbits_of,
    primitive_structure,
    total_energy_ce,
)
from lattice.defects import DefectSet
from lattice.species import BR, BRIDGE, I, KIND_VACANCY, VACANCY
from rates.catalog import CatalogError, RateCatalog

CUT = (1.3, 1.01)


def _random_model(seed, cut=CUT, host=0.02, defect=0.05):
    rng = np.random.default_rng(seed)
    n_orb, n_loc = len(orbits_of(cut)), len(local_orbits_of(cut))
    return ClusterExpansion(cut, rng.normal(0, host, n_orb),
                            {"vacancy": rng.normal(0, defect, n_loc), "interstitial": rng.normal(0, defect, n_loc)})


def _occ_of_atoms(atoms, dims):
    occ = np.zeros(3 * int(np.prod(dims)), np.int8)
    for a in atoms:
        if a.symbol in ("I", "Br"):
            d = np.rint(2 * a.position / A_REF).astype(int) % (2 * np.asarray(dims))
            t = [v % 2 for v in d].index(1)
            i, j, k = d // 2
            occ[((i * dims[1] + j) * dims[2] + k) * 3 + t] = I if a.symbol == "I" else BR
    return occ


def test_orbits_of_the_halide_sublattice():
    """Shells and octahedral clusters of Pm-3m CsPbX3: what the energy model is built from."""
    orbs = orbits_of(CUT)
    pairs = [(round(o.radius_a * 2, 4), o.multiplicity, len(o.through[0])) for o in orbs if o.order == 2]
    # a/sqrt(2): 8 neighbours; a: trans across Pb (2) and across the Cs cage (4); sqrt(1.5) a: 16
    assert pairs == [(0.7071, 12, 8), (1.0, 3, 2), (1.0, 6, 4), (1.2247, 24, 16)]
    trip = [o for o in orbs if o.order == 3]
    assert [len(o.through[0]) for o in trip] == [8, 12, 12]  # octahedral faces, cis-cis-trans, cis-cis-cage
    # local orbits: defect alone, 4 pair shells, face, trans-end/apex of cis-cis-trans, two of the cage triplet
    assert len(local_orbits_of(CUT)) == 10


@pytest.mark.parametrize("x_I,shape", [(0.5, (4, 3, 5)), (0.8, (3, 4, 4))])
def test_host_energy_equals_icet_prediction(x_I, shape):
    """E_host of the kernel tables = icet's ClusterExpansion.predict x number of cells (random ECIs)."""
    from icet import ClusterExpansion as IcetCE

    cs = cluster_space(CUT)
    rng = np.random.default_rng(3)
    params = rng.normal(0, 0.01, len(cs))
    atoms = primitive_structure().repeat(shape)
    for a in atoms:
        if a.symbol == "I" and rng.random() > x_I:
            a.symbol = "Br"
    mult = np.asarray(cs.get_multiplicities(), dtype=float)
    model = ClusterExpansion(CUT, params[1:] / mult[1:], {}, E0_eV=params[0])
    occ = _occ_of_atoms(atoms, shape)
    tables = kernel_tables(model)
    e_kmc = total_energy_ce(occ, shape, tables) + params[0] * np.prod(shape)
    e_icet = IcetCE(cs, params).predict(atoms) * np.prod(shape)
    # the kernel tables round each coefficient to COEFF_QUANTUM_EV: at most half a quantum per cluster
    n_clusters = np.prod(shape) * tables.n.sum()
    assert e_kmc == pytest.approx(e_icet, rel=1e-12, abs=0.5 * COEFF_QUANTUM_EV * n_clusters)


def _hop_delta_check(occ, lat, tables, a, b, a_new, b_new):
    xa, ya, za = lat.coords(np.array([a]))[0]
    xb, yb, zb = lat.coords(np.array([b]))[0]
    de = delta_energy_ce(occ, lat.dims, xa, ya, za, a % 3, xb, yb, zb, b % 3, a, b, a_new, b_new, tables.as_tuple())
    after = occ.copy()
    after[a] = a_new
    after[b] = b_new
    want = total_energy_ce(after, lat.dims, tables) - total_energy_ce(occ, lat.dims, tables)
    return de, want


def test_local_delta_energy_equals_global_difference():
    """Vacancy hops and kick-outs, with other defects near the hop: the local sum is the global difference."""
    lat = HalideSublattice((4, 4, 3))
    model = _random_model(5)
    tables = kernel_tables(model)
    rng = np.random.default_rng(6)
    checked = 0
    for trial in range(40):
        occ = build_random_mix(lat, rng.uniform(0.2, 0.8), seed=trial).occ.astype(np.int8).copy()
        a = int(rng.integers(lat.n_sites))
        k = int(rng.integers(8))
        b = int(lat.neighbour_table[a, k])
        # a few spectator defects, some within the clusters of A and B
        for s in rng.choice(lat.n_sites, 4, replace=False):
            if s not in (a, b):
                occ[s] = rng.choice([VACANCY, BRIDGE])
        if trial % 2 == 0:  # vacancy A -> B, the halide on B moves to A
            occ[a] = VACANCY
            mover = int(occ[b]) if occ[b] < VACANCY else I
            occ[b] = mover
            de, want = _hop_delta_check(occ, lat, tables, a, b, mover, VACANCY)
        else:  # kick-out: A keeps a halide, B becomes the bridge
            occ[a] = BRIDGE
            occ[b] = int(rng.integers(2))
            de, want = _hop_delta_check(occ, lat, tables, a, b, int(rng.integers(2)), BRIDGE)
        assert de == pytest.approx(want, abs=1e-12), trial
        checked += abs(want) > 1e-6
    assert checked > 30


def _ce_catalog(base, seed, oriented=False):
    cat = copy.deepcopy(base)
    cat.cluster_expansion = _random_model(seed)
    cat.name = "random-ce"
    return cat


def _defect_in_random_mix(lat, rng, trial, n_spectators):
    """A random mix with spectator defects and a vacancy (even trials) or a bridge on site ``a``."""
    occ = build_random_mix(lat, rng.uniform(0.1, 0.9), seed=trial).occ.astype(np.int8).copy()
    for site in rng.choice(lat.n_sites, n_spectators, replace=False):
        occ[site] = rng.choice([VACANCY, BRIDGE])
    a = int(rng.integers(lat.n_sites))
    is_vac = trial % 2 == 0
    occ[a] = VACANCY if is_vac else BRIDGE
    s0, s1 = (0, 0) if is_vac else (int(rng.integers(2)), int(rng.integers(2)))
    return occ, a, is_vac, s0, s1, lat.coords(np.array([a]))[0]


def test_patch_channels_equal_the_direct_sum_and_cache_hits_repeat_them():
    """delta_energy_ce_channels (gathered patch, exact-key cache) = delta_energy_ce per channel."""
    from lattice.cluster_expansion import delta_energy_ce_channels

    lat = HalideSublattice((5, 6, 5))
    tables = kernel_tables(_random_model(14))
    ce = tables.as_tuple()
    rng = np.random.default_rng(15)
    out = np.zeros(16)
    for trial in range(30):
        occ, a, is_vac, s0, s1, (x, y, z) = _defect_in_random_mix(lat, rng, trial, 5)
        for repeat in range(2):  # the second call is a cache hit
            assert delta_energy_ce_channels(occ, lat.dims, x, y, z, a % 3, is_vac, s0, s1, ce, out)
            for k in range(8):
                b = int(lat.neighbour_table[a, k])
                bx, by, bz = lat.coords(np.array([b]))[0]
                for slot in range(1 if is_vac else 2):
                    if occ[b] >= VACANCY:
                        assert out[slot * 8 + k] == 0.0
                        continue
                    a_new = occ[b] if is_vac else (s1 if slot == 0 else s0)
                    want = delta_energy_ce(occ, lat.dims, x, y, z, a % 3, bx, by, bz, b % 3, a, b, a_new,
                                           VACANCY if is_vac else BRIDGE, ce)
                    assert out[slot * 8 + k] == pytest.approx(want, abs=1e-12), (trial, repeat, k, slot)
    assert np.any(tables.cache_key[:, 0] >= 0)
    # a lattice on which patch offsets would alias: the caller must fall back
    small = HalideSublattice((4, 4, 4))
    occ = np.zeros(small.n_sites, np.int8)
    occ[0] = VACANCY
    assert not delta_energy_ce_channels(occ, small.dims, 1, 0, 0, 0, True, 0, 0, ce, out)


@pytest.mark.parametrize("cut", [CUT, (1.01, 1.01, 1.01)])  # pairs + triplets; quadruplets within a
def test_site_fields_give_the_channel_energies_and_stay_exact_under_changes(cut):
    """ce_field_channels (per-site fields + the clusters A and B share) = the direct per-channel sums,
    bit for bit; fields updated site change by site change = fields recomputed from scratch, bit for bit
    (the coefficients are multiples of COEFF_QUANTUM_EV, so no rounding accumulates)."""
    from lattice.cluster_expansion import ce_field_change, ce_field_channels, ce_field_init, delta_energy_ce_channels

    lat = HalideSublattice((6, 5, 7))
    tables = kernel_tables(_random_model(14, cut=cut))
    assert set(np.unique(tables.order[0][:tables.n[0]]).tolist()) == set(range(1, len(cut) + 2))
    assert np.all(tables.sh_n > 0)  # the pair A-B and the octahedral triplets through it
    rng = np.random.default_rng(1)
    fld = np.zeros(3 * lat.n_sites)
    ce = tables.as_tuple(fld, tables.field_deltas(lat.dims))
    by_field, direct = np.zeros(16), np.zeros(16)
    changed = 0
    for trial in range(30):
        occ, a, is_vac, s0, s1, (x, y, z) = _defect_in_random_mix(lat, rng, trial, 6)
        ce_field_init(occ, lat.dims, ce, fld)
        ce_field_channels(occ, lat.dims, x, y, z, a % 3, is_vac, s0, s1, ce, by_field)
        assert delta_energy_ce_channels(occ, lat.dims, x, y, z, a % 3, is_vac, s0, s1, ce, direct)
        np.testing.assert_array_equal(by_field, direct)
        changed += np.count_nonzero(direct)
        for _ in range(6):  # single-site changes to any state, the field following each
            i = int(rng.integers(lat.n_sites))
            xi, yi, zi = lat.coords(np.array([i]))[0]
            new = int(rng.integers(4))
            ce_field_change(occ, lat.dims, xi, yi, zi, i % 3, i, new, ce, fld)
            occ[i] = new
        fresh = np.zeros_like(fld)
        ce_field_init(occ, lat.dims, tables.as_tuple(fresh, tables.field_deltas(lat.dims)), fresh)
        np.testing.assert_array_equal(fld, fresh)
    assert changed > 200


@pytest.mark.parametrize("kind,shape", [("mix", (6, 4, 4)), ("heterojunction", (6, 4, 4)), ("mix", (6, 5, 5))])
def test_kernel_matches_reference_with_cluster_expansion(default_catalog, run_kernel, kind, shape):
    """120 events as the brute-force reference (global energies), several defects, rate drift 0 (and the
    per-site field equal to its recompute); the (6, 5, 5) lattice takes the kernel's per-site field path,
    the others its direct fallback."""
    from tests.test_reference_vs_kernel import _assert_same_run, _both, _mixed_defects

    cat = _ce_catalog(default_catalog, 7)
    lat = HalideSublattice(shape)
    if kind == "mix":
        config = build_random_mix(lat, 0.6, seed=8)
    else:
        config = build_heterojunction(lat, 3, 3, interface="Br-rich")
    defects = _mixed_defects(config, 3, 3, seed=9)
    kern, refres = _both(config, defects, cat, 120, seed=10, run_kernel=run_kernel)
    _assert_same_run(kern, refres)


def test_cluster_expansion_changes_rates(default_catalog):
    """The CE enters the rates (a test that the kernel does not ignore it)."""
    lat = HalideSublattice((5, 4, 4))
    config = build_random_mix(lat, 0.5, seed=1)
    defects = place_defects(config, 1, 1, seed=2)
    rates = []
    for cat in (default_catalog, _ce_catalog(default_catalog, 3)):
        st = make_state(config, defects, cat)
        p = RateParams.from_catalog(cat, 500.0)
        fill_rates(st, p)
        assert rate_drift(st, p) == 0.0
        rates.append(st.rates.copy())
    assert not np.allclose(rates[0], rates[1])


def test_catalog_v3_round_trip_and_older_versions(default_catalog, tmp_path):
    cat = _ce_catalog(default_catalog, 11)
    doc = cat.to_dict()
    assert doc["schema_version"] == 3
    back = RateCatalog.from_dict(json.loads(json.dumps(doc)), "v3")
    np.testing.assert_array_equal(back.cluster_expansion.host_eci_eV, cat.cluster_expansion.host_eci_eV)
    for k in ("vacancy", "interstitial"):
        np.testing.assert_array_equal(back.cluster_expansion.defect_eV[k], cat.cluster_expansion.defect_eV[k])
    assert back.sha256() == cat.sha256()
    assert default_catalog.to_dict()["schema_version"] in (1, 2)  # no CE: written as before


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["cluster_expansion"].update(fingerprint="0" * 64), "fingerprint"),
    (lambda d: d["cluster_expansion"].update(lattice="fcc-Cu"), "lattice"),
    (lambda d: d["cluster_expansion"]["orbits"][2].update(eci_eV=float("nan")), "orbits\\[2\\].eci_eV"),
    (lambda d: d["cluster_expansion"]["orbits"].pop(), "orbits"),
    (lambda d: d["cluster_expansion"]["defect_terms"].update(antisite=[]), "antisite"),
    (lambda d: d["cluster_expansion"].update(cutoffs_a=[9.0]), "cutoffs_a"),
    (lambda d: d.update(schema_version=2), "schema_version 3"),
])
def test_bad_cluster_expansion_is_a_clear_error(default_catalog, edit, match):
    doc = json.loads(json.dumps(_ce_catalog(default_catalog, 12).to_dict()))
    edit(doc)
    with pytest.raises(CatalogError, match=match):
        RateCatalog.from_dict(doc, "bad.json")


def test_lattice_too_small_and_composition_outside_fit(default_catalog):
    cat = _ce_catalog(default_catalog, 13)
    lat = HalideSublattice((2, 4, 4))
    config = build_random_mix(lat, 0.5, seed=1)
    with pytest.raises(ValueError, match="too small"):
        make_state(config, place_defects(config, 1, 0, seed=1), cat)
    cat.cluster_expansion.x_I_range = (0.3, 0.7)
    assert cat.cluster_expansion.check_composition(0.5) == []
    assert "extrapolates" in cat.cluster_expansion.check_composition(0.9)[0]
    with pytest.raises(ClusterExpansionError, match="host_eci_eV"):
        ClusterExpansion(CUT, np.zeros(3), {})


def test_vacancy_prefers_the_environment_its_terms_favour(default_catalog):
    """Detailed balance with a CE: a vacancy-Br pair term makes Br neighbours cost energy, so a long
    run in a 50/50 mix shows fewer Br around the vacancy than the mix has (Boltzmann weight)."""
    from kmc.simulation import Simulation

    cut = (0.8,)
    n_loc = len(local_orbits_of(cut))
    vac = np.zeros(n_loc)
    nn = [j for j, lo in enumerate(local_orbits_of(cut)) if len(lo[1]) == 2][0]
    vac[nn] = 0.03  # K * s: +0.03 eV per I neighbour, -0.03 per Br neighbour -> Br preferred
    cat = copy.deepcopy(default_catalog)
    cat.cluster_expansion = ClusterExpansion(cut, np.zeros(len(orbits_of(cut))), {"vacancy": vac})
    lat = HalideSublattice((6, 6, 6))
    config = build_random_mix(lat, 0.5, seed=4)
    defects = DefectSet(kinds=np.array([KIND_VACANCY]), sites=np.array([0]), bridge=np.full((1, 2), -1, np.int8))
    sim = Simulation(config, defects, cat, 600.0, np.random.SeedSequence(5))
    n_br, n = 0, 0
    for _ in range(400):
        sim.advance(np.inf, max_events=200)
        site = int(sim.state.def_site[0])
        n_br += int(np.sum(sim.state.occ[lat.neighbour_table[site]] == BR))
        n += 8
    frac = n_br / n
    assert frac > 0.5 + 5 * np.sqrt(0.25 / n)  # well beyond the statistics of an unbiased walk


def test_kmc_samples_the_boltzmann_distribution_of_the_ce_energy(default_catalog):
    """One vacancy and one Br in CsPbI3 (3x3x3, periodic): the time-weighted KMC distribution of the
    Br-vacancy distance equals the Boltzmann distribution of the CE energy, enumerated exactly over all
    80 Br positions (pair energies off, so the CE is the whole energy). Batch means give the errors."""
    from kmc.simulation import Simulation
    from rates.ratelaw import K_B_EV

    cut = (1.01,)
    n_loc = len(local_orbits_of(cut))
    rng = np.random.default_rng(21)
    host = rng.normal(0, 0.02, len(orbits_of(cut)))
    vac = np.zeros(n_loc)
    vac[1:] = [0.05, -0.03, 0.02]  # nearest-neighbour shell, trans across Pb, across the Cs cage
    cat = copy.deepcopy(default_catalog)
    cat.pair_eV = np.zeros_like(cat.pair_eV)
    cat.cluster_expansion = ClusterExpansion(cut, host, {"vacancy": vac})
    tables = kernel_tables(cat.cluster_expansion)
    T = 600.0
    lat = HalideSublattice((3, 3, 3))
    config = build_random_mix(lat, 80 / 81, seed=1)
    assert int(np.sum(config.occ == BR)) == 1
    xyz = lat.coords(np.arange(lat.n_sites)).reshape(-1, 3)
    n2 = 2 * np.asarray(lat.dims)

    def dist2(a, b):
        d = (xyz[a] - xyz[b]) % n2
        d = np.minimum(d, n2 - d)
        return int(np.sum(d * d))

    # exact: vacancy on site 0, Br anywhere else (every site is equivalent under the lattice symmetry)
    classes = sorted({dist2(0, b) for b in range(1, lat.n_sites)})
    w = np.zeros(len(classes))
    for b in range(1, lat.n_sites):
        occ = np.zeros(lat.n_sites, np.int8)
        occ[0] = VACANCY
        occ[b] = BR
        w[classes.index(dist2(0, b))] += np.exp(-total_energy_ce(occ, lat.dims, tables) / (K_B_EV * T))
    exact = w / w.sum()

    defects = place_defects(config, 1, 0, where=[int(np.flatnonzero(config.occ == I)[0])])
    sim = Simulation(config, defects, cat, T, np.random.SeedSequence(22))
    sim.advance(np.inf, max_events=2000)  # equilibrate
    rate = float(sim.state.tree[1])
    dt = 25.0 / rate
    n_batch, per_batch = 20, 600
    frac = np.zeros((n_batch, len(classes)))
    t = sim.time_s
    for bt in range(n_batch):
        for _ in range(per_batch):
            t += dt
            sim.advance(t)
            v = int(sim.state.def_site[0])
            b = int(np.flatnonzero(sim.state.occ == BR)[0])
            frac[bt, classes.index(dist2(v, b))] += 1.0 / per_batch
    mean = frac.mean(axis=0)
    sem = frac.std(axis=0, ddof=1) / np.sqrt(n_batch)
    assert np.max(exact) > 2.0 * np.min(exact[exact > 0])  # the energy shapes the distribution
    z = (mean - exact) / np.maximum(sem, 1e-4)
    assert np.all(np.abs(z) < 4.5), (classes, mean, exact, z)
