"""Per-class rate fits (:mod:`rates.fit`), KMC exposure (:mod:`kmc.exposure`) and ``kmc rates fit``.

Rates in, rates out: the KMC engine generates hop sequences with a known
catalog whose energy model is zero (every hop has dE = 0, so every channel of
a class has the class's rate and the per-class likelihood is exact), the
exposure is accumulated event by event, and the maximum-likelihood fit must
return the input barriers and prefactors within its own standard errors.

Tolerances: with m independent z-scores (classes are independent: the
likelihood factorises over classes), the family-wise bound is the two-sided
normal quantile at 0.27 % / m (what 3 standard errors are for a single value);
the sum of squared barrier z-scores must lie inside the central 99.8 % of a
chi-square with m degrees of freedom, which fails if the errors are too small
as well as too large.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import numpy as np
import pytest
from scipy import stats

from kmc import _kernels as K
from kmc.cli import main
from kmc.exposure import open_channels_per_class, run_with_exposure
from kmc.simulation import Simulation
from kmc.state import RateParams, fill_rates, make_state
from lattice import HalideSublattice, build_pure, build_random_mix, place_defects
from lattice.defects import DefectSet
from lattice.environment import N_CLASSES, class_label, encode_class
from lattice.sublattice import HOP_BACK
from rates import RateCatalog, load_catalog
from rates.fit import (
    FIT_MODES,
    build_catalog_from_md,
    combine_observations,
    fit_arrhenius,
    fit_class_arrhenius,
    observations_from_counts,
    observations_from_md_analysis,
)
from rates.ratelaw import K_B_EV, total_energy

TEMPERATURES_K = (400.0, 600.0, 800.0)
FAMILY_P = 0.0027  # two-sided probability of one value beyond 3 standard errors
MIN_HOPS_PER_T = 30  # "well-sampled": at least this many hops at every temperature
RATIO_RTOL = 1e-9  # as in test_detailed_balance


def _z_bound(m: int) -> float:
    """Two-sided normal bound with family-wise probability FAMILY_P over m values."""
    return float(stats.norm.isf(FAMILY_P / (2 * m)))


def _chi2_range(m: int) -> tuple[float, float]:
    return float(stats.chi2.ppf(0.001, m)), float(stats.chi2.ppf(0.999, m))


def _known_catalog(base: RateCatalog, shared_prefactor_Hz: float | None, seed: int) -> RateCatalog:
    """Zero energy model (dE = 0 for every hop), barriers and prefactors drawn per class around the default."""
    rng = np.random.default_rng(seed)
    cat = copy.deepcopy(base)
    cat.name = "known-synthetic"
    cat.pair_eV = np.zeros((4, 4))
    cat.bridge_eV = np.zeros(3)
    cat.E_KRA_eV = base.E_KRA_eV + rng.uniform(-0.03, 0.03, N_CLASSES)
    if shared_prefactor_Hz is None:
        cat.prefactor_Hz = 10.0 ** rng.uniform(11.7, 12.5, N_CLASSES)
    else:
        cat.prefactor_Hz = np.full(N_CLASSES, shared_prefactor_Hz)
    return cat


def _kmc_observations(catalog, configs, temperatures_K, n_events, seed):
    """Run each (config, temperature) with 3 vacancies + 3 interstitials; returns HopObservations."""
    children = iter(np.random.SeedSequence(seed).spawn(len(configs) * len(temperatures_K)))
    temps, counts, expos = [], [], []
    for config, n_ev in zip(configs, n_events):
        for T in temperatures_K:
            s_def, s_kmc = next(children).spawn(2)
            defects = place_defects(config, 3, 3, seed=np.random.default_rng(s_def))
            sim = Simulation(config, defects, catalog, T, seed=s_kmc)
            ex = run_with_exposure(sim, n_ev)
            assert ex.n_events == n_ev
            temps.append(T)
            counts.append(ex.hop_counts)
            expos.append(ex.exposure_s)
    return observations_from_counts(temps, np.array(counts), np.array(expos), sources="synthetic KMC")


@pytest.fixture(scope="module")
def lattice():
    return HalideSublattice((4, 4, 4))


@pytest.fixture(scope="module")
def per_class_data(default_catalog, lattice):
    """Known catalog with per-class prefactors; pure CsPbI3 and a random 50/50 mix at three temperatures."""
    cat = _known_catalog(default_catalog, None, seed=1)
    configs = [build_pure(lattice, "I"), build_random_mix(lattice, 0.5, seed=2)]
    obs = _kmc_observations(cat, configs, TEMPERATURES_K, n_events=(3000, 8000), seed=3)
    return cat, obs


@pytest.fixture(scope="module")
def shared_data(default_catalog, lattice):
    """Known catalog with one prefactor for every class; a random 50/50 mix at two temperatures."""
    cat = _known_catalog(default_catalog, 2.0e12, seed=4)
    obs = _kmc_observations(cat, [build_random_mix(lattice, 0.5, seed=5)], (400.0, 800.0), n_events=(6000,), seed=6)
    return cat, obs


# --------------------------------------------------------------------------
# KMC exposure
# --------------------------------------------------------------------------
def test_kmc_exposure_is_exact(default_catalog, lattice):
    """sum_c k_c tau_c = sum over events of R dt = sum of -ln(1 - u1): the time draws of the run.

    With dE = 0 the kernel's rate of every channel of class c is k_c, so this
    ties the exposure to the engine's own clock; the counts must equal the
    event log's classes."""
    cat = _known_catalog(default_catalog, None, seed=7)
    config = build_random_mix(lattice, 0.5, seed=8)
    defects = place_defects(config, 3, 3, seed=9)
    T, seed, n_ev = 500.0, 10, 2000
    sim = Simulation(config, defects, cat, T, seed=seed, event_log=n_ev)
    before = open_channels_per_class(sim)
    assert before.sum() == np.count_nonzero(sim.state.rates > 0)
    ex = run_with_exposure(sim, n_ev)
    k = cat.prefactor_Hz * np.exp(-cat.E_KRA_eV / (K_B_EV * T))
    # the Simulation draws uniforms in pairs (u1: time, u2: selection) from default_rng(seed), in order
    u = np.random.default_rng(seed).random(2 * n_ev)
    clock = float(np.sum(-np.log1p(-u[0::2])))
    assert float(np.sum(k * ex.exposure_s)) == pytest.approx(clock, rel=1e-10)
    np.testing.assert_array_equal(ex.hop_counts, np.bincount(sim.event_log()["hop_class"], minlength=N_CLASSES))
    assert ex.time_s == pytest.approx(sim.event_log()["time_s"][-1], rel=1e-12)
    assert np.all(ex.exposure_s[ex.hop_counts > 0] > 0)


