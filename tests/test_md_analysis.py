"""MD analyses with known answers (md_reference.analysis.observables): Eq. 1 D, Arrhenius,
Boltzmann layer profile, bridge statistics, nanodomain mixing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lattice import HalideSublattice, build_heterojunction, build_nanodomain
from lattice.species import BR, I, VACANCY
from md_reference.analysis.observables import (
    arrhenius,
    bridge_statistics,
    combine_runs,
    diffusion_by_species,
    diffusion_eq1,
    layer_occupancy,
    mixing_counts,
    mixing_counts_from_occupancy,
    msd_eq1,
    neighbour_x_Br,
    to_jsonable,
)
from rates.ratelaw import K_B_EV


def _walks(rng, n_frames, n_atoms, D_A2_ps, dt_ps, vib_A=0.0):
    """Gaussian random walks with diffusion coefficient D per atom plus iid vibration noise."""
    steps = rng.normal(0.0, math.sqrt(2.0 * D_A2_ps * dt_ps), size=(n_frames, n_atoms, 3))
    steps[0] = 0.0
    return np.cumsum(steps, axis=0) + rng.normal(0.0, vib_A, size=(n_frames, n_atoms, 3))


def test_eq1_recovers_known_D_summed_over_atoms():
    rng = np.random.default_rng(2024)
    n_frames, n_atoms, dt, D1 = 501, 8, 0.1, 0.05  # D1 in A^2/ps per atom
    t = np.arange(n_frames) * dt
    # Eq. 1 sums over atoms: N independent walkers give N * D1 (not D1)
    want = n_atoms * D1 * 1e-4  # cm^2/s
    vals = [diffusion_eq1(_walks(rng, n_frames, n_atoms, D1, dt, vib_A=0.3), t) for _ in range(40)]
    # The slope estimator is unbiased for Brownian motion (the vibration plateau goes into the
    # intercept), so the mean of 40 independent runs lies within 3 standard errors of the truth
    # (a 0.3 % false-alarm rate for a normal mean); the standard error itself comes from the
    # scatter of the runs.
    mean, sem = np.mean(vals), np.std(vals, ddof=1) / math.sqrt(len(vals))
    assert sem < 0.1 * want  # the test has resolving power
    assert abs(mean - want) < 3 * sem
    lags, msd = msd_eq1(_walks(rng, n_frames, n_atoms, D1, dt), t, max_lag_fraction=0.5)
    assert lags[0] == 0 and msd[0] == 0 and lags[-1] == pytest.approx(0.5 * t[-1])


def test_diffusion_by_species_is_additive():
    rng = np.random.default_rng(5)
    n_frames, dt = 301, 0.1
    t = np.arange(n_frames) * dt
    pos = np.concatenate([_walks(rng, n_frames, 5, 0.02, dt), _walks(rng, n_frames, 7, 0.08, dt),
                          _walks(rng, n_frames, 3, 1.0, dt)], axis=1)
    symbols = np.array(["I"] * 5 + ["Br"] * 7 + ["Cs"] * 3)
    d = diffusion_by_species(pos, t, symbols)
    # the summed MSD is linear in the atom set and so is the fitted slope; Cs is not a halide
    assert d["X"] == pytest.approx(d["I"] + d["Br"], rel=1e-10)
    assert d["Br"] > d["I"]
    codes = np.array([I] * 5 + [BR] * 7 + [-1] * 3)
    assert diffusion_by_species(pos, t, codes, species=("Br",))["Br"] == pytest.approx(d["Br"], rel=1e-12)
    with pytest.raises(ValueError, match="species selection"):
        diffusion_by_species(pos, t, symbols, species=("Cl",))
    with pytest.raises(ValueError, match="evenly spaced"):
        diffusion_eq1(pos, t ** 1.1 + 0.1)


def test_combine_runs_and_arrhenius():
    c = combine_runs([1.0, 2.0, 3.0, float("nan")])
    assert c["mean"] == 2.0 and c["n"] == 3 and c["sem"] == pytest.approx(1 / math.sqrt(3))
    T = np.array([500.0, 550.0, 600.0])
    Ea, D0 = 0.17, 5.4e-4
    D = D0 * np.exp(-Ea / (K_B_EV * T))
    fit = arrhenius(T, D, D * 0.05)
    assert fit["Ea_eV"] == pytest.approx(Ea, rel=1e-9)
    assert fit["D0"] == pytest.approx(D0, rel=1e-9)
    assert fit["D_ref"] == pytest.approx(D0 * math.exp(-Ea / (K_B_EV * 300.0)), rel=1e-9)
    with pytest.raises(ValueError, match="temperature_K and D"):
        arrhenius(T, D[:2])


# --------------------------------------------------------------------------
# Figure 4: Boltzmann profile
# --------------------------------------------------------------------------
def test_layer_profile_recovers_energy_difference():
    lat = HalideSublattice((4, 2, 2))
    cfg = build_heterojunction(lat, 2, 2, "I-rich", axis=0)
    T, dE = 600.0, 0.06  # a site in the I layer costs dE
    kT = K_B_EV * T
    w = np.where(cfg.occ == I, math.exp(-dE / kT), 1.0)
    p_site = w / w.sum()
    rng = np.random.default_rng(77)
    n = 20000
    sites = rng.choice(lat.n_sites, size=n, p=p_site)
    prof = layer_occupancy(sites, cfg, T)
    planes = lat.plane_index(0)
    pi_plane = np.bincount(planes, weights=p_site, minlength=lat.n_planes(0))
    # Binomial: var(ln p_hat) = (1 - pi) / (n pi); F_p - F_ref carries both planes' errors.
    ref = int(np.argmax(prof["per_site"]))
    for p in range(lat.n_planes(0)):
        want = dE if cfg.plane_region[p] == I else 0.0
        sig = kT * math.sqrt((1 - pi_plane[p]) / (n * pi_plane[p]) + (1 - pi_plane[ref]) / (n * pi_plane[ref]))
        assert abs(prof["F_eV"][p] - want) < 3 * sig + 1e-12, p
        assert prof["F_err_eV"][p] == pytest.approx(kT / math.sqrt(prof["counts"][p]))
    # per-site normalisation: PbX2 (even) and CsX (odd) planes of the Br layer agree
    br_even = [p for p in range(8) if cfg.plane_region[p] == BR and p % 2 == 0]
    br_odd = [p for p in range(8) if cfg.plane_region[p] == BR and p % 2 == 1]
    assert abs(np.mean(prof["F_eV"][br_even]) - np.mean(prof["F_eV"][br_odd])) < 0.01  # kT ln 2 = 0.036 eV
    # grouped by (region, distance to the interface)
    groups = {(g["region"], g["distance"]): g for g in prof["groups"]}
    assert sum(g["counts"] for g in groups.values()) == n
    assert sum(g["n_sites"] for g in groups.values()) == lat.n_sites
    g_i, g_br = groups[("I", 1)], groups[("Br", 1)]
    sig = kT * math.sqrt(1 / g_i["counts"] + 1 / g_br["counts"])
    assert abs((g_i["F_eV"] - g_br["F_eV"]) - dE) < 3 * sig
    json.dumps(to_jsonable(prof))


def test_layer_profile_bridge_counts_and_errors():
    lat = HalideSublattice((4, 2, 2))
    cfg = build_heterojunction(lat, 2, 2, "Br-rich", axis=0)
    sites = np.array([[0, 3], [0, -1], [6, 3]])
    comp = np.array([[1, 2], [1, -1], [0, 2]])
    prof = layer_occupancy(sites, cfg, 600.0, correlation_frames=2.0, bridge_n_br=comp)
    assert prof["n_total"] == 5
    planes = lat.plane_index(0)
    assert prof["counts_by_bridge"].sum() == 5
    assert prof["counts_by_bridge"][2, planes[3]] == 2
    p0 = planes[0]
    assert prof["F_err_eV"][p0] == pytest.approx(K_B_EV * 600.0 / math.sqrt(prof["counts"][p0] / 2.0))
    with pytest.raises(ValueError, match="correlation_frames"):
        layer_occupancy(sites, cfg, 600.0, correlation_frames=0.5)


# --------------------------------------------------------------------------
# Bridge composition statistics
# --------------------------------------------------------------------------
def _bridge_sequence(rng, n_res, x, dF, kT, mean_len=20):
    """Independent residences: composition ~ random * Boltzmann, geometric lengths."""
    p_rand = np.array([(1 - x) ** 2, 2 * x * (1 - x), x * x])
    w = p_rand * np.exp(-np.concatenate([[0.0], dF]) / kT)
    comp = rng.choice(3, size=n_res, p=w / w.sum())
    lengths = rng.geometric(1.0 / mean_len, size=n_res)
    return np.repeat(comp, lengths), np.repeat(np.arange(n_res), lengths)


def test_bridge_statistics_recovers_free_energies():
    T, x = 600.0, 0.5
    kT = K_B_EV * T
    dF = np.array([-0.109, -0.144])  # F(IBr) - F(II), F(BrBr) - F(II), as in the paper's SI
    rng = np.random.default_rng(31)
    est, errs = [], []
    # 60 runs of 3000 residences: the O(1/n_II) small-sample bias of the log-ratio estimator
    # (about kT (var_IBr - var_II) / 2) stays well below the standard error of the mean
    for _ in range(60):
        comp, site = _bridge_sequence(rng, 3000, x, dF, kT)
        comp[rng.random(comp.size) < 0.05] = -1  # frames without a bridge are ignored
        s = bridge_statistics(comp, x, T, defect_site=site)
        est.append(s["dF_eV"])
        errs.append(s["dF_err_eV"])
    est, errs = np.asarray(est), np.asarray(errs)
    # one run: truth within 3 reported errors
    assert np.all(np.abs(est[0] - dF) < 3 * errs[0])
    # the mean of 60 runs within 3 standard errors of the mean
    sem = est.std(axis=0, ddof=1) / math.sqrt(len(est))
    assert np.all(np.abs(est.mean(axis=0) - dF) < 3 * sem)
    # the residence-based error matches the actual scatter (a std from 60 runs is known to ~9 %)
    np.testing.assert_allclose(errs.mean(axis=0), est.std(axis=0, ddof=1), rtol=0.3)
    # block errors are finite and of the same order
    b = bridge_statistics(comp, x, T, error_method="blocks", n_blocks=10)
    assert np.all(np.isfinite(b["dF_err_eV"])) and np.all(b["dF_err_eV"] < 5 * errs[-1])
    # a random mixture gives dF = 0
    comp, _ = _bridge_sequence(rng, 5000, 0.3, np.zeros(2), kT)
    s = bridge_statistics(comp, 0.3, T)
    assert np.all(np.abs(s["dF_eV"]) < 3 * s["dF_err_eV"])
    with pytest.raises(ValueError, match="error_method"):
        bridge_statistics(comp, 0.3, T, error_method="bootstrap")


def test_neighbour_x_Br():
    lat = HalideSublattice((3, 3, 3))
    occ = np.full((2, lat.n_sites), I, dtype=np.int8)
    nb = lat.neighbour_table[10]
    occ[0, nb[:2]] = BR
    occ[1, nb[0]] = VACANCY
    occ[1, nb[1:4]] = BR
    x = neighbour_x_Br(occ, lat, np.array([10, 10]))
    assert x[0] == pytest.approx(2 / 8) and x[1] == pytest.approx(3 / 7)


# --------------------------------------------------------------------------
# Figure 5: nanodomain mixing
# --------------------------------------------------------------------------
def test_mixing_counts_on_tiny_nanodomain():
    lat = HalideSublattice((4, 4, 4))
    cfg = build_nanodomain(lat, "Br", 2)
    species = cfg.occ.copy()  # atom i starts on site i
    inside = cfg.domain_mask()
    dom_sites = np.flatnonzero(inside)
    out_sites = np.flatnonzero(~inside)
    assign = np.tile(np.arange(lat.n_sites), (3, 1))
    # frame 1: 3 domain atoms swap places with 3 matrix atoms outside the box
    assign[1, dom_sites[:3]], assign[1, out_sites[:3]] = out_sites[:3], dom_sites[:3]
    # frame 2: additionally two domain atoms swap with each other (no mixing) and one more leaves
    assign[2] = assign[1]
    assign[2, dom_sites[5]], assign[2, dom_sites[6]] = dom_sites[6], dom_sites[5]
    assign[2, dom_sites[7]], assign[2, out_sites[10]] = out_sites[10], dom_sites[7]
    m = mixing_counts(cfg, assign, species)
    np.testing.assert_array_equal(m["domain_out"], [0, 3, 4])
    np.testing.assert_array_equal(m["matrix_in"], [0, 3, 4])
    np.testing.assert_array_equal(m["events"], [0, 6, 8])
    occ = np.empty((3, lat.n_sites), dtype=np.int8)
    for f in range(3):
        occ[f, assign[f]] = species
    m2 = mixing_counts_from_occupancy(cfg, occ)
    np.testing.assert_array_equal(m2["n_mixed"], m["n_mixed"])
    with pytest.raises(ValueError, match="nanodomain"):
        mixing_counts(build_heterojunction(lat, 2, 2), assign, species)
