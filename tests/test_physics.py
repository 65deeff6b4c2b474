"""Physics with known answers: random walks, waiting times, Arrhenius, Boltzmann occupancy.

Tolerances are 3 (or 4 where several checks share a test) standard errors
estimated from the data themselves (independent blocks or replicas).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from kmc.analysis import fit_arrhenius
from kmc.simulation import Simulation
from lattice import HalideSublattice, build_pure, build_random_mix, place_defects
from rates import K_B_EV, load_catalog

NU = 1.0e12


def uniform_catalog(barrier_eV: float, pair=None):
    """Every class with the same barrier and prefactor; no energy model unless ``pair`` given."""
    cat = load_catalog()
    pair_eV = np.zeros((4, 4))
    if pair is not None:
        for (a, b), v in pair.items():
            pair_eV[a, b] = pair_eV[b, a] = v
    return dataclasses.replace(
        cat,
        name="uniform-test",
        E_KRA_eV=np.full(104, barrier_eV),
        prefactor_Hz=np.full(104, NU),
        pair_eV=pair_eV,
        bridge_eV=np.zeros(3),
    )


def block_defect_D(sim: Simulation, n_blocks: int, block_s: float) -> np.ndarray:
    """Defect D (in (a/2)^2 / s) from independent time blocks of a single-defect trajectory."""
    vals = np.empty(n_blocks)
    prev = sim.state.def_disp[0].astype(float).copy()
    for b in range(n_blocks):
        sim.advance(sim.time_s + block_s)
        cur = sim.state.def_disp[0].astype(float)
        vals[b] = np.sum((cur - prev) ** 2) / (6.0 * block_s)
        prev = cur.copy()
    return vals


@pytest.mark.parametrize("kind", ["vacancy", "interstitial"])
def test_single_defect_random_walk_D(kind):
    """D of one defect with uniform rates equals sum(Gamma l^2)/6.

    Vacancy: 8 channels of rate G, l^2 = a^2/2 = 2 (a/2)^2  -> D = 8 G * 2 / 6.
    Interstitial: 16 channels (2 atoms x 8 targets), each moving the bridge one site -> D = 16 G * 2 / 6.
    """
    T = 400.0
    E0 = 0.2
    cat = uniform_catalog(E0)
    lat = HalideSublattice((8, 8, 8))
    cfg = build_pure(lat, "I")
    nv, ni = (1, 0) if kind == "vacancy" else (0, 1)
    sim = Simulation(cfg, place_defects(cfg, nv, ni, seed=1), cat, T, seed=123)
    G = NU * math.exp(-E0 / (K_B_EV * T))
    n_channels = 8 if kind == "vacancy" else 16
    D_exact = n_channels * G * 2.0 / 6.0
    block_s = 40.0 / (n_channels * G)  # ~40 hops per block
    vals = block_defect_D(sim, 3000, block_s)
    sem = vals.std(ddof=1) / math.sqrt(vals.size)
    assert abs(vals.mean() - D_exact) < 3 * sem, (vals.mean(), D_exact, sem)
    assert sem < 0.05 * D_exact  # the test has resolving power


def test_waiting_times_are_exponential():
    """Times between events of a single vacancy with uniform rates follow Exp(8 G)."""
    T = 500.0
    E0 = 0.25
    cat = uniform_catalog(E0)
    lat = HalideSublattice((6, 6, 6))
    cfg = build_pure(lat, "Br")
    sim = Simulation(cfg, place_defects(cfg, 1, 0, seed=3), cat, T, seed=7, event_log=20000)
    sim.advance(math.inf, max_events=20000)
    t = sim.event_log()["time_s"]
    waits = np.diff(np.concatenate([[0.0], t]))
    rate = 8 * NU * math.exp(-E0 / (K_B_EV * T))
    assert waits.size == 20000
    sem = waits.std(ddof=1) / math.sqrt(waits.size)
    assert abs(waits.mean() - 1 / rate) < 3 * sem
    p = stats.kstest(waits * rate, "expon").pvalue
    assert p > 0.001, p


def test_arrhenius_fit_recovers_barrier():
    """D(T) of a uniform-barrier vacancy walk gives back the input barrier."""
    E0 = 0.18
    cat = uniform_catalog(E0)
    lat = HalideSublattice((6, 6, 6))
    cfg = build_pure(lat, "I")
    temps = [300.0, 400.0, 500.0, 650.0]
    D, err = [], []
    for i, T in enumerate(temps):
        sim = Simulation(cfg, place_defects(cfg, 1, 0, seed=i), cat, T, seed=100 + i)
        G = NU * math.exp(-E0 / (K_B_EV * T))
        vals = block_defect_D(sim, 800, 30.0 / (8 * G))
        D.append(vals.mean())
        err.append(vals.std(ddof=1) / math.sqrt(vals.size))
    fit = fit_arrhenius(temps, D, err)
    assert abs(fit["Ea_eV"] - E0) < 3 * fit["Ea_err_eV"], fit
    assert fit["Ea_err_eV"] < 0.01
    D0_exact = 8 * NU * 2.0 / 6.0
    assert abs(math.log(fit["D0"] / D0_exact)) < 3 * fit["D0_err"] / fit["D0"]


def test_boltzmann_occupancy_of_vacancy_surroundings():
    """Canonical equilibrium: a vacancy with a V-I pair energy J in a mixed lattice.

    The energy is E = J * n_I (n_I = iodides among the vacancy's 8 neighbours). All
    arrangements with the vacancy on a given site and n_I = n number
    C(8, n) * C(N - 9, N_I - n), so the exact stationary distribution is
    P(n) ∝ C(8, n) C(N - 9, N_I - n) exp(-J n / k_B T): a two-region occupancy
    (I-rich vs Br-rich surroundings) with ratio exp(-dE / k_B T) per arrangement.
    The vacancy rearranges the halides as it moves, so the regions are not fixed
    planes but surroundings; the check is exact at any lattice size.
    """
    from math import comb

    T = 600.0
    J = 0.04
    cat = uniform_catalog(0.15, pair={(2, 0): J})
    lat = HalideSublattice((3, 3, 3))
    cfg = build_random_mix(lat, 0.5, seed=4)
    sim = Simulation(cfg, place_defects(cfg, 1, 0, seed=5), cat, T, seed=11)
    n_sites = lat.n_sites
    n_i = int(np.count_nonzero(sim.state.occ == 0))
    beta = 1.0 / (K_B_EV * T)
    n = np.arange(9)
    w = np.array([comb(8, k) * comb(n_sites - 9, n_i - k) * math.exp(-beta * J * k) for k in n])
    p_exact = w / w.sum()
    nb = lat.neighbour_table
    G = NU * math.exp(-0.15 * beta)
    step = 3.0 / (8 * G)
    samples = np.empty(60000, dtype=np.int64)
    for i in range(samples.size):
        sim.advance(sim.time_s + step)
        samples[i] = np.count_nonzero(sim.state.occ[nb[sim.state.def_site[0]]] == 0)
    # batch means over 60 blocks for the error of the mean
    blocks = samples.reshape(60, -1).mean(axis=1)
    sem = blocks.std(ddof=1) / math.sqrt(blocks.size)
    mean_exact = float((n * p_exact).sum())
    assert abs(samples.mean() - mean_exact) < 3 * sem, (samples.mean(), mean_exact, sem)
    # the tilt is resolved: the untilted (J = 0) mean differs by many standard errors
    w0 = np.array([comb(8, k) * comb(n_sites - 9, n_i - k) for k in n])
    assert abs(float((n * w0).sum() / w0.sum()) - mean_exact) > 10 * sem
    # full distribution: every populated n_I bin within 4 batch-means standard errors
    # (4 rather than 3 because 9 bins are checked at once)
    onehot = samples.reshape(60, -1)[:, :, None] == n[None, None, :]
    per_block = onehot.mean(axis=1)
    p_hat = per_block.mean(axis=0)
    p_sem = per_block.std(axis=0, ddof=1) / math.sqrt(per_block.shape[0])
    for k in n[p_exact > 0.01]:
        assert abs(p_hat[k] - p_exact[k]) < 4 * p_sem[k], (k, p_hat[k], p_exact[k], p_sem[k])


def test_arrhenius_errors_from_known_errors_also_for_two_points():
    """Two temperatures with errors: the line goes through both points and its errors are the exact
    propagation, var(E_a) = (s1^2 + s2^2) / (x1 - x2)^2 with x = -1/kT and s = relative errors; D(T_ref)
    at one of the two temperatures has that point's own error. Monte Carlo over noisy points agrees."""
    T = np.array([400.0, 700.0])
    Ea, D0 = 0.2, 1e-3
    D = D0 * np.exp(-Ea / (K_B_EV * T))
    rel = np.array([0.05, 0.1])
    fit = fit_arrhenius(T, D, rel * D, T_ref_K=400.0)
    x = -1.0 / (K_B_EV * T)
    assert fit["Ea_eV"] == pytest.approx(Ea, rel=1e-9)
    assert fit["Ea_err_eV"] == pytest.approx(math.sqrt((rel ** 2).sum()) / abs(x[0] - x[1]), rel=1e-9)
    assert fit["D_ref"] == pytest.approx(D[0], rel=1e-9)
    assert fit["D_ref_err"] == pytest.approx(rel[0] * D[0], rel=1e-9)
    rng = np.random.default_rng(5)
    ref = [fit_arrhenius(T, D * np.exp(rng.normal(0, rel)), rel * D, T_ref_K=300.0)["D_ref"] for _ in range(4000)]
    spread = np.std(np.log(ref))  # relative error of D(300 K) from 4000 noisy pairs, +-1.1 % (chi2 with 3999 dof)
    assert spread == pytest.approx(fit_arrhenius(T, D, rel * D, T_ref_K=300.0)["D_ref_err"]
                                   / fit_arrhenius(T, D, rel * D, T_ref_K=300.0)["D_ref"], rel=0.05)
    assert math.isnan(fit_arrhenius(T, D)["Ea_err_eV"])  # no errors, no residual: no error claimed