def test_kmc_exposure_counts_the_censored_tail(default_catalog, lattice):
    config = build_pure(lattice, "I")
    sim = Simulation(config, place_defects(config, 1, 0, seed=1), default_catalog, 300.0, seed=2)
    ex = run_with_exposure(sim, 10**6, t_stop_s=1e-11)
    assert sim.time_s == 1e-11 and ex.time_s == 1e-11
    # one vacancy, 8 open channels all the time: exposure = 8 x elapsed time
    assert ex.exposure_s.sum() == pytest.approx(8 * 1e-11, rel=1e-12)
    with pytest.raises(ValueError, match="max_events"):
        run_with_exposure(sim, -1)


# --------------------------------------------------------------------------
# (a) rates in, rates out
# --------------------------------------------------------------------------
def test_per_class_fit_recovers_input(per_class_data):
    cat, obs = per_class_data
    fit = fit_arrhenius(obs, "per-class", prefactor_Hz=cat.prefactor_Hz)
    good = np.flatnonzero(fit.fitted & (obs.hop_counts.min(axis=0) >= MIN_HOPS_PER_T))
    assert all(fit.method[c] == "free" for c in good)
    assert good.size >= 20, f"only {good.size} well-sampled classes"
    # the pure-CsPbI3 classes are among them, each within 3 standard errors
    for c in (encode_class("vacancy", "I", 12), encode_class("interstitial", "I", 12, 2)):
        assert c in good
        assert abs(fit.E_KRA_eV[c] - cat.E_KRA_eV[c]) < 3 * fit.E_KRA_err_eV[c]
        assert abs(math.log(fit.prefactor_Hz[c] / cat.prefactor_Hz[c])) < 3 * fit.ln_prefactor_err[c]
    z_e = (fit.E_KRA_eV[good] - cat.E_KRA_eV[good]) / fit.E_KRA_err_eV[good]
    z_nu = (np.log(fit.prefactor_Hz[good]) - np.log(cat.prefactor_Hz[good])) / fit.ln_prefactor_err[good]
    bound = _z_bound(2 * good.size)
    worst = good[np.argmax(np.abs(z_e))]
    assert np.all(np.abs(z_e) < bound), f"{class_label(worst)}: z_E = {z_e.max():.2f}, bound {bound:.2f}"
    assert np.all(np.abs(z_nu) < bound)
    lo, hi = _chi2_range(good.size)
    assert lo < float(np.sum(z_e ** 2)) < hi, "barrier errors inconsistent with the scatter"
    # prefactor error in Hz is the delta-method one
    np.testing.assert_allclose(fit.prefactor_err_Hz[good], fit.prefactor_Hz[good] * fit.ln_prefactor_err[good])
    # barriers are resolved: the errors are much smaller than the spread of the inputs
    assert np.median(fit.E_KRA_err_eV[good]) < 0.02


