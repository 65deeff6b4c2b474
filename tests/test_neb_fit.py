"""E_KRA and energy model from NEB records (:mod:`rates.neb_fit`) and ``kmc rates fit --neb``.

Synthetic records: hops sampled on real configurations (the records files carry
the same header as ``kmc rates neb``, so the loader rebuilds the cells), with
E_KRA drawn from a known linear model per family plus Gaussian noise and dE
from a known energy model evaluated by brute force (:func:`rates.ratelaw.total_energy`
of the configurations before and after the hop, independent of the fit's design
matrix) plus noise. Tolerances: with m checked values the family-wise bound is
the two-sided normal quantile at 0.27 % / m (3 standard errors for a single
value), as in ``test_rate_fit``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from kmc import _kernels as K
from kmc.cli import main
from kmc.state import RateParams, fill_rates, make_state
from lattice import (
    HalideSublattice,
    build_configuration,
    build_random_mix,
    place_defects,
)
from lattice.defects import DefectSet
from lattice.environment import (
    N_CLASSES,
    class_label,
    classify_hop,
    decode_class,
    encode_class,
)
from lattice.species import (
    BR,
    BRIDGE,
    HALIDES,
    KIND_INTERSTITIAL,
    KIND_VACANCY,
    STATE_NAMES,
    VACANCY,
)
from lattice.sublattice import HOP_BACK
from rates import RateCatalog, load_catalog
from rates.neb_fit import (
    DEFAULT_ENERGY_PARAMETERS,
    ENERGY_PARAMETERS,
    build_catalog_from_neb,
    energy_parameters_of,
    fit_kra,
    fit_neb,
    load_neb_record_files,
    load_neb_records,
    overlay_md_fit,
    predict_delta_energy,
    prefactor_from_md_catalog,
)
from rates.ratelaw import K_B_EV, total_energy

FAMILY_P = 0.0027
RATIO_RTOL = 1e-9  # as in test_detailed_balance
SIGMA_KRA = {"vacancy": 0.01, "interstitial": 0.03}  # eV, noise of the synthetic barriers
SIGMA_DE = 0.005  # eV, noise of the synthetic dE
#: Known energy model: the free parameters differ from the default catalog; every other term equals it.
TRUE_ENERGY = {"pair:I-V": 0.020, "pair:I-Br": 0.008, "pair:I-B": -0.015, "bridge:II": 0.120, "bridge:IBr": 0.030}
SHAPE = (4, 4, 4)
CELLS = [("pure", {"species": "I"}), ("pure", {"species": "Br"})] + [
    ("random", {"x_I": x, "seed": s}) for x, s in ((0.25, 1), (0.5, 2), (0.5, 3), (0.75, 4))]


def _z_bound(m: int) -> float:
    return float(stats.norm.isf(FAMILY_P / (2 * m)))


def _true_kra(label: str) -> tuple[float, float]:
    """Known (intercept at nI=0, slope per shell I) of a family."""
    table = {"V:I": (0.45, -0.010), "V:Br": (0.52, 0.006)}
    if label in table:
        return table[label]
    mover, pair = label.split(":")[1], int(label.split("=")[1])
    return 0.15 + 0.03 * pair + (0.05 if mover == "Br" else 0.0), (-0.004 if mover == "I" else 0.003)


def _theta_true(base: RateCatalog) -> np.ndarray:
    theta = energy_parameters_of(base)
    for k, v in TRUE_ENERGY.items():
        theta[ENERGY_PARAMETERS.index(k)] = v
    return theta


def _J(theta):
    J = np.zeros((4, 4))
    k = 0
    for a in range(4):
        for b in range(a, 4):
            J[a, b] = J[b, a] = theta[k]
            k += 1
    return J, theta[k:k + 3]


def _family(cls: int) -> str:
    d = decode_class(cls)
    return f"V:{d['mover']}" if d["defect"] == "vacancy" else f"Xi:{d['mover']}:pI={d['pair_nI']}"


def _hop_record(config, kind, site_a, slot, mover_index, added, theta, rng, noise=True):
    """One synthetic record dict (and the exact dE) of a hop on ``config``."""
    lat = config.lattice
    nbr = lat.neighbour_table
    site_b = int(nbr[site_a, slot])
    occ0 = config.occ.astype(np.int8)
    J, eb = _J(theta)
    before = occ0.copy()
    after = occ0.copy()
    if kind == "vacancy":
        mover = int(occ0[site_b])
        before[site_a] = VACANCY
        after[site_a] = mover
        after[site_b] = VACANCY
        cls = classify_hop(before, lat.dims, site_a, slot, KIND_VACANCY, mover)
        bridges_before = bridges_after = []
        other = target = None
    else:
        own = int(occ0[site_a])
        pair = (own, added)
        mover, rem = pair[mover_index], pair[1 - mover_index]
        target = int(occ0[site_b])
        before[site_a] = BRIDGE
        after[site_a] = rem
        after[site_b] = BRIDGE
        cls = classify_hop(before, lat.dims, site_a, slot, KIND_INTERSTITIAL, mover, rem)
        bridges_before, bridges_after = [int(mover == BR) + int(rem == BR)], [int(mover == BR) + int(target == BR)]
        other = HALIDES[rem]
        target = HALIDES[target]
    de = (total_energy(after, nbr, np.array(bridges_after, dtype=np.int64), J, eb)
          - total_energy(before, nbr, np.array(bridges_before, dtype=np.int64), J, eb))
    a, b = _true_kra(_family(cls))
    n = decode_class(cls)["shell_nI"]
    kra = a + b * n + (rng.normal(0.0, SIGMA_KRA[kind]) if noise else 0.0)
    de_obs = de + (rng.normal(0.0, SIGMA_DE) if noise else 0.0)
    e_i = -370.0 + rng.uniform(-1, 1)
    fwd = kra + 0.5 * de_obs
    rec = {"schema": "halide-kmc/neb-record", "schema_version": 1, "defect": kind, "site_a": int(site_a),
           "site_b": site_b, "slot": int(slot), "mover": HALIDES[mover], "env_class": int(cls),
           "env_label": class_label(cls), "barrier_forward_eV": fwd, "barrier_backward_eV": fwd - de_obs,
           "energy_initial_eV": e_i, "energy_final_eV": e_i + de_obs, "converged": True, "endpoints_converged": True,
           "mover_index": mover_index if kind == "interstitial" else None, "other": other, "target": target,
           "delta_E_eV": de_obs, "kra_barrier_eV": fwd - 0.5 * de_obs, "units": {"energy": "eV", "length": "A"},
           "provenance": {"configuration": config.describe()}}
    return rec, de


def _records_file(path: Path, kind_cell, params, defect, n_hops, theta, rng, added="same", noise=True):
    lat = HalideSublattice(SHAPE)
    if kind_cell == "random":
        config = build_configuration(lat, "random", x_I=params["x_I"], seed=params["seed"])
        request = {"structure": "random", "shape": list(SHAPE), "x_I": params["x_I"],
                   "structure_seed": params["seed"], "species": "I"}
    else:
        config = build_configuration(lat, "pure", species=params["species"])
        request = {"structure": "pure", "shape": list(SHAPE), "species": params["species"], "x_I": None,
                   "structure_seed": 0}
    records, exact = [], []
    while len(records) < n_hops:
        site_a = int(rng.integers(lat.n_sites))
        slot = int(rng.integers(8))
        mi = int(rng.integers(2))
        add = added if added != "mixed" else ("I", "Br")[int(rng.integers(2))]
        add_code = int(config.occ[site_a]) if add == "same" else HALIDES.index(add)
        rec, de = _hop_record(config, defect, site_a, slot, mi, add_code, theta, rng, noise)
        if min(rec["barrier_forward_eV"], rec["barrier_backward_eV"]) < 0:
            continue  # a saddle lies above both endpoints: E_KRA >= |dE|/2 (rare with these numbers)
        records.append(rec)
        exact.append(de)
    data = {"schema": "halide-kmc/neb-records", "schema_version": 1, "units": {"energy": "eV", "length": "A"},
            "request": request, "configuration": config.describe(), "records": records}
    path.write_text(json.dumps(data))
    return exact


def _synthetic_set(tmp_path, seed=0, n_vac=25, n_int=40, noise=True):
    """Record files of every cell in CELLS (vacancy + kick-out hops); returns (paths, theta_true, exact dE)."""
    rng = np.random.default_rng(seed)
    theta = _theta_true(load_catalog())
    paths, exact = [], []
    for j, (kind, params) in enumerate(CELLS):
        for defect, n in (("vacancy", n_vac), ("interstitial", n_int)):
            nh = n if kind == "random" else 4
            p = tmp_path / f"cell{j}_{defect}.json"
            exact += _records_file(p, kind, params, defect, nh, theta, rng,
                                   added="mixed" if defect == "interstitial" else "same", noise=noise)
            paths.append(p)
    return paths, theta, exact


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("neb")
    paths, theta, exact = _synthetic_set(tmp)
    return paths, theta, exact


# ----------------------------------------------------------------------------
# Fits recover known parameters
# ----------------------------------------------------------------------------
def test_design_matrix_is_the_rate_law_hamiltonian(tmp_path):
    """dE of every record from the fit's design (rate-law functions on the rebuilt cell) equals the brute-force
    total-energy difference of the known model: the fit uses exactly the KMC's Hamiltonian."""
    paths, theta, exact = _synthetic_set(tmp_path, seed=1, n_vac=10, n_int=10, noise=False)
    rs = load_neb_record_files(paths)
    assert len(rs.records) == len(exact)
    assert all(r.has_counts for r in rs.records)
    for r, de in zip(rs.records, exact):
        assert predict_delta_energy(r, theta) == pytest.approx(de, abs=1e-12)
        assert r.delta_E_eV == pytest.approx(de, abs=1e-9)
    # noise-free data: the fit is exact
    fit = fit_neb(rs, cv_folds=5)
    for name, v in TRUE_ENERGY.items():
        assert fit.energy.value(name)[0] == pytest.approx(v, abs=1e-9)
    for lb, f in fit.families.items():
        a, b = _true_kra(lb)
        assert f.predict(6)[0] == pytest.approx(a + 6 * b, abs=1e-9)


