"""Estimators and verdicts of the validation matrix, checked against known answers.

* coverage: with uniform rates the split interstitial's Eq. 1 D per defect is
  exactly 16 G l^2 / 6 (no tracer correlation without orientation memory); the
  reported 68 % intervals (mean +- t sem over replicas) must contain it in
  68 +- 7 % of 200 seeded sets;
* the KMC summary of ``kmc run``: defect D never negative, within 3 standard
  errors of the exact random-walk value, error shrinking with hops;
* Welch's t with honest degrees of freedom: planted agreeing inputs from 3-4
  runs disagree in ~5 % of cases (a Gaussian |z| <= 2 rule would give far
  more), planted differences are caught;
* kinisi through the package adapter recovers D of a Gaussian walk.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from common.diffusion import HopLog, hop_count_D, lattice_lag_D
from common.stats import block_ratio_D, endpoint_D, mean_sem, t_interval, welch_compare
from kmc.hoplog import replay
from kmc.simulation import Simulation
from lattice import HalideSublattice, build_pure, place_defects
from rates import K_B_EV, load_catalog

NU = 1.0e12


def uniform_catalog(barrier_eV: float):
    cat = load_catalog()
    return dataclasses.replace(cat, name="uniform-test", E_KRA_eV=np.full(104, barrier_eV),
                               prefactor_Hz=np.full(104, NU), pair_eV=np.zeros((4, 4)), bridge_eV=np.zeros(3))


def test_interval_coverage_of_eq1_for_uniform_interstitial():
    T, E0, a = 500.0, 0.2, 6.3
    G = NU * math.exp(-E0 / (K_B_EV * T))
    l2_cm2 = a * a / 2 * 1e-16
    D_exact = 16 * G * l2_cm2 / 6.0
    cat = uniform_catalog(E0)
    lat = HalideSublattice((3, 3, 3))
    cfg = build_pure(lat, "I")
    duration = 400.0 / (16 * G)  # ~400 hops per replica
    lag = duration / 4
    n_sets, n_rep, hits = 200, 5, 0
    zs = []
    for s in range(n_sets):
        vals = []
        for r in range(n_rep):
            seed = np.random.SeedSequence([s, r])
            d = place_defects(cfg, 0, 1, seed=int(seed.generate_state(1)[0]))
            sim = Simulation(cfg, d, cat, T, seed, event_log=1 << 30)
            sim.advance(duration)
            atoms, _ = replay(cfg, d, sim.event_log(), a, sim.time_s)
            vals.append(lattice_lag_D(atoms, lag, "X", n_origins=100, A2_per_time_to_cm2_s=1e-16))
        m, e, n = mean_sem(vals)
        lo, hi = t_interval(m, e, n, level=0.68)
        hits += lo <= D_exact <= hi
        zs.append((m - D_exact) / e)
    coverage = hits / n_sets
    assert 0.61 <= coverage <= 0.75, coverage
    # and no bias: the mean t-score is 0 within its standard error
    z = np.asarray(zs)
    assert abs(z.mean()) < 3 * z.std(ddof=1) / math.sqrt(z.size)


def test_hop_count_estimator_is_exact_for_uncorrelated_walk():
    T, E0, a = 500.0, 0.2, 6.3
    G = NU * math.exp(-E0 / (K_B_EV * T))
    cat = uniform_catalog(E0)
    cfg = build_pure(HalideSublattice((4, 4, 4)), "I")
    logs = []
    for r in range(4):
        d = place_defects(cfg, 0, 1, seed=r)
        sim = Simulation(cfg, d, cat, T, 100 + r, event_log=1 << 30)
        sim.advance(5000 / (16 * G))
        logs.append(replay(cfg, d, sim.event_log(), a, sim.time_s)[0])
    hc = hop_count_D(logs, "X", A2_per_time_to_cm2_s=1e-16)
    exact = 16 * G * (a * a / 2 * 1e-16) / 6
    assert abs(hc["D_cm2_s"] - exact) < 3 * hc["err_cm2_s"]
    assert abs(hc["mean_cos"]) < 3 / math.sqrt(hc["n_pairs"])  # f = 1 within its error


def test_kmc_run_defect_D_positive_and_exact(tmp_path):
    """The measured failure: 8 x 2e6 events of one vacancy on 3000 sites gave -1e-6 .. 1e-4 cm2/s."""
    from kmc.config import resolve
    from kmc.runner import run_all

    T, E0 = 500.0, 0.2
    cat_path = tmp_path / "uniform.json"
    uniform_catalog(E0).save(cat_path)
    cfg = resolve({"lattice": {"shape": [10, 10, 10], "lattice_constant_A": 6.0},
                   "configuration": {"kind": "pure", "species": "I"},
                   "defects": {"vacancies": 1, "interstitials": 0, "placement": "random"},
                   "run": {"temperatures_K": [T], "max_events": 100_000, "n_observations": 100, "replicas": 6,
                           "seed": 5, "catalog": str(cat_path), "workers": 1},
                   "output": {"directory": str(tmp_path / "run"), "plots": False}})
    summary = run_all(cfg, progress=False)
    G = NU * math.exp(-E0 / (K_B_EV * T))
    exact = 8 * G * (6.0 ** 2 / 2 * 1e-16) / 6
    e = summary["per_temperature"][0]["D_defect_cm2_s"]["vacancy"]
    assert all(v > 0 for v in e["values"])
    assert abs(e["mean"] - exact) < 3 * e["sem"], (e, exact)
    assert e["sem"] < 0.05 * exact
    # single-run errors from the blocks are honest too: per-run |D - exact| / err is ~N(0, 1)
    z = [(r["D_defect_cm2_s"]["vacancy"] - exact) / r["D_defect_err_cm2_s"]["vacancy"] for r in summary["runs"]]
    assert np.all(np.abs(z) < 4)


def test_block_ratio_error_shrinks_with_hops():
    rng = np.random.default_rng(0)
    errs = []
    for n_steps in (1000, 16000):
        steps = rng.normal(size=(n_steps, 1, 3))
        R = np.concatenate([np.zeros((1, 1, 3)), np.cumsum(steps, axis=0)])
        t = np.arange(n_steps + 1, dtype=float)
        D, e, nb = block_ratio_D(t, R, n_blocks=min(100, n_steps // 50))
        assert abs(D - 0.5) < 4 * e  # <|step|^2> / 6 = 3 / 6
        errs.append(e)
    assert errs[1] < 0.5 * errs[0]
    assert endpoint_D([0.0, 2.0], [0.0, 12.0]) == 1.0


def test_welch_false_alarm_rate_with_few_runs():
    rng = np.random.default_rng(1)
    n_trials, disagree, gauss = 2000, 0, 0
    for _ in range(n_trials):
        a = rng.normal(1.0, 0.3, size=3)
        b = rng.normal(1.0, 0.1, size=8)
        ma, ea, na = mean_sem(a)
        mb, eb, nb = mean_sem(b)
        c = welch_compare(ma, ea, na, mb, eb, nb)
        disagree += not c["agree"]
        gauss += abs(c["t"]) > 2
    rate = disagree / n_trials
    sd = math.sqrt(0.05 * 0.95 / n_trials)
    assert abs(rate - 0.05) < 4 * sd + 0.01, rate  # Welch's approximation is good to ~1 %
    assert gauss / n_trials > 0.09  # what the Gaussian |z| <= 2 rule would have claimed


def test_welch_detects_planted_difference_and_refuses_undefined():
    rng = np.random.default_rng(2)
    caught = 0
    for _ in range(500):
        a = rng.normal(1.5, 0.1, size=6)
        b = rng.normal(1.0, 0.1, size=6)
        c = welch_compare(*mean_sem(a), *mean_sem(b))
        caught += c["agree"] is False
    assert caught == 500
    assert welch_compare(1.0, math.nan, 1, 1.0, 0.1, 8)["agree"] is None  # one MD run: no verdict
    assert welch_compare(0.0, 0.1, 4, 0.0, 0.1, 4)["agree"] is True  # a zero D is a value, not a missing one


def test_poisson_side_uses_normal_limit():
    c = welch_compare(10.0, 1.0, math.inf, 12.0, 1.0, math.inf)
    assert math.isinf(c["dof"]) and c["p_value"] == pytest.approx(2 * stats.norm.sf(2 / math.sqrt(2)))


def test_kinisi_adapter_recovers_gaussian_walk():
    pytest.importorskip("kinisi")
    from common.diffusion import kinisi_eq1

    rng = np.random.default_rng(3)
    n_frames, n_atoms, dt_ps, sigma = 400, 20, 0.1, 0.2
    D_atom = sigma ** 2 / (2 * dt_ps)  # A^2/ps per atom
    hal = np.cumsum(rng.normal(0, sigma, size=(n_frames, n_atoms, 3)), axis=0) + rng.uniform(0, 20, (1, n_atoms, 3))
    fw = np.tile(rng.uniform(0, 20, (1, 8, 3)), (n_frames, 1, 1))
    pos = np.concatenate([hal, fw], axis=1)
    sym = ["I"] * n_atoms + ["Pb"] * 8
    k = kinisi_eq1(pos, sym, "X", [20.0, 20.0, 20.0], dt_ps)
    exact = n_atoms * D_atom * 1e-4  # Eq. 1 sums over atoms; 1 A^2/ps = 1e-4 cm^2/s
    width = k["hi_cm2_s"] - k["lo_cm2_s"]
    assert abs(k["D_cm2_s"] - exact) < 2.5 * width, (k, exact)


def test_kmc_run_eq1_per_defect_units_and_normalisation(tmp_path):
    """`kmc run`'s Eq. 1 per defect (division by the defect count, (a/2)^2 -> cm^2, /6) against the exact answer.

    Two split interstitials with uniform rates on a large cell: no tracer correlation without orientation
    memory, so Eq. 1 summed over all halides is 16 G l^2 / 6 per interstitial (l^2 = a^2 / 2).
    """
    from kmc.config import resolve
    from kmc.runner import run_all

    T, E0, a = 500.0, 0.2, 6.1
    cat_path = tmp_path / "uniform.json"
    uniform_catalog(E0).save(cat_path)
    cfg = resolve({"lattice": {"shape": [12, 12, 12], "lattice_constant_A": a},
                   "configuration": {"kind": "pure", "species": "I"},
                   "defects": {"vacancies": 0, "interstitials": 2, "placement": "random"},
                   "run": {"temperatures_K": [T], "max_events": 40_000, "n_observations": 20, "replicas": 6,
                           "seed": 9, "catalog": str(cat_path), "workers": 1},
                   "output": {"directory": str(tmp_path / "run"), "plots": False}})
    e = run_all(cfg, progress=False)["per_temperature"][0]["D_eq1_per_defect_cm2_s"]["all"]
    G = NU * math.exp(-E0 / (K_B_EV * T))
    exact = 16 * G * (a * a / 2 * 1e-16) / 6
    assert all(v > 0 for v in e["values"])
    assert abs(e["mean"] - exact) < 3 * e["sem"], (e, exact)
    assert e["sem"] < 0.05 * exact
