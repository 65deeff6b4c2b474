"""Rotation rates from successive hops: the bridge chain, the MLE, and recovery from oriented KMC runs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from kmc.hoplog import initial_atoms
from kmc.simulation import Simulation
from lattice.configurations import build_pure
from lattice.environment import N_VACANCY_CLASSES
from lattice.defects import place_defects
from lattice.orientation import LANDING, NEIGHBOUR_TYPES, REL_ALIGNED, RELATION, successive_relation
from lattice.sublattice import HalideSublattice
from rates.orientation_fit import (
    CHANNEL_FACTOR,
    OrientationFitError,
    complete_fits,
    fit_relations,
    fit_rotations,
    orient_catalog,
    relation_probabilities,
)


def test_chain_limits_and_normalisation():
    np.testing.assert_allclose(relation_probabilities(0.0, 0.0), [1.0, 0.0, 0.0], atol=1e-12)
    # fast rotations: the orientation at the hop is uniform over the 4 (L, F and the two R)
    np.testing.assert_allclose(relation_probabilities(1e5, 1e5), [0.25, 0.25, 0.5], atol=1e-4)
    for r, f in ((0.3, 0.0), (1.0, 0.2), (5.0, 3.0)):
        p = relation_probabilities(r, f)
        assert p.sum() == pytest.approx(1.0) and np.all(p > 0)
    # only flips: L and F alternate, never R
    p = relation_probabilities(0.0, 2.0)
    assert p[2] == pytest.approx(0.0, abs=1e-12)
    assert p[1] == pytest.approx(2.0 / (4.0 + 2 * 2.0))  # P(F) = f / (h + 2 f)


def test_chain_against_direct_simulation():
    """The closed form against a Gillespie run of the 4 orientations with hops at 4 Gamma."""
    r, f = 0.8, 0.3
    rng = np.random.default_rng(5)
    # orientations: 0 = L, 1 = F, 2 and 3 = R
    out = {0: (1, f, 2, r, 3, r), 1: (0, f, 2, r, 3, r), 2: (3, f, 0, r, 1, r), 3: (2, f, 0, r, 1, r)}
    n = 40000
    counts = np.zeros(3)
    for _ in range(n):
        o = 0
        while True:
            dest = out[o][0::2]
            rates = np.array(out[o][1::2])
            total = 4.0 + rates.sum()
            u = rng.random() * total
            if u < 4.0:
                counts[min(o, 2)] += 1
                break
            o = dest[int(np.searchsorted(np.cumsum(rates), u - 4.0))]
    p = relation_probabilities(r, f)
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) < 4 * sigma), (counts / n, p)


def test_fit_relations_recovers_multinomial_parameters():
    r, f = 1.2, 0.4
    p = relation_probabilities(r, f)
    rng = np.random.default_rng(11)
    counts = rng.multinomial(20000, p)
    fit = fit_relations(counts)
    assert abs(fit.r - r) < 4 * fit.r_err and abs(fit.f - f) < 4 * fit.f_err
    assert fit.r_err < 0.2 and fit.f_err < 0.2


def test_fit_relations_edge_and_bad_counts():
    fit = fit_relations([40, 0, 10])
    assert fit.f == 0.0 and fit.f_upper is not None and fit.f_upper > 0
    with pytest.raises(OrientationFitError, match="relation counts"):
        fit_relations([0, 0, 0])
    with pytest.raises(OrientationFitError, match="relation counts"):
        fit_relations([1, -1, 3])


def test_successive_relation_matches_landing_table():
    """A straight return of the mover is aligned; the kicked-out atom's aligned hops lie on the far side."""
    lat = HalideSublattice((4, 4, 4))
    a = 3 * 21 + 1
    for k1, b in enumerate(lat.neighbours(a)):
        back = int(np.nonzero(lat.neighbours(int(b)) == a)[0][0])
        assert successive_relation(a % 3, k1, True, back) == REL_ALIGNED
        t = int(NEIGHBOUR_TYPES[a % 3, k1])
        n_al = [int(np.sum(RELATION[t, LANDING[a % 3, k1], slot] == REL_ALIGNED)) for slot in range(2)]
        assert n_al == [2, 2]


# ---------------------------------------------------------------------------- recovery from KMC
def _records_from_kmc(config, defects, sim, temperature_K):
    """The MD-record fields :mod:`rates.orientation_fit` reads, from a KMC event log."""
    lat = config.lattice
    log = sim.event_log()
    site_atom, bridge_atoms, species = initial_atoms(config, defects)
    site_atom = site_atom.copy()
    bridge_atoms = bridge_atoms.copy()
    events = []
    for n in range(log["time_s"].size):
        d, a, b, sl = (int(log[k][n]) for k in ("defect", "from_site", "to_site", "slot"))
        m, stay, tgt = bridge_atoms[d, sl], bridge_atoms[d, 1 - sl], site_atom[b]
        k = int(np.nonzero(lat.neighbours(a) == b)[0][0])
        events.append({"time_ps": float(log["time_s"][n]) * 1e12, "defect": d, "kind_name": "interstitial",
                       "from_site": a, "to_site": b, "slot": k, "mover_atom": int(m), "other_atom": int(stay),
                       "target_atom": int(tgt)})
        site_atom[a] = stay
        bridge_atoms[d] = (m, tgt)
        site_atom[b] = -1
    duration_ps = sim.time_s * 1e12
    return {"temperature_K": float(temperature_K), "halide_species": species.tolist(),
            "file": "kmc", "trajectory_sha256": "-",
            "tracking": {"events": events,
                         "classes": [{"defect": "interstitial", "n_hops": len(events),
                                      "exposure_ps": 16.0 * duration_ps * len(defects)}]}}