def test_fit_recovers_known_barriers_and_energy_model(synthetic):
    paths, _, _ = synthetic
    rs = load_neb_record_files(paths)
    fit = fit_neb(rs)
    assert fit.cv == "leave-one-out"
    zs = []
    for lb, f in fit.families.items():
        a, b = _true_kra(lb)
        if f.model == "linear":
            zs += [(f.intercept_eV - a) / f.intercept_err_eV, (f.slope_eV - b) / f.slope_err_eV]
        else:  # constant over one shell value: compare with the truth there
            n = f.shell_values[0]
            v, se = f.predict(n)
            zs.append((float(v) - (a + b * n)) / float(se))
    assert {"V:I", "V:Br"} <= set(fit.families)
    assert sum(f.model == "linear" for f in fit.families.values()) >= 6
    for name in DEFAULT_ENERGY_PARAMETERS:
        v, e = fit.energy.value(name)
        zs.append((v - TRUE_ENERGY[name]) / e)
    assert fit.energy.fitted == list(DEFAULT_ENERGY_PARAMETERS)
    zs = np.asarray(zs)
    assert np.all(np.abs(zs) < _z_bound(zs.size)), zs
    # the error scales estimate the noise levels (pooled over a defect kind)
    for f in fit.families.values():
        kind = "vacancy" if f.label.startswith("V:") else "interstitial"
        assert f.sigma_source == "residuals"
        assert 0.7 < f.sigma_eV / SIGMA_KRA[kind] < 1.4
    assert 0.7 < fit.energy.sigma_eV / SIGMA_DE < 1.4
    assert fit.energy.rmse_base_eV > 3 * fit.energy.rmse_eV  # the default energy model does not describe the data