def test_shared_prefactor_fit_recovers_input(shared_data):
    cat, obs = shared_data
    shared = fit_arrhenius(obs, "shared-prefactor")
    per_class = fit_arrhenius(obs, "per-class")
    fitted = np.flatnonzero(shared.fitted)
    assert np.all(shared.prefactor_Hz[fitted] == shared.prefactor_Hz[fitted[0]])
    nu, s_ln = shared.prefactor_Hz[fitted[0]], shared.ln_prefactor_err[fitted[0]]
    assert abs(math.log(nu / 2.0e12)) < 3 * s_ln, f"shared prefactor {nu:.3e} Hz +- {s_ln:.3f} (ln)"
    good = np.flatnonzero(shared.fitted & (obs.hop_counts.min(axis=0) >= MIN_HOPS_PER_T))
    assert good.size >= 20
    z_e = (shared.E_KRA_eV[good] - cat.E_KRA_eV[good]) / shared.E_KRA_err_eV[good]
    assert np.all(np.abs(z_e) < _z_bound(good.size))
    lo, hi = _chi2_range(good.size)
    # the z-scores share the prefactor's error, so they are correlated; the chi-square bound is then only
    # approximate, but a wrong error scale (e.g. conditional on a fixed prefactor) moves it far outside
    assert lo < float(np.sum(z_e ** 2)) < hi
    # pooling the prefactor sharpens every barrier
    both = good[per_class.fitted[good]]
    assert np.all(shared.E_KRA_err_eV[both] < per_class.E_KRA_err_eV[both])


def test_fixed_prefactor_single_temperature():
    """One temperature: E from k = nu exp(-E beta) with nu fixed; its error grows with the prefactor's."""
    rng = np.random.default_rng(11)
    T, nu, e_true = 500.0, 1.0e12, 0.2
    tau = 1e-7
    n = int(rng.poisson(nu * math.exp(-e_true / (K_B_EV * T)) * tau))
    res = fit_class_arrhenius([T], [n], [tau], prefactor_Hz=nu)
    # closed form of the MLE and its error at one temperature
    assert res["E_KRA_eV"] == pytest.approx(K_B_EV * T * math.log(nu * tau / n), rel=1e-8)
    assert res["E_KRA_stat_err_eV"] == pytest.approx(K_B_EV * T / math.sqrt(n), rel=1e-6)
    assert abs(res["E_KRA_eV"] - e_true) < 3 * res["E_KRA_err_eV"]
    with_err = fit_class_arrhenius([T], [n], [tau], prefactor_Hz=nu, prefactor_err_Hz=0.5 * nu)
    assert with_err["E_KRA_err_eV"] == pytest.approx(math.hypot(K_B_EV * T / math.sqrt(n), K_B_EV * T * 0.5), rel=1e-6)
    with pytest.raises(ValueError, match="two or more"):
        fit_class_arrhenius([T], [n], [tau])