@pytest.fixture(scope="module")
def kmc_runs(default_catalog_module):
    """Oriented KMC of dilute interstitials in CsPbI3 at two temperatures with known rotation ratios."""
    cat0 = default_catalog_module
    lat = HalideSublattice((8, 8, 8))
    config = build_pure(lat, "I")
    r_true, f_true = 0.7, 0.25
    out = {}
    for T in (500.0, 700.0):
        cat = copy.deepcopy(cat0)
        cat.interstitial_model = "oriented"
        cat.rotation_E_eV = np.full(6, 0.3)
        cat.rotation_prefactor_Hz = np.full(6, 1e12)
        defects = place_defects(config, 0, 6, where="random", seed=3)
        probe = Simulation(config, defects, cat, T, 1, event_log=0)
        gamma = float(np.max(probe.state.rates[0, :16]))  # aligned kick-out rate (pure crystal, far apart)
        k_rot = np.array([r_true * gamma] * 3 + [f_true * gamma] * 3)
        cat.rotation_prefactor_Hz = k_rot * np.exp(cat.rotation_E_eV / (8.617333262e-5 * T))
        sim = Simulation(config, defects, cat, T, 17 + int(T), event_log=1 << 40)
        sim.advance(4000.0 / (4 * gamma * len(defects)))  # about 4000 hops
        out[T] = (_records_from_kmc(config, defects, sim, T), gamma, sim)
    return out, r_true, f_true


@pytest.fixture(scope="module")
def default_catalog_module():
    from rates.catalog import load_catalog

    return load_catalog("default")


def test_fit_recovers_kmc_rotation_ratios(kmc_runs):
    runs, r_true, f_true = kmc_runs
    records = [v[0] for v in runs.values()]
    assert all(v[2].n_rotations > 0 for v in runs.values())
    fits = fit_rotations(records)
    assert set(fits) == {0}  # all bridges II
    fit = fits[0]
    n_pairs = fit.joint["n_pairs"]
    assert n_pairs > 3000
    for kind, truth in (("rot90", r_true), ("flip", f_true)):
        v = getattr(fit, kind)
        assert not v["at_lower_bound"]
        assert abs(v["ln_ratio"] - math.log(truth)) < 4 * v["ln_ratio_err"], (kind, v)
    # the aligned hop rate from the records (16-channel exposure x 4) is the kernel's
    for T, (rec, gamma, _sim) in runs.items():
        row = next(r for r in fit.per_T if r["temperature_K"] == T)
        n = rec["tracking"]["classes"][0]["n_hops"]
        g_fit = CHANNEL_FACTOR * row["gamma_free_per_ps"] * 1e12
        assert abs(g_fit - gamma) < 4 * gamma / math.sqrt(n)


def test_orient_catalog_rates_and_errors(kmc_runs, default_catalog_module):
    runs, r_true, _ = kmc_runs
    fits = fit_rotations([v[0] for v in runs.values()])
    cat = orient_catalog(default_catalog_module, fits, name="t")
    assert cat.oriented and cat.name == "t"
    nv = N_VACANCY_CLASSES
    np.testing.assert_allclose(cat.prefactor_Hz[nv:], default_catalog_module.prefactor_Hz[nv:] * 4)
    np.testing.assert_allclose(cat.prefactor_Hz[:nv], default_catalog_module.prefactor_Hz[:nv])
    assert cat.rotation_source == ["md", "fallback", "fallback"] * 2
    # the fitted rot90 rate at 700 K is r x Gamma(700 K) within its error
    rate = cat.rotation_rates_Hz(700.0)[0]
    gamma = runs[700.0][1]
    assert abs(math.log(rate / (r_true * gamma))) < 0.25
    with pytest.raises(OrientationFitError, match="already oriented"):
        orient_catalog(cat, fits)
    with pytest.raises(OrientationFitError, match="no successive"):
        complete_fits({})


# ---------------------------------------------------------------------------- kmc rates fit --interstitial-model
def _analysis_from_records(records):
    """An MD analysis file (kmc md analyze schema) from the committed validation records."""
    per_T = {}
    for r in records:
        e = per_T.setdefault(r["temperature_K"], {})
        for c in r["tracking"]["classes"]:
            d = e.setdefault(c["cls"], {"cls": c["cls"], "label": c["label"], "n_hops": 0, "exposure_ps": 0.0})
            d["n_hops"] += c["n_hops"]
            d["exposure_ps"] += c["exposure_ps"]
    return {"schema": "halide-kmc/md-analysis", "schema_version": 1,
            "per_temperature": [{"temperature_K": T, "classes": list(v.values())} for T, v in sorted(per_T.items())],
            "runs": records}