def test_cross_validation_per_family(synthetic):
    paths, _, _ = synthetic
    fit = fit_neb(load_neb_record_files(paths))
    n_total = 0
    for lb, f in fit.families.items():
        kind = "vacancy" if lb.startswith("V:") else "interstitial"
        if f.n_records >= 2:
            assert f.cv_n == f.n_records and math.isfinite(f.cv_rmse_eV)
        else:
            assert f.cv_n == 0 and math.isnan(f.cv_rmse_eV)
        if f.n_records >= 15:  # LOO RMSE ~ sigma * sqrt(1 + p/n); 3 standard errors of an RMSE from n values
            assert abs(f.cv_rmse_eV / SIGMA_KRA[kind] - 1) < 0.2 + 3 / math.sqrt(2 * f.n_records)
        n_total += f.cv_n
    assert n_total >= len(fit.record_set.records) - len(fit.families)
    assert fit.energy.cv_n == fit.energy.n_records
    assert abs(fit.energy.cv_rmse_eV / SIGMA_DE - 1) < 0.2
    assert set(fit.energy.cv_by_family) <= set(fit.families)
    # k-fold gives the same kind of numbers
    fit5 = fit_neb(load_neb_record_files(paths), cv_folds=5, cv_seed=3)
    assert fit5.cv.startswith("5-fold")
    assert fit5.cv_rmse_kra_eV == pytest.approx(fit.cv_rmse_kra_eV, rel=0.3)
    summary = fit.summary()
    assert all("cv_rmse_eV" in f for f in summary["families"])
    json.dumps(summary)