# --------------------------------------------------------------------------
# (b) the written catalog: round trip, detailed balance
# --------------------------------------------------------------------------
def test_catalog_round_trip_and_detailed_balance(per_class_data, default_catalog, run_kernel, tmp_path):
    _, obs = per_class_data
    cat = build_catalog_from_md(obs, default_catalog, mode="per-class", name="fit-test")
    again = load_catalog(cat.save(tmp_path / "fit.json"))
    assert again.to_dict() == cat.to_dict() and again.sha256() == cat.sha256()
    assert cat.present.all()
    assert any(s == "md-mle" for s in cat.class_source)
    assert cat.provenance["fit"]["mode"] == "per-class"
    assert cat.provenance["inputs"][f"base catalog {default_catalog.name}"] == default_catalog.sha256()
    np.testing.assert_array_equal(cat.pair_eV, default_catalog.pair_eV)  # the base's (non-zero) energy model
    # detailed balance of the kernel's hops with the fitted catalog (as in test_detailed_balance)
    T = 500.0
    config = build_random_mix(HalideSublattice((4, 4, 4)), 0.5, seed=12)
    base = place_defects(config, 4, 4, seed=13)
    bridge = base.bridge.copy()
    bridge[4:, 1] = np.random.default_rng(14).integers(0, 2, size=4)
    state = make_state(config, DefectSet(kinds=base.kinds, sites=base.sites, bridge=bridge), again)
    params = RateParams.from_catalog(again, T)
    fill_rates(state, params)
    nbr = config.lattice.neighbour_table
    beta = 1.0 / (K_B_EV * T)
    rng = np.random.default_rng(15)
    n_nonzero_de = 0
    for step in range(100):
        flat = state.rates.ravel().copy()
        j = int(rng.choice(np.flatnonzero(flat > 0.0)))
        d, c = divmod(j, K.N_CHANNELS)
        k = c % 8
        site_a = int(state.def_site[d])
        e_x = total_energy(state.occ, nbr, state.bridge_n_br(), params.J, params.e_bridge)
        u2 = (flat[:j].sum() + 0.5 * flat[j]) / state.tree[1]
        status, _, _, log = run_kernel(state, params, np.array([0.5, u2]), max_events=1, log_capacity=1)
        assert status == K.STOP_EVENTS and log["defect"][0] == d and log["to_site"][0] == nbr[site_a, k]
        de = total_energy(state.occ, nbr, state.bridge_n_br(), params.J, params.e_bridge) - e_x
        rate_b = state.rates[d, int(HOP_BACK[site_a % 3, k])]
        assert flat[j] / rate_b == pytest.approx(math.exp(-beta * de), rel=RATIO_RTOL), f"step {step}, dE = {de}"
        n_nonzero_de += abs(de) > 1e-9
    assert n_nonzero_de > 20  # the check is not trivial


# --------------------------------------------------------------------------
# (c) fallbacks
# --------------------------------------------------------------------------
def test_unseen_classes_fall_back_and_are_flagged(per_class_data, default_catalog):
    _, obs = per_class_data
    # MD that never saw a Br interstitial hop: remove those classes from the synthetic data
    counts, expo = obs.hop_counts.copy(), obs.exposure_s.copy()
    unseen = np.array([c for c in range(N_CLASSES) if class_label(c).startswith("Xi:Br")])
    counts[:, unseen] = 0
    expo[:, unseen] = 0.0
    # one unseen class gets exposure but no hops, one is removed from the base, one gets hops at one temperature
    no_hops, missing, single = unseen[:3]
    expo[0, no_hops] = 1e-9
    base = copy.deepcopy(default_catalog)
    base.E_KRA_eV = base.E_KRA_eV.copy()
    base.E_KRA_eV[missing] = np.nan
    counts[1, single] = 5
    expo[1, single] = 2e-11
    obs2 = observations_from_counts(obs.temperatures_K, counts, expo, sources=obs.sources)
    cat = build_catalog_from_md(obs2, base, mode="per-class")
    fit = fit_arrhenius(obs2, "per-class", prefactor_Hz=base.prefactor_Hz, prefactor_err_Hz=base.prefactor_err_Hz)
    for c in range(N_CLASSES):
        if c == missing:
            assert not cat.present[c]
        elif fit.method[c]:
            assert cat.class_source[c] == {"free": "md-mle", "fixed-prefactor": "md-mle-fixed-prefactor"}[fit.method[c]]
            assert cat.E_KRA_eV[c] == fit.E_KRA_eV[c]
        else:
            assert cat.class_source[c] == f"fallback:{base.class_source[c]}", class_label(c)
            assert cat.E_KRA_eV[c] == base.E_KRA_eV[c] and cat.prefactor_Hz[c] == base.prefactor_Hz[c]
    assert cat.class_source[single] == "md-mle-fixed-prefactor"
    assert cat.prefactor_Hz[single] == base.prefactor_Hz[single]
    assert cat.provenance["fit"]["unfitted"][class_label(no_hops)].startswith("no hops")
    n_fallback = sum(s.startswith("fallback:") for s in cat.class_source)
    assert n_fallback == int(cat.present.sum()) - int(np.count_nonzero(fit.fitted)) >= unseen.size - 2


