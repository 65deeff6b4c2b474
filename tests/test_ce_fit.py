"""Cluster-expansion fit (rates.ce_fit): features = the energy function, recovery of known parameters, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lattice import HalideSublattice, build_heterojunction, build_random_mix
from lattice.cluster_expansion import ClusterExpansion, kernel_tables, local_orbits_of, orbits_of, total_energy_ce
from lattice.species import BRIDGE, VACANCY
from rates.ce_fit import (
    FORMAT,
    TrainingSetError,
    check_training_set,
    features,
    fit_cluster_expansion,
    parameter_names,
)

CUT = (1.01,)


def _truth(seed=0, cut=CUT):
    rng = np.random.default_rng(seed)
    n_orb, n_loc = len(orbits_of(cut)), len(local_orbits_of(cut))
    host = rng.normal(0, 0.02, n_orb)
    dv = {"vacancy": rng.normal(0, 0.05, n_loc), "interstitial": rng.normal(0, 0.05, n_loc)}
    dv["vacancy"][0] = 1.5  # defect constants
    dv["interstitial"][0] = 0.8
    return ClusterExpansion(cut, host, dv, E0_eV=-12.0), np.array([0.03, 0.07])


def _energy(model, bridge, occ, dims, nbr):
    nbr = np.asarray(nbr)
    return (model.E0_eV * np.prod(dims) + total_energy_ce(occ, dims, kernel_tables(model))
            + bridge[0] * np.sum(nbr == 1) + bridge[1] * np.sum(nbr == 2))


def _cells(n, seed, dims=(4, 3, 3)):
    """Host mixes, heterojunctions and cells with one vacancy or one bridge on random sites."""
    rng = np.random.default_rng(seed)
    lat = HalideSublattice(dims)
    out = []
    for i in range(n):
        if i % 5 == 4:
            occ = build_heterojunction(lat, 2, 2, interface=("I-rich", "Br-rich")[i % 2]).occ.astype(np.int64)
        else:
            occ = build_random_mix(lat, rng.uniform(0.1, 0.9), seed=int(rng.integers(1 << 30))).occ.astype(np.int64)
        group, nbr = "host", []
        if i % 3 == 1:
            occ[rng.integers(occ.size)] = VACANCY
            group = "vacancy"
        elif i % 3 == 2:
            occ[rng.integers(occ.size)] = BRIDGE
            nbr = [int(rng.integers(3))]
            group = "interstitial"
        out.append((group, list(dims), occ, nbr))
    return out


def test_features_times_parameters_is_the_energy():
    model, bridge = _truth(1, cut=(1.3, 1.01))
    theta = np.concatenate([[model.E0_eV], model.host_eci_eV, model.defect_eV["vacancy"],
                            model.defect_eV["interstitial"], bridge])
    assert theta.size == len(parameter_names(model.cutoffs_a))
    for group, dims, occ, nbr in _cells(12, 2, dims=(4, 4, 3)):
        want = _energy(model, bridge, occ, dims, nbr)
        assert features(occ, dims, nbr, model.cutoffs_a) @ theta == pytest.approx(want, abs=1e-9)


def _training_set(model, bridge, n, seed, noise_eV_per_cell):
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i, (group, dims, occ, nbr) in enumerate(_cells(n, seed)):
        e = _energy(model, bridge, occ, dims, nbr) + rng.normal(0, noise_eV_per_cell)
        rows.append({"id": f"c{i}", "group": group, "shape": dims, "occ": occ.tolist(), "bridge_n_br": nbr,
                     "energy_eV": float(e)})
    return check_training_set({"format": FORMAT, "version": 1, "units": {"energy": "eV"}, "structures": rows})


def test_fit_recovers_known_parameters():
    """Synthetic energies from a known model plus noise: the fit recovers the host ECIs and defect terms
    within 4 bootstrap standard deviations and the CV error matches the noise."""
    model, bridge = _truth(3)
    noise = 0.002
    ts = _training_set(model, bridge, 240, seed=4, noise_eV_per_cell=noise)
    fit, rep = fit_cluster_expansion(ts, CUT, method="least-squares", n_splits=5, seed=0, ensemble_size=40)
    assert not [u for u in rep["undetermined"] if "host" in u]
    dev_host = np.abs(fit.host_eci_eV[1:] - model.host_eci_eV[1:]) / fit.host_err_eV[1:]
    assert np.all(dev_host < 4.0), dev_host
    for kind in ("vacancy", "interstitial"):
        got, err, want = fit.defect_eV[kind][1:], fit.defect_err_eV[kind][1:], model.defect_eV[kind][1:]
        assert np.all(np.abs(got - want) < 4.0 * err + 1e-6), (kind, got, want, err)
    # CV error per cell close to the noise (36 cells of 4x3x3: noise / n_cells per cell in the weighted fit)
    for g, r in rep["groups"].items():
        assert 0.5 * noise < r["cv_rmse_eV_per_cell"] < 2.0 * noise, (g, r)
    assert fit.x_I_range[0] < 0.3 and fit.x_I_range[1] > 0.7


def test_fit_needs_enough_cells():
    model, bridge = _truth(5)
    ts = _training_set(model, bridge, 6, seed=6, noise_eV_per_cell=0.0)
    with pytest.raises(ValueError, match="cannot determine"):
        fit_cluster_expansion(ts, CUT)


def test_ce_fit_cli_writes_a_v3_catalog(tmp_path, capsys):
    from kmc.cli import main
    from rates.catalog import load_catalog

    model, bridge = _truth(7)
    ts = _training_set(model, bridge, 120, seed=8, noise_eV_per_cell=0.001)
    doc = {"format": FORMAT, "version": 1, "units": {"energy": "eV"},
           "structures": [{**s, "occ": s["occ"].tolist(), "bridge_n_br": s["bridge_n_br"].tolist()}
                          for s in ts["structures"]]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "cat.json"
    assert main(["rates", "ce-fit", str(path), "--cutoffs", "1.01", "--method", "least-squares",
                 "--out", str(out)]) == 0
    cat = load_catalog(out)
    assert cat.cluster_expansion is not None and cat.to_dict()["schema_version"] == 3
    assert cat.provenance["generator"] == "kmc rates ce-fit" and "train.json" in cat.provenance["inputs"]
    np.testing.assert_allclose(cat.cluster_expansion.host_eci_eV[1:], model.host_eci_eV[1:], atol=3e-3)
    assert main(["rates", "ce-fit", str(path), "--cutoffs", "1.01", "--out", str(out)]) == 2  # exists
    capsys.readouterr()
    assert main(["rates", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "cluster expansion: cutoffs [1.01] a" in shown and "local orbit" in shown


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(format="x"), "format"),
    (lambda d: d["structures"][1].update(shape=[2, 2]), "structures\\[1\\].shape"),
    (lambda d: d["structures"][2].update(occ=[0, 1]), "structures\\[2\\].occ"),
    (lambda d: d["structures"][0].update(energy_eV="nan"), "structures\\[0\\].energy_eV"),
    (lambda d: d.update(units={"energy": "kcal/mol"}), "units.energy"),
])
def test_bad_training_set_is_a_clear_error(tmp_path, edit, match, capsys):
    from kmc.cli import main

    model, bridge = _truth(9)
    ts = _training_set(model, bridge, 8, seed=10, noise_eV_per_cell=0.0)
    doc = {"format": FORMAT, "version": 1, "units": {"energy": "eV"},
           "structures": [{**s, "occ": s["occ"].tolist(), "bridge_n_br": s["bridge_n_br"].tolist()}
                          for s in ts["structures"]]}
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TrainingSetError, match=match):
        check_training_set(json.loads(path.read_text()), str(path))
    assert main(["rates", "ce-fit", str(path), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kmc: error:" in err


def test_ce_report_profiles_and_mixing_out_of_sample(tmp_path):
    """Cells laid out as kmc rates ce-data does (mixes, junction hosts, a vacancy on every plane): the CV
    predictions of a model fitted to exact energies reproduce the per-plane profile and the mixing enthalpy."""
    from kmc.cli import main
    from rates.ce_fit import ce_report

    model, bridge = _truth(11)
    rng = np.random.default_rng(12)
    rows = []
    dims = [6, 3, 3]
    lat = HalideSublattice(tuple(dims))
    for x in (0.0, 0.25, 0.5, 0.75, 1.0):
        for k in range(1 if x in (0.0, 1.0) else 6):
            occ = build_random_mix(lat, x, seed=int(rng.integers(1 << 30))).occ.astype(np.int64)
            rows.append({"id": f"mix-x{x:.3f}-s{k}", "group": "host", "shape": dims, "occ": occ, "x_I": x,
                         "bridge_n_br": []})
            for j in range(4):
                o = occ.copy()
                o[rng.integers(o.size)] = VACANCY
                rows.append({"id": f"mix-x{x:.3f}-s{k}-v{j}", "group": "vacancy", "shape": dims, "occ": o,
                             "bridge_n_br": []})
    for itf in ("I-rich", "Br-rich"):
        occ = build_heterojunction(lat, 3, 3, interface=itf).occ.astype(np.int64)
        rows.append({"id": f"het-{itf}", "group": "host", "shape": dims, "occ": occ, "bridge_n_br": []})
        planes = lat.plane_index(0)
        for p in range(lat.n_planes(0)):
            site = int(rng.choice(np.flatnonzero(planes == p)))
            o = occ.copy()
            o[site] = VACANCY
            rows.append({"id": f"het-{itf}-v{site}", "group": "vacancy", "shape": dims, "occ": o, "bridge_n_br": [],
                         "host_id": f"het-{itf}", "plane_x": p})
    for r in rows:
        r["energy_eV"] = float(_energy(model, bridge, r["occ"], dims, r["bridge_n_br"]) + rng.normal(0, 1e-4))
    ts = check_training_set({"format": FORMAT, "version": 1, "units": {"energy": "eV"}, "structures": rows})
    fit, _ = fit_cluster_expansion(ts, CUT, method="least-squares", ensemble_size=10)
    rep = ce_report(ts, fit)
    prof = [p for p in rep["profiles"] if p["defect"] == "vacancy"]
    assert len(prof) == 2 and all(len(p["planes"]) == 12 for p in prof)
    for p in prof:
        assert p["rmse_eV"] < 2e-3
        assert max(p["potential_eV"]) > 0.02  # the truth has a profile to reproduce
    assert rep["mixing_rmse_meV_per_site"] < 0.05
    assert {c["interface"] for c in rep["contrast"]} == {"I-rich", "Br-rich"}
    for t in rep["interface_terms"]:  # out-of-sample interface terms follow the exact ones
        for lay in ("I layer", "Br layer"):
            assert t["ce_cv_eV"][lay] == pytest.approx(t["potential_eV"][lay], abs=3e-3)
        assert t["equivalent_site_scatter_eV"] is None  # one site per plane: no equivalent pairs
    # the command writes both files
    doc = {"format": FORMAT, "version": 1, "units": {"energy": "eV"},
           "structures": [{**r, "occ": r["occ"].tolist()} for r in rows]}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    assert main(["rates", "ce-fit", str(tmp_path / "t.json"), "--cutoffs", "1.01", "--method", "least-squares",
                 "--out", str(tmp_path / "c.json")]) == 0
    assert main(["rates", "ce-report", str(tmp_path / "t.json"), str(tmp_path / "c.json"),
                 "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "ce_report.md").read_text().count("## vacancy across") == 2