def test_slope_modes(tmp_path):
    paths, _, _ = _synthetic_set(tmp_path, seed=4, n_vac=30, n_int=10)
    rs = load_neb_record_files(paths)
    vac = [r for r in rs.records if r.defect == "vacancy"]
    pooled = fit_kra(vac, "pooled")
    assert {f.model for f in pooled.values()} == {"linear-pooled"}
    assert pooled["V:I"].slope_eV == pooled["V:Br"].slope_eV
    # the pooled slope is the weighted mean of the true slopes, between them
    lo, hi = sorted((_true_kra("V:I")[1], _true_kra("V:Br")[1]))
    assert lo - 3 * pooled["V:I"].slope_err_eV < pooled["V:I"].slope_eV < hi + 3 * pooled["V:I"].slope_err_eV
    const = fit_kra(vac, "constant")
    assert {f.model for f in const.values()} == {"constant"} and const["V:I"].slope_eV == 0.0
    per = fit_kra(vac, "per-family", min_records_linear=10**6)  # too few records for a slope: constant
    assert {f.model for f in per.values()} == {"constant"}
    with pytest.raises(ValueError, match="valid modes"):
        fit_kra(vac, "quadratic")


def test_pure_cells_give_constants_and_flag_extrapolation(tmp_path):
    rng = np.random.default_rng(5)
    theta = _theta_true(load_catalog())
    p = tmp_path / "pureI.json"
    _records_file(p, "pure", {"species": "I"}, "vacancy", 5, theta, rng)
    rs = load_neb_records(p)
    fit = fit_neb(rs)
    assert fit.families["V:I"].model == "constant" and fit.families["V:I"].shell_values == [12]
    assert fit.energy.fitted == [] and fit.energy.status.startswith("not fitted")
    base = load_catalog()
    cat = build_catalog_from_neb(rs)
    c12, c5 = encode_class("vacancy", "I", 12), encode_class("vacancy", "I", 5)
    assert cat.class_source[c12] == "neb-fit"
    assert cat.class_source[c5] == "neb-fit-extrapolated"
    assert cat.E_KRA_eV[c5] == cat.E_KRA_eV[c12]
    assert cat.class_source[encode_class("vacancy", "Br", 0)].startswith("fallback:")
    np.testing.assert_array_equal(cat.pair_eV, base.pair_eV)
    np.testing.assert_array_equal(cat.bridge_eV, base.bridge_eV)
    cat2 = build_catalog_from_neb(rs, extrapolate=False)
    assert cat2.class_source[c5].startswith("fallback:") and cat2.E_KRA_eV[c5] == base.E_KRA_eV[c5]
    assert cat2.class_source[c12] == "neb-fit"


# ----------------------------------------------------------------------------
# The catalog
# ----------------------------------------------------------------------------
def test_catalog_validates_round_trips_and_records_provenance(synthetic, tmp_path):
    paths, _, _ = synthetic
    cat = build_catalog_from_neb(load_neb_record_files(paths), prefactor_Hz=2.0e12, prefactor_err_Hz=5e11)
    out = cat.save(tmp_path / "neb_cat.json")
    back = load_catalog(out)
    assert back.to_dict() == cat.to_dict()
    assert back.sha256() == cat.sha256()
    neb = [c for c in range(N_CLASSES) if cat.class_source[c].startswith("neb-fit")]
    assert len(neb) > 50
    assert np.all(cat.prefactor_Hz[neb] == 2.0e12)
    assert np.all(np.isfinite(cat.E_KRA_err_eV[neb]))
    for name in DEFAULT_ENERGY_PARAMETERS:
        kind, what = name.split(":")
        if kind == "pair":
            a, b = (STATE_NAMES.index(s) for s in what.split("-"))
            assert cat.pair_source[tuple(sorted((STATE_NAMES[a], STATE_NAMES[b]), key=STATE_NAMES.index))] == \
                "neb-fit-dE"
    for p in paths:
        assert cat.provenance["inputs"][str(p)] == __import__("hashlib").sha256(Path(p).read_bytes()).hexdigest()
    fit = cat.provenance["fit"]
    assert fit["prefactor"]["prefactor_Hz"] == 2.0e12
    assert {"neb-fit", "neb-fit-extrapolated", "neb-fit-dE"} <= set(cat.sources)
    assert cat.provenance["numpy"] == np.__version__