# --------------------------------------------------------------------------
# per-temperature rates
# --------------------------------------------------------------------------
def test_per_temperature_rates_and_upper_limits():
    n = np.zeros((2, N_CLASSES), dtype=np.int64)
    tau = np.zeros((2, N_CLASSES))
    n[0, 3], tau[0, 3] = 16, 2e-9
    tau[1, 3] = 4e-9  # exposure, no hops
    r = observations_from_counts([300.0, 400.0], n, tau).rates()
    assert r["rate_Hz"][0, 3] == pytest.approx(8e9) and r["rate_err_Hz"][0, 3] == pytest.approx(2e9)
    assert r["rate_Hz"][1, 3] == 0.0 and math.isnan(r["rate_err_Hz"][1, 3])
    assert r["rate_upper95_Hz"][1, 3] == pytest.approx(-math.log(0.05) / 4e-9)
    assert r["rate_upper95_Hz"][0, 3] == pytest.approx(stats.chi2.ppf(0.95, 34) / 4e-9)
    assert np.isnan(r["rate_Hz"][0, 4])


# --------------------------------------------------------------------------
# (d) bad input
# --------------------------------------------------------------------------
def _analysis(per_t):
    return {"schema": "halide-kmc/md-analysis", "schema_version": 1,
            "units": {"time": "ps", "rate": "1/ps"}, "inputs": [{"file": "T500_r0.h5", "sha256": "ab" * 32}],
            "per_temperature": per_t}


def _cls(c, n, expo_ps):
    return {"cls": c, "label": class_label(c), "n_hops": n, "exposure_ps": expo_ps}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["per_temperature"][0]["classes"][0].update(exposure_ps=-1.0), "exposure_ps must be >= 0"),
    (lambda d: d["per_temperature"][0]["classes"][0].update(exposure_ps=0.0), "exposure_ps = 0"),
    (lambda d: d["per_temperature"][0]["classes"][0].update(cls=104, label="x"), "cls 104 is not a class"),
    (lambda d: d["per_temperature"][0]["classes"][0].update(label="V:Br:nI=3"), "contradicts class id"),
    (lambda d: d["per_temperature"][0]["classes"][0].update(n_hops=2.5), "n_hops must be an integer"),
    (lambda d: d["per_temperature"][0]["classes"].append(_cls(12, 1, 1.0)), "listed twice"),
    (lambda d: d["per_temperature"][0].pop("temperature_K"), "temperature_K must be a number"),
    (lambda d: d.update(schema="other"), "field 'schema'"),
    (lambda d: d.update(schema_version=2), "schema_version 2"),
    (lambda d: d.update(units={"time": "fs"}), "units.time"),
    (lambda d: d.update(per_temperature=[]), "per_temperature"),
])
def test_bad_md_analysis_raises(mutate, message):
    data = _analysis([{"temperature_K": 500.0, "classes": [_cls(12, 3, 100.0)]}])
    assert observations_from_md_analysis(copy.deepcopy(data)).hop_counts[0, 12] == 3
    mutate(data)
    with pytest.raises(ValueError, match=message):
        observations_from_md_analysis(data)