def _validation_records(case):
    import json
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "validation" / "md" / case).glob("*.json"))
    return [json.loads(f.read_text()) for f in files]


def test_rates_fit_oriented_cli_writes_v2_catalog_that_runs(tmp_path, capsys):
    import json

    from kmc.cli import main
    from rates.catalog import load_catalog

    md = tmp_path / "md.json"
    md.write_text(json.dumps(_analysis_from_records(_validation_records("Xi-CsPbI3"))))
    out = tmp_path / "cat.json"
    assert main(["rates", "fit", "--md", str(md), "--mode", "shared-prefactor", "--interstitial-model", "oriented",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Xi-rot:rot90:II" in text and "successive-hop pairs" in text
    data = json.loads(out.read_text())
    assert data["schema_version"] == 2 and data["interstitial_model"] == "oriented"
    cat = load_catalog(out)
    assert cat.oriented and cat.rotation_source[0] == "md" and cat.rotation_source[1] == "fallback"
    assert cat.provenance["orientation"]["md_sources"][0]["file"] == str(md)
    # the catalog runs: an interstitial in CsPbI3 rotates and hops
    lat = HalideSublattice((4, 4, 4))
    config = build_pure(lat, "I")
    sim = Simulation(config, place_defects(config, 0, 1, seed=2), cat, 600.0, 3)
    sim.advance(1e-9)
    assert sim.n_rotations > 0 and sim.n_events > sim.n_rotations


def test_rates_fit_oriented_cli_bad_runs(tmp_path, capsys):
    import json

    from kmc.cli import main

    recs = _validation_records("Xi-CsPbI3")[:2]
    for r in recs:
        del r["halide_species"]
    md = tmp_path / "md.json"
    md.write_text(json.dumps(_analysis_from_records(recs)))
    out = tmp_path / "cat.json"
    assert main(["rates", "fit", "--md", str(md), "--interstitial-model", "oriented", "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "runs[0]" in err and "'halide_species' missing" in err and "rerun kmc md analyze" in err
    assert not out.exists()


def test_direct_rotation_counts_cross_check(kmc_runs):
    """Tracker rotation counts (records with an orientation block) give rho = n / (2 t) and phi = n / t."""
    runs, _, _ = kmc_runs
    recs = []
    for T, (rec, _g, _s) in runs.items():
        r = copy.deepcopy(rec)
        r["orientation"] = {"rotation_counts": {"0": {"rot90": 40, "flip": 10}}, "assigned_ps": {"0": 200.0},
                            "n_unassigned_frames": 3, "n_interstitial_frames": 100,
                            "relation_counts": {"aligned": 9, "crossing": 0, "perpendicular": 1, "unknown": 0},
                            "landing_counts": {"landing": 8, "other": 2, "unknown": 0}}
        recs.append(r)
    fit = fit_rotations(recs)[0]
    d = fit.joint["direct"]["500"]
    assert d["rho_Hz"] == pytest.approx(40 / (2 * 200e-12)) and d["phi_Hz"] == pytest.approx(10 / 200e-12)
    assert d["rho_err_Hz"] == pytest.approx(math.sqrt(40) / (2 * 200e-12))
    assert d["relations"]["aligned"] == 9 and d["landing"]["other"] == 2 and d["unassigned_frames"] == 3
    assert fit_rotations([v[0] for v in runs.values()])[0].joint["direct"] == {}


def test_hop_rate_falling_with_temperature_gives_the_bounded_arrhenius(kmc_runs, default_catalog_module):
    """Hop rates that fall with T (statistics of short MD) cannot give a negative rotation barrier: the hop
    Arrhenius takes its maximum likelihood under E >= 0 (E = 0, rate = hops / time) and the source says so."""
    runs, _, _ = kmc_runs
    records = [copy.deepcopy(v[0]) for v in runs.values()]
    hot = next(r for r in records if r["temperature_K"] == 700.0)
    for c in hot["tracking"]["classes"]:
        c["exposure_ps"] *= 50.0  # the 700 K rate is now far below the 500 K one
    fits = fit_rotations(records)
    ha = fits[0].joint["hop_arrhenius"]
    assert ha["E_eV"] == 0.0 and ha["E_source"].startswith("md-arrhenius at the bound E >= 0 (unconstrained -")
    n = sum(r["tracking"]["classes"][0]["n_hops"] for r in records)
    tau = sum(r["tracking"]["classes"][0]["exposure_ps"] for r in records) * 1e-12
    assert math.isclose(ha["prefactor_Hz"], CHANNEL_FACTOR * n / tau, rel_tol=1e-9)
    cat = orient_catalog(default_catalog_module, fits, name="t")
    assert np.all(cat.rotation_E_eV >= 0) and np.all(np.isfinite(cat.rotation_prefactor_Hz))