def _strong_defects(config, n_vac, n_int, seed):
    rng = np.random.default_rng(seed)
    base = place_defects(config, n_vac, n_int, seed=seed)
    bridge = base.bridge.copy()
    bridge[n_vac:, 1] = rng.integers(0, 2, size=n_int)
    return DefectSet(kinds=base.kinds, sites=base.sites, bridge=bridge)


@pytest.mark.parametrize("temperature_K", [300.0, 700.0])
def test_neb_catalog_obeys_detailed_balance(synthetic, run_kernel, temperature_K):
    """Forced forward hops with the kernel and the reverse hop's rate: ratio exp(-dE/kT) with dE from the
    brute-force total energy of the NEB catalog's fitted energy model (as in test_detailed_balance)."""
    paths, _, _ = synthetic
    cat = build_catalog_from_neb(load_neb_record_files(paths))
    assert cat.pair_source[("I", "V")] == "neb-fit-dE"
    lat = HalideSublattice((4, 4, 4))
    nbr = lat.neighbour_table
    config = build_random_mix(lat, 0.5, seed=int(temperature_K))
    state = make_state(config, _strong_defects(config, 5, 5, seed=3), cat)
    params = RateParams.from_catalog(cat, temperature_K)
    fill_rates(state, params)
    beta = 1.0 / (K_B_EV * temperature_K)
    rng = np.random.default_rng(13)
    sources, n_nonzero_de = set(), 0
    for step in range(120):
        flat = state.rates.ravel().copy()
        j = int(rng.choice(np.flatnonzero(flat > 0.0)))
        d, c = divmod(j, K.N_CHANNELS)
        k = c % 8
        cls_f = int(state.classes[d, c])
        site_a = int(state.def_site[d])
        site_b = int(nbr[site_a, k])
        e_x = total_energy(state.occ, nbr, state.bridge_n_br(), params.J, params.e_bridge)
        u2 = (flat[:j].sum() + 0.5 * flat[j]) / state.tree[1]
        status, _, _, log = run_kernel(state, params, np.array([0.5, u2]), max_events=1, log_capacity=1)
        assert status == K.STOP_EVENTS and log["to_site"][0] == site_b and log["cls"][0] == cls_f
        de = total_energy(state.occ, nbr, state.bridge_n_br(), params.J, params.e_bridge) - e_x
        c_rev = int(HOP_BACK[site_a % 3, k])
        assert int(state.classes[d, c_rev]) == cls_f
        assert flat[j] / state.rates[d, c_rev] == pytest.approx(math.exp(-beta * de), rel=RATIO_RTOL), (
            f"step {step}: class {class_label(cls_f)}, dE = {de} eV")
        sources.add(cat.class_source[cls_f])
        n_nonzero_de += abs(de) > 1e-6
    assert {"neb-fit", "neb-fit-extrapolated"} & sources
    assert n_nonzero_de > 50


# ----------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------
def _one_file(tmp_path, n=12, defect="vacancy", seed=7):
    rng = np.random.default_rng(seed)
    p = tmp_path / f"one_{defect}.json"
    _records_file(p, "random", {"x_I": 0.5, "seed": 2}, defect, n, _theta_true(load_catalog()), rng,
                  added="mixed")
    return p