def test_bad_files_and_arrays_raise(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        observations_from_md_analysis(bad)
    with pytest.raises(ValueError, match="does not exist"):
        observations_from_md_analysis(tmp_path / "missing.json")
    n = np.zeros(N_CLASSES, dtype=np.int64)
    tau = np.zeros(N_CLASSES)
    n[5], tau[5] = 2, 1e-9
    observations_from_counts(500.0, n, tau)
    with pytest.raises(ValueError, match="exposure_s must be >= 0"):
        observations_from_counts(500.0, n, np.where(np.arange(N_CLASSES) == 7, -1e-9, tau))
    with pytest.raises(ValueError, match="zero exposure"):
        observations_from_counts(500.0, n, np.zeros(N_CLASSES))
    with pytest.raises(ValueError, match="hop_counts must be >= 0"):
        observations_from_counts(500.0, -n, tau)
    with pytest.raises(ValueError, match="shape"):
        observations_from_counts(500.0, n[:10], tau[:10])
    with pytest.raises(ValueError, match="temperatures_K"):
        observations_from_counts(-5.0, n, tau)
    obs = observations_from_counts([400.0, 500.0], np.array([n, n]), np.array([tau, tau]))
    with pytest.raises(ValueError, match=r"valid modes are \['per-class', 'shared-prefactor', 'fixed-prefactor'\]"):
        fit_arrhenius(obs, "global")
    with pytest.raises(ValueError, match="needs prefactor_Hz"):
        fit_arrhenius(obs, "fixed-prefactor")
    with pytest.raises(ValueError, match="two or more temperatures"):
        fit_arrhenius(observations_from_counts(500.0, n, tau), "shared-prefactor")


# --------------------------------------------------------------------------
# sources, merging, CLI
# --------------------------------------------------------------------------
def _synthetic_analysis_files(tmp_path, rng):
    """Two analysis files (one per temperature) with Poisson counts from known rates."""
    truth = {encode_class("vacancy", "I", 12): (0.21, 1.5e12), encode_class("interstitial", "I", 12, 2): (0.17, 0.8e12)}
    paths = []
    for T, expo_ps in ((450.0, 4.0e4), (650.0, 1.0e4)):
        classes = []
        for c, (e, nu) in truth.items():
            n = int(rng.poisson(nu * math.exp(-e / (K_B_EV * T)) * expo_ps * 1e-12))
            classes.append(_cls(c, n, expo_ps))
        classes.append(_cls(encode_class("vacancy", "I", 11), 0, 50.0))  # seen, never hopped
        p = tmp_path / f"analysis_{T:g}.json"
        p.write_text(json.dumps(_analysis([{"temperature_K": T, "classes": classes}])))
        paths.append(p)
    return truth, paths


def test_md_files_merge_with_hashes(tmp_path):
    _, paths = _synthetic_analysis_files(tmp_path, np.random.default_rng(20))
    obs = combine_observations([observations_from_md_analysis(p) for p in paths])
    assert obs.temperatures_K.tolist() == [450.0, 650.0]
    assert [s["file"] for s in obs.sources] == [str(p) for p in paths]
    assert obs.sources[0]["sha256"] == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert obs.sources[0]["md_inputs"][0]["file"] == "T500_r0.h5"
    assert obs.exposure_s[0, encode_class("vacancy", "I", 12)] == pytest.approx(4.0e4 * 1e-12)


def test_cli_rates_fit(tmp_path, capsys):
    truth, paths = _synthetic_analysis_files(tmp_path, np.random.default_rng(21))
    out = tmp_path / "fitted.json"
    rc = main(["rates", "fit", "--md", str(paths[0]), "--md", str(paths[1]), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    cat = load_catalog(out)
    for c, (e, nu) in truth.items():
        assert class_label(c) in text
        assert cat.class_source[c] == "md-mle"
        assert abs(cat.E_KRA_eV[c] - e) < 3 * cat.E_KRA_err_eV[c]
    assert "not fitted: V:I:nI=11: no hops" in text
    assert cat.class_source[encode_class("vacancy", "I", 11)].startswith("fallback:")
    assert cat.temperature_range_K == (450.0, 650.0)
    assert set(cat.provenance["inputs"]) >= {str(p) for p in paths}
    assert "git_revision" in cat.provenance["versions"]
    # refuses to overwrite; --force overwrites; shared mode works from the CLI too
    assert main(["rates", "fit", "--md", str(paths[0]), "--md", str(paths[1]), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["rates", "fit", "--md", str(paths[0]), "--md", str(paths[1]), "--out", str(out), "--force",
                 "--mode", "shared-prefactor", "--base", "default"]) == 0
    assert load_catalog(out).class_source[next(iter(truth))] == "md-mle-shared-prefactor"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert main(["rates", "fit", "--md", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert set(FIT_MODES) == {"per-class", "shared-prefactor", "fixed-prefactor"}