def test_unconverged_failed_and_pending_records_are_skipped(tmp_path):
    p = _one_file(tmp_path)
    data = json.loads(p.read_text())
    ref = fit_neb(load_neb_records(p), cv_folds=3)
    extra = copy.deepcopy(data["records"][:3])
    extra[0]["converged"] = False
    extra[0]["barrier_forward_eV"] += 5.0  # garbage that must not enter
    extra[0]["barrier_backward_eV"] += 5.0
    extra[0]["kra_barrier_eV"] += 5.0
    extra[1]["endpoints_converged"] = False
    extra[2]["converged"] = False
    below = copy.deepcopy(data["records"][3])  # a band dipping 20 meV below its lower endpoint
    low = min(0.0, below["delta_E_eV"])
    below["image_energies_eV"] = [0.0, low - 0.02, below["barrier_forward_eV"], below["delta_E_eV"]]
    ok = copy.deepcopy(data["records"][4])  # within the 5 meV tolerance: kept
    ok["image_energies_eV"] = [0.0, min(0.0, ok["delta_E_eV"]) - 0.004, ok["barrier_forward_eV"], ok["delta_E_eV"]]
    ok["settings"] = {"refine_tolerance_eV": 0.005}
    data["records"] += extra + [below, ok, None, {"hop": {"site_a": 1, "slot": 0}, "error": "RuntimeError: lost"}]
    q = tmp_path / "with_skips.json"
    q.write_text(json.dumps(data))
    rs = load_neb_records(q)
    assert rs.skipped == {"unconverged": 2, "endpoints_unconverged": 1, "image_below_endpoint": 1, "failed": 1,
                          "pending": 1}
    assert len(rs.records) == len(data["records"]) - 6
    rs.records = rs.records[:-1]  # without the duplicate that was kept
    fit = fit_neb(rs, cv_folds=3)
    for lb, f in ref.families.items():
        assert fit.families[lb].intercept_eV == pytest.approx(f.intercept_eV, abs=1e-12)
    assert rs.sources[0]["skipped"]["unconverged"] == 2


def _mutate(data, field, value, index=0):
    rec = data["records"][index]
    if value is _DELETE:
        del rec[field]
    else:
        rec[field] = value


_DELETE = object()


@pytest.mark.parametrize("mutation, match", [
    (("barrier_forward_eV", _DELETE), "barrier_forward_eV"),
    (("barrier_forward_eV", "0.3"), "barrier_forward_eV"),
    (("energy_final_eV", float("nan")), "energy_final_eV"),
    (("env_class", 104), "env_class"),
    (("env_class", 40), "defect"),
    (("env_label", "V:I:nI=99"), "env_label"),
    (("mover", "Cl"), "mover"),
    (("converged", "yes"), "converged"),
    (("delta_E_eV", 1.0), "delta_E_eV"),
    (("kra_barrier_eV", 9.0), "kra_barrier_eV"),
    (("schema", "something-else"), "schema"),
    (("slot", 9), "slot"),
    (("site_b", 0), "site_b"),
    (("image_energies_eV", [0.0, "x"]), "image_energies_eV"),
])
def test_malformed_records_raise_naming_the_field(tmp_path, mutation, match):
    p = _one_file(tmp_path)
    data = json.loads(p.read_text())
    if mutation[0] == "mover" or mutation[0] == "env_class" and mutation[1] == 40:
        data["records"][0]["env_label"] = None
        del data["records"][0]["env_label"]
    _mutate(data, *mutation)
    with pytest.raises(ValueError, match=match):
        load_neb_records(data, origin="bad.json")


def test_malformed_files_raise(tmp_path):
    p = _one_file(tmp_path)
    data = json.loads(p.read_text())
    for change, match in ((lambda d: d.update(schema="x"), "schema"),
                          (lambda d: d.update(schema_version=2), "schema_version"),
                          (lambda d: d.update(records={}), "records"),
                          (lambda d: d.update(units={"energy": "kcal/mol"}), "units.energy")):
        bad = copy.deepcopy(data)
        change(bad)
        with pytest.raises(ValueError, match=match):
            load_neb_records(bad)
    with pytest.raises(ValueError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        load_neb_records(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_neb_records(tmp_path / "missing.json")
    # barriers that contradict the endpoint energies
    bad = copy.deepcopy(data)
    bad["records"][0]["barrier_backward_eV"] += 0.1
    with pytest.raises(ValueError, match="barrier_backward_eV"):
        load_neb_records(bad)
    # a header whose cell does not give the records' classes back
    bad = copy.deepcopy(data)
    bad["request"]["structure_seed"] = 99
    with pytest.raises(ValueError, match="configuration does not match"):
        load_neb_records(bad)


def test_records_without_a_rebuildable_cell_fit_only_kra(tmp_path, caplog):
    p = _one_file(tmp_path, n=15)
    data = json.loads(p.read_text())
    del data["request"]  # the seed of a random mix is only in the request
    rs = load_neb_records(data)
    assert not any(r.has_counts for r in rs.records)
    assert rs.notes and "energy-model fit" in rs.notes[0]
    cat = build_catalog_from_neb(rs)
    base = load_catalog()
    np.testing.assert_array_equal(cat.pair_eV, base.pair_eV)
    assert "not fitted" in cat.provenance["fit"]["energy_model"]["status"]
    assert any("Energy model of base catalog" in a for a in cat.assumptions)
    # a list of bare records works too
    rs2 = load_neb_records(data["records"])
    assert len(rs2.records) == len(rs.records)


def test_energy_parameter_selection(synthetic):
    paths, _, _ = synthetic
    rs = load_neb_record_files(paths)
    vac = [r for r in rs.records if r.defect == "vacancy"]
    from rates.neb_fit import fit_energy_model

    # vacancy hops only: the bridge terms do not enter; V-Br is aliased with I-V (only their difference enters)
    fit = fit_energy_model(vac, parameters=("pair:I-V", "pair:Br-V", "pair:I-Br", "bridge:II"))
    assert fit.fitted == ["pair:I-V", "pair:I-Br"]
    assert "not separable" in fit.not_fitted["pair:Br-V"]
    assert "does not enter" in fit.not_fitted["bridge:II"]
    with pytest.raises(ValueError, match="valid names"):
        fit_energy_model(vac, parameters=("pair:X-V",))
    # a parameter that a handful of hops would fix is not fitted
    few = fit_energy_model(vac, min_records_per_parameter=10**6)
    assert few.fitted == [] and "record(s) only" in few.not_fitted["pair:I-V"]


# ----------------------------------------------------------------------------
# Prefactors, MD precedence and the CLI
# ----------------------------------------------------------------------------
def _md_analysis(path: Path, classes: dict, temperatures=(500.0, 700.0)):
    """An MD analysis file whose hop counts follow ``{cls: (E_eV, prefactor_Hz, exposure_ps)}`` (rounded)."""
    per_t = []
    for T in temperatures:
        per_t.append({"temperature_K": T, "classes": [
            {"cls": int(c), "label": class_label(c),
             "n_hops": round(nu * math.exp(-e / (K_B_EV * T)) * tau * 1e-12), "exposure_ps": float(tau)}
            for c, (e, nu, tau) in classes.items()]})
    path.write_text(json.dumps({"schema": "halide-kmc/md-analysis", "schema_version": 1, "units": {"time": "ps"},
                                "per_temperature": per_t}))
    return path


def test_cli_rates_fit_neb_and_md_precedence(synthetic, tmp_path, capsys):
    paths, _, _ = synthetic
    out = tmp_path / "c.json"
    args = ["rates", "fit", "--out", str(out)] + [x for p in paths for x in ("--neb", str(p))]
    assert main(args + ["--prefactor-Hz", "3e12"]) == 0
    text = capsys.readouterr().out
    assert "V:I" in text and "CV RMSE" in text and "pair:I-V" in text
    cat = load_catalog(out)
    neb = [c for c in range(N_CLASSES) if cat.class_source[c].startswith("neb-fit")]
    assert np.all(cat.prefactor_Hz[neb] == 3e12)
    assert "git_revision" in cat.provenance["versions"]
    # with MD: classes fitted to MD win; the NEB prefactor is the MD one (shared-prefactor mode)
    c_md = encode_class("vacancy", "I", 6)
    md = _md_analysis(tmp_path / "md.json", {c_md: (0.30, 1e12, 1e5), encode_class("vacancy", "Br", 6): (0.35, 1e12, 1e5)})
    out2 = tmp_path / "c2.json"
    assert main(["rates", "fit", "--out", str(out2), "--md", str(md), "--mode", "shared-prefactor"]
                + [x for p in paths for x in ("--neb", str(p))]) == 0
    text = capsys.readouterr().out
    assert "precedence" in text
    cat2 = load_catalog(out2)
    assert cat2.class_source[c_md] == "md-mle-shared-prefactor"
    assert cat2.class_source[encode_class("vacancy", "I", 7)] == "neb-fit"
    nu_md = cat2.prefactor_Hz[c_md]
    assert cat2.prefactor_Hz[encode_class("vacancy", "I", 7)] == pytest.approx(nu_md, rel=1e-12)
    assert cat2.pair_source[("I", "V")] == "neb-fit-dE"
    # errors: neither input; --prefactor-Hz without --neb; bad NEB file
    assert main(["rates", "fit", "--out", str(tmp_path / "x.json")]) == 2
    assert "--neb" in capsys.readouterr().err
    assert main(["rates", "fit", "--out", str(tmp_path / "x.json"), "--md", str(md), "--prefactor-Hz", "1e12"]) == 2
    assert "needs --neb" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "halide-kmc/neb-records", "schema_version": 1,
                               "units": {"energy": "eV"}, "records": [{"defect": "vacancy"}]}))
    assert main(["rates", "fit", "--out", str(tmp_path / "x.json"), "--neb", str(bad)]) == 2
    assert "env_class" in capsys.readouterr().err


def test_prefactor_from_md_catalog_and_overlay(synthetic, tmp_path):
    from rates.fit import build_catalog_from_md, observations_from_md_analysis

    paths, _, _ = synthetic
    c1, c2 = encode_class("vacancy", "I", 6), encode_class("interstitial", "Br", 3, pair_nI=1)
    md = _md_analysis(tmp_path / "md.json", {c1: (0.30, 1e12, 1e5), c2: (0.25, 5e12, 1e4)},
                      temperatures=(400.0, 600.0, 800.0))
    obs = observations_from_md_analysis(md)
    md_cat = build_catalog_from_md(obs, mode="per-class")
    nu, err = prefactor_from_md_catalog(md_cat)
    lo, hi = sorted(md_cat.prefactor_Hz[[c1, c2]])
    assert lo * (1 - 1e-12) <= nu <= hi * (1 + 1e-12) and err > 0
    neb = build_catalog_from_neb(load_neb_record_files(paths), prefactor_catalog=md_cat)
    both = overlay_md_fit(neb, md_cat)
    for c in (c1, c2):
        assert both.class_source[c] == "md-mle"
        assert both.E_KRA_eV[c] == md_cat.E_KRA_eV[c]
    others = [c for c in range(N_CLASSES) if neb.class_source[c].startswith("neb-fit") and c not in (c1, c2)]
    assert all(both.class_source[c] == neb.class_source[c] for c in others)
    assert np.all(both.prefactor_Hz[others] == pytest.approx(nu))
    np.testing.assert_array_equal(both.pair_eV, neb.pair_eV)
    fixed = build_catalog_from_md(obs, mode="fixed-prefactor")
    with pytest.raises(ValueError, match="no class with a fitted prefactor"):
        prefactor_from_md_catalog(fixed)


# ----------------------------------------------------------------------------
# A real NEB (ReaxFF), when LAMMPS is there
# ----------------------------------------------------------------------------
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAXFF = SHARED / "potentials" / "reaxff" / "IBrPbCs.ff"


@pytest.mark.slow
def test_real_neb_records_load_and_fit(tmp_path):
    """One vacancy hop in CsPbI3 3x3x3 with the reference ReaxFF (~5 s): a real record file loads, its cell is
    rebuilt and the catalog carries its barrier (mixed cells take ~10x longer; the synthetic tests cover them)."""
    pytest.importorskip("ase", reason="the md extra (ASE) is not installed")
    if not REAXFF.is_file():
        pytest.skip(f"reference ReaxFF file not found at {REAXFF}")
    from md_reference.md.lammps_lib import lammps_available

    ok, why = lammps_available()  # a (bool, reason) tuple: the tuple itself is always truthy
    if not ok:
        pytest.skip(f"LAMMPS is not available: {why}")
    out = tmp_path / "vacancy.json"
    rc = main(["rates", "neb", "--structure", "pure", "--species", "I", "--defect", "vacancy", "--hops", "1",
               "--seed", "1", "--potential", f"reaxff:{REAXFF}", "--out", str(out)])
    assert rc == 0
    rs = load_neb_records(out)
    assert len(rs.records) == 1 and rs.records[0].has_counts
    r = rs.records[0]
    assert abs(r.delta_E_eV) < 1e-6  # mirror endpoints in a pure cell
    cat = build_catalog_from_neb(rs)
    assert cat.class_source[r.env_class] == "neb-fit"
    assert cat.E_KRA_eV[r.env_class] == pytest.approx(r.kra_eV, abs=1e-9)
    assert cat.provenance["fit"]["energy_model"]["status"].startswith("not fitted")
