"""kmc rates calibrate: target tables, recovery of known parameters from independent KMC data, bad input."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from kmc.cli import main
from workflows.calibrate import CalibrationError, Evaluator, apply_parameters, calibrate, format_report, load_targets
from rates.catalog import load_catalog

HEAD = """
[calibration]
shape = [4, 4, 4]
temperatures_K = [400.0, 550.0, 700.0]
replicas = 6
events = 3000
seed = {seed}
name = "recovered"

[[parameter]]
kind = "E_KRA_shift"
defect = "vacancy"
mover = "I"
bounds = {bounds}

[[parameter]]
kind = "ln_prefactor"
defect = "vacancy"
mover = "I"
"""
TARGET = """
[[target]]
id = "V_I"
defect = "vacancy"
structure = "pure"
species = "I"
tracer = "all"
Ea = {{value = {Ea}, err = {Ea_err}, unit = "eV"}}
D_ref = {{value = {D}, err = {D_err}, unit = "cm^2/s", T_K = 500}}
"""
TRUE_X = np.array([0.06, -0.8])  # eV added to every V:I barrier; ln of the prefactor factor


def _write(tmp_path, text, name="targets.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Targets measured by independent KMC (another seed) with the true parameters, with their own errors."""
    tmp = tmp_path_factory.mktemp("cal")
    dummy = TARGET.format(Ea=0.2, Ea_err=0.01, D=1e-6, D_err=1e-7)
    spec = load_targets(_write(tmp, HEAD.format(seed=99, bounds="[-0.3, 0.3]") + dummy))
    ev = Evaluator(spec, load_catalog("default"))
    o = ev.observables(TRUE_X)["V_I"]
    return tmp, o


def test_calibration_recovers_known_parameters_from_independent_kmc(planted):
    tmp, o = planted
    text = HEAD.format(seed=5, bounds="[-0.3, 0.3]") + TARGET.format(
        Ea=o["Ea_eV"], Ea_err=o["Ea_err_eV"], D=o["D_ref"], D_err=o["D_ref_err"])
    spec = load_targets(_write(tmp, text))
    res = calibrate(spec, load_catalog("default"))
    for p, truth in zip(res["parameters"], TRUE_X):
        assert math.isfinite(p["err"]) and p["err"] > 0
        assert abs(p["value"] - truth) < 4 * p["err"], (p, truth)
    assert res["all_within_error"], res["targets"]
    cat = res["catalog"]
    base = load_catalog("default")
    from lattice.environment import N_SHELL_VALUES

    v_i = np.arange(N_SHELL_VALUES)  # V:I classes
    np.testing.assert_allclose(cat.E_KRA_eV[v_i] - base.E_KRA_eV[v_i], res["parameters"][0]["value"])
    np.testing.assert_allclose(cat.E_KRA_eV[N_SHELL_VALUES:], base.E_KRA_eV[N_SHELL_VALUES:])
    prov = cat.provenance["calibration"]
    assert prov["targets_sha256"] == spec.source_sha256 and prov["kmc"]["common_random_numbers"]
    assert {r["quantity"] for r in prov["targets"]} == {"Ea", "D_ref"}


def test_common_random_numbers_make_a_uniform_shift_exact(planted):
    """With the same streams and event counts a barrier shift dE multiplies D(T) by exp(-dE / kT) exactly."""
    tmp, _ = planted
    spec = load_targets(tmp / "targets.toml")
    ev = Evaluator(spec, load_catalog("default"))
    base = load_catalog("default")
    t = spec.targets[0]
    d0 = ev.D_per_T(apply_parameters(base, spec.parameters, [0.0, 0.0]), t)
    d1 = ev.D_per_T(apply_parameters(base, spec.parameters, [0.05, 0.3]), t)
    for (T, a, _), (_, b, _) in zip(d0, d1):
        assert b / a == pytest.approx(math.exp(0.3 - 0.05 / (8.617333262e-5 * T)), rel=1e-9)


def test_unreachable_target_is_reported_not_claimed(tmp_path, capsys):
    """Bounds that keep the barrier far from the target: the residual is written and the report says so."""
    text = HEAD.format(seed=1, bounds="[-0.01, 0.01]").replace("events = 3000", "events = 800") + \
        TARGET.format(Ea=0.5, Ea_err=0.01, D=1e-9, D_err=1e-10)
    tp = _write(tmp_path, text)
    out = tmp_path / "cal.json"
    assert main(["rates", "calibrate", str(tp), "--out", str(out), "-q"]) == 0
    rep = json.loads((tmp_path / "calibration.json").read_text())
    assert not rep["all_within_error"]
    assert rep["parameters"][0]["at_bound"]
    assert "outside their errors" in (tmp_path / "calibration.md").read_text()
    cat = load_catalog(str(out))
    assert cat.provenance["calibration"]["all_within_error"] is False
    assert main(["rates", "calibrate", str(tp), "--out", str(out), "-q"]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("edit,msg", [
    (('defect = "vacancy"\nstructure', 'defect = "antisite"\nstructure'), "defect = 'antisite' unknown"),
    (('species = "I"\ntracer', 'species = "Cl"\ntracer'), "species = 'Cl' unknown"),
    (('unit = "eV"', 'unit = "kcal"'), "Ea.unit = 'kcal' is not a unit of an energy"),
    ((', unit = "cm^2/s"', ''), "D_ref.unit missing"),
    (('unit = "cm^2/s"', 'unit = "eV"'), "not a unit of a diffusion coefficient"),
    (("err = 0.01,", ""), "Ea.err missing"),
    (('tracer = "all"', 'tracer = "Br"'), "has no Br"),
    (("temperatures_K = [400.0, 550.0, 700.0]", "temperatures_K = [400.0]"), "two or more temperatures"),
    (('kind = "ln_prefactor"', 'kind = "ln_pref"'), "kind = 'ln_pref' unknown"),
    (('mover = "I"\nbounds', 'mover = "Br"\nbounds'), "no target moves it"),
    (("seed = 1", "seed = 1\nbogus = 2"), "unknown key(s) ['bogus']"),
])
def test_bad_targets_name_the_field(tmp_path, capsys, edit, msg):
    text = (HEAD.format(seed=1, bounds="[-0.3, 0.3]") + TARGET.format(Ea=0.2, Ea_err=0.01, D=1e-6, D_err=1e-7))
    assert edit[0] in text, edit
    tp = _write(tmp_path, text.replace(*edit, 1))
    with pytest.raises(CalibrationError) as ei:
        load_targets(tp)
    assert msg in str(ei.value)
    out = tmp_path / "never.json"
    assert main(["rates", "calibrate", str(tp), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kmc: error:") and msg in err and "\n" not in err
    assert not out.exists()


def test_shipped_paper_preset_reproduces_its_recorded_targets(capsys):
    """`catalog = "paper"`: made from the shipped target table and the current default catalog, and the KMC
    run again at its parameters gives the model values its provenance records (within their KMC errors)."""
    from importlib import resources

    from workflows.calibrate import target_rows

    cat = load_catalog("paper")
    cal = cat.provenance["calibration"]
    spec = load_targets(resources.files("rates").joinpath("data/paper_targets.toml"))
    assert cal["targets_sha256"] == spec.source_sha256, "paper preset is stale: rerun kmc rates calibrate"
    base = load_catalog("default")
    assert cal["base_catalog_sha256"] == base.sha256(), "default catalog changed: rebuild the paper preset"
    x = [p["value"] for p in cal["parameters"]]
    np.testing.assert_allclose(apply_parameters(base, spec.parameters, x).E_KRA_eV, cat.E_KRA_eV)
    rows = target_rows(spec, Evaluator(spec, base).observables(x))
    assert len(rows) == len(cal["targets"]) == 20
    for r, rec in zip(rows, cal["targets"]):
        assert (r["target"], r["quantity"]) == (rec["target"], rec["quantity"])
        assert abs(r["model"] - rec["model"]) <= 3 * rec["model_err"] + 1e-12 * abs(rec["model"]), (r, rec)
    assert main(["rates", "show", "paper"]) == 0
    out = capsys.readouterr().out
    assert "catalog: paper" in out and "calibrated to paper_targets.toml" in out


def test_evaluation_budget_stops_with_the_best_point_and_says_so(tmp_path):
    text = HEAD.format(seed=1, bounds="[-0.3, 0.3]").replace("events = 3000", "events = 500\nmax_evaluations = 2") \
        + TARGET.format(Ea=0.3, Ea_err=0.01, D=1e-6, D_err=1e-7)
    res = calibrate(load_targets(_write(tmp_path, text)), load_catalog("default"))
    assert res["optimizer"]["status"] == -2 and not res["optimizer"]["converged"]
    assert "evaluation budget (2)" in res["optimizer"]["message"]
    assert res["n_evaluations"] >= 2 and all(math.isfinite(p["value"]) for p in res["parameters"])


def test_bowing_moves_mixed_shells_only(tmp_path):
    from workflows.calibrate import Parameter
    from lattice.environment import decode_class

    base = load_catalog("default")
    par = Parameter("E_KRA_bowing", "vacancy", "Br", (-0.5, 0.5))
    cat = apply_parameters(base, [par], [-0.06])
    d = cat.E_KRA_eV - base.E_KRA_eV
    for c in range(d.size):
        f = decode_class(c)
        n = f["shell_nI"]
        want = -0.06 * n * (12 - n) / 36 if (f["defect"], f["mover"]) == ("vacancy", "Br") else 0.0
        assert d[c] == pytest.approx(want, abs=1e-15), (c, f)
    text = (HEAD.format(seed=1, bounds="[-0.3, 0.3]") + TARGET.format(Ea=0.2, Ea_err=0.01, D=1e-6, D_err=1e-7))
    text = text.replace('kind = "ln_prefactor"', 'kind = "E_KRA_bowing"')
    with pytest.raises(CalibrationError, match="no random-mix vacancy target moves it"):
        load_targets(_write(tmp_path, text))


CHECK = """
[[check]]
id = "E_i"
kind = "interface_barrier"
defect = "vacancy"
interface = "Br-rich"
shape = [8, 4, 4]
thickness_I = 2
thickness_Br = 2
temperature_K = 600
time_ns = 0.2
replicas = 3
value = 130
err = 20
unit = "meV"

[[check]]
id = "mix"
kind = "mixing_events"
defect = "interstitial"
domain_species = "Br"
shape = [6, 6, 6]
domain_size = 2
temperature_K = 600
time_ns = 0.5
replicas = 3
value = 11
"""


def test_interface_barrier_of_planted_occupancies_is_exact():
    """Occupancy per site exp(-E/kT) with E = 0.13 eV on the interface planes, 0.10 in the I layer and 0 in
    the Br layer: the measured barrier is 0.13 eV whatever the I layer does."""
    from common.units import K_B_EV
    from lattice import HalideSublattice
    from lattice.configurations import build_heterojunction
    from lattice.species import BR
    from workflows.calibrate_checks import interface_barrier

    T = 600.0
    cfg = build_heterojunction(HalideSublattice((16, 4, 4)), 8, 8, "Br-rich")
    spp = cfg.lattice.sites_per_plane(cfg.axis).astype(float)
    E = np.where(np.asarray(cfg.plane_region) == BR, 0.0, 0.10)
    E[np.asarray(cfg.interface_planes)] = 0.13
    occ = spp * np.exp(-E / (K_B_EV * T)) * 3.7e-9  # any overall scale (time)
    assert interface_barrier(occ, cfg, T) == pytest.approx(0.13, abs=1e-12)
    # the planes next to an interface do not count as Br layer
    E2 = E.copy()
    iface = np.asarray(cfg.interface_planes)
    E2[(iface + 1) % E.size] = 0.5
    E2[(iface - 1) % E.size] = 0.5
    occ2 = spp * np.exp(-E2 / (K_B_EV * T))
    assert interface_barrier(occ2, cfg, T) == pytest.approx(0.13, abs=1e-12)


def test_mixing_order_compares_every_pair_of_distinct_targets():
    """Planted mixing rows: targets 0 < 11 < 36 (and a tie at 36); the KMC has the 0 and 11 rows reversed,
    the 11-36 pair c-d in order but within noise. Ties in the target are no pair."""
    from workflows.calibrate_checks import format_checks, mixing_order

    def row(cid, target, value, err):
        return {"id": cid, "kind": "mixing_events", "fitted": True, "target": target, "target_err": 1.0,
                "calibrated": {"value": value, "err": err, "z": 0.0, "within_error": True}}

    rows = [row("a", 36.0, 40.0, 1.0), row("b", 0.0, 20.0, 1.0), row("c", 11.0, 10.0, 1.0),
            row("d", 36.0, 12.0, 1.0),
            {"id": "E", "kind": "interface_barrier", "fitted": True, "target": 0.1, "target_err": 0.02,
             "calibrated": {"value": 0.1, "err": 0.01, "z": 0.0, "within_error": True}}]
    pairs = {(q["lower"], q["higher"]): q for q in mixing_order(rows)}
    assert set(pairs) == {("b", "c"), ("b", "a"), ("b", "d"), ("c", "a"), ("c", "d")}
    assert not pairs[("b", "c")]["same_order"] and pairs[("b", "c")]["resolved"]
    assert pairs[("b", "c")]["z"] == pytest.approx(-10.0 / math.sqrt(2.0))
    assert pairs[("c", "a")]["same_order"] and pairs[("c", "a")]["resolved"]
    assert pairs[("c", "d")]["same_order"] and not pairs[("c", "d")]["resolved"]  # 2 +- 1.41
    md = format_checks(rows, names=("calibrated",))
    assert "| b | c | -10.0 +- 1.4 | -7.1 | REVERSED |" in md
    assert "| c | d | +2.0 +- 1.4 | +1.4 | same (not resolved) |" in md
    assert "2 of 5 pairs in the targets' order and resolved (z >= 2); 2 reversed." in md  # b-d reversed too


def test_checks_are_measured_at_start_and_calibrated_and_reported_not_fitted(tmp_path):
    text = HEAD.format(seed=1, bounds="[-0.3, 0.3]").replace("events = 3000", "events = 500") \
        + TARGET.format(Ea=0.2, Ea_err=0.02, D=1e-6, D_err=5e-7) + CHECK
    tp = _write(tmp_path, text)
    out = tmp_path / "cal.json"
    assert main(["rates", "calibrate", str(tp), "--out", str(out), "-q"]) == 0
    rep = json.loads((tmp_path / "calibration.json").read_text())
    assert [c["id"] for c in rep["checks"]] == ["E_i", "mix"]
    for c in rep["checks"]:
        assert c["fitted"] is False
        for name in ("start", "calibrated"):
            assert math.isfinite(c[name]["value"]) and len(c[name]["replica_values"]) == 3
    # the start column is the base catalog: the default's barrier shift is zero, so a rerun of the check
    # with the default catalog gives the same numbers (same seeds)
    from workflows.calibrate_checks import run_check

    spec = load_targets(tp)
    again = run_check(spec.checks[1], "default")
    assert again["replica_values"] == rep["checks"][1]["start"]["replica_values"]
    md = (tmp_path / "calibration.md").read_text()
    assert "## Checks: measured, not fitted" in md and "| E_i | no | 130 +- 20 meV |" in md


@pytest.mark.parametrize("edit,msg", [
    (('kind = "mixing_events"', 'kind = "mixing"'), "kind must be one of"),
    (('unit = "meV"', 'unit = "K"'), "unit must be one of"),
    (('unit = "meV"\n', ''), "unit must be one of"),
    (("shape = [8, 4, 4]", "shape = [9, 4, 4]"), "check 'E_i': "),
    (('id = "mix"', 'id = "E_i"'), "duplicate id 'E_i'"),
    (("replicas = 3\nvalue = 11", "replicas = 1\nvalue = 11"), "check 'mix'.replicas must be an integer >= 2"),
    (("time_ns = 0.5", "time_ns = -1"), "check 'mix'.time_ns must be a positive number"),
    (("value = 11", "value = 11\nunit = \"eV\""), "unknown key(s) ['unit']"),
    (('defect = "interstitial"', 'defect = "antisite"'), "check 'mix'.defect"),
])
def test_bad_checks_name_the_field(tmp_path, capsys, edit, msg):
    text = HEAD.format(seed=1, bounds="[-0.3, 0.3]") + TARGET.format(Ea=0.2, Ea_err=0.01, D=1e-6, D_err=1e-7) + CHECK
    assert edit[0] in text, edit
    tp = _write(tmp_path, text.replace(*edit, 1))
    out = tmp_path / "never.json"
    assert main(["rates", "calibrate", str(tp), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kmc: error:") and msg in err and "\n" not in err, err
    assert not out.exists()


CE_HEAD = """
[calibration]
shape = [4, 4, 4]
temperatures_K = [400.0, 700.0]
replicas = 3
events = 500
seed = {seed}
ce_cutoffs_a = [1.01, 1.01, 1.01]

[[parameter]]
kind = "ce_defect"
defect = "vacancy"
name = "asym"
terms = {{1 = -1.0, 10 = 1.0}}
bounds = [-0.04, 0.04]
"""
CE_CHECK = """
[[check]]
id = "E_i"
kind = "interface_barrier"
defect = "vacancy"
interface = "Br-rich"
shape = [8, 4, 4]
thickness_I = 2
thickness_Br = 2
temperature_K = 600
time_ns = 1.0
replicas = 8
value = {value}
err = {err}
unit = "eV"
fit = true
"""


def test_ce_defect_parameter_sets_the_local_orbit_terms(tmp_path):
    from lattice.cluster_expansion import local_orbits_of

    spec = load_targets(_write(tmp_path, CE_HEAD.format(seed=1) + CE_CHECK.format(value=0.1, err=0.02)))
    (par,) = spec.parameters
    assert par.label == "ce_defect:vacancy:asym" and par.terms == ((1, -1.0), (10, 1.0))
    base = load_catalog("default")
    cat = apply_parameters(base, spec.parameters, [0.012])
    ce = cat.cluster_expansion
    want = np.zeros(len(local_orbits_of((1.01, 1.01, 1.01))))
    want[1], want[10] = -0.012, 0.012
    np.testing.assert_array_equal(ce.defect_eV["vacancy"], want)
    assert not np.any(ce.defect_eV["interstitial"]) and not np.any(ce.host_eci_eV)
    assert base.cluster_expansion is None  # the base is not changed
    np.testing.assert_array_equal(cat.E_KRA_eV, base.E_KRA_eV)
    # in a pure crystal every site has the same defect terms: the term moves no pure-cell energy difference,
    # so a table with only pure targets is refused
    text = CE_HEAD.format(seed=1) + TARGET.format(Ea=0.2, Ea_err=0.01, D=1e-6, D_err=1e-7)
    with pytest.raises(CalibrationError, match="no random-mix vacancy target or fitted vacancy check moves it"):
        load_targets(_write(tmp_path, text))


def test_fitted_interface_check_recovers_a_known_ce_term(tmp_path):
    """The interface barrier measured by independent KMC (another seed) at a known defect term is fitted back:
    the recovered value lies within 3 of its errors of the true one, and the barrier moved by the term."""
    from workflows.calibrate_checks import run_check

    true = 0.012
    spec_true = load_targets(_write(tmp_path, CE_HEAD.format(seed=77) + CE_CHECK.format(value=0.1, err=0.02),
                                    "true.toml"))
    cat_true = apply_parameters(load_catalog("default"), spec_true.parameters, [true])
    cat_true.save(tmp_path / "true.json")
    meas = run_check(spec_true.checks[0], str(tmp_path / "true.json"))
    zero = run_check(spec_true.checks[0], "default")
    assert meas["value"] - zero["value"] > 3 * math.hypot(meas["err"], zero["err"])  # the term raises E_i
    spec = load_targets(_write(tmp_path, CE_HEAD.format(seed=5) + CE_CHECK.format(value=meas["value"],
                                                                                  err=meas["err"])))
    res = calibrate(spec, load_catalog("default"))
    (p,) = res["parameters"]
    assert math.isfinite(p["err"]) and p["err"] > 0
    assert abs(p["value"] - true) <= 3 * p["err"], p
    assert res["fitted_checks"][0]["id"] == "E_i" and res["dof"] == 0
    assert res["catalog"].cluster_expansion.defect_eV["vacancy"][10] == pytest.approx(p["value"])


def test_stages_fit_in_order_with_the_others_held(tmp_path):
    text = (HEAD.format(seed=1, bounds="[-0.3, 0.3]").replace("events = 3000", "events = 500")
            .replace("seed = 1\n", "seed = 1\nce_cutoffs_a = [1.01, 1.01, 1.01]\n")
            + CE_HEAD.format(seed=1).split("ce_cutoffs_a = [1.01, 1.01, 1.01]\n")[1]
            + TARGET.format(Ea=0.25, Ea_err=0.02, D=1e-6, D_err=5e-7)
            + CE_CHECK.format(value=0.1, err=0.03).replace("replicas = 8", "replicas = 3")
            .replace("time_ns = 1.0", "time_ns = 0.3")
            + """
[[stage]]
name = "pure D"
parameters = ["E_KRA_shift:vacancy:I", "ln_prefactor:vacancy:I"]
targets = ["V_I"]
max_evaluations = 8

[[stage]]
name = "interface"
parameters = ["ce_defect:vacancy:asym"]
targets = ["E_i"]
max_evaluations = 6
""")
    spec = load_targets(_write(tmp_path, text))
    assert [s.name for s in spec.stages] == ["pure D", "interface"] and spec.stages[1].checks == ("E_i",)
    res = calibrate(spec, load_catalog("default"))
    st = res["optimizer"]["stages"]
    assert [s["parameters"] for s in st] == [["E_KRA_shift:vacancy:I", "ln_prefactor:vacancy:I"],
                                             ["ce_defect:vacancy:asym"]]
    assert st[1]["n_evaluations"] <= 6 + 2  # its budget, plus the error Jacobian at its end
    cov = np.array(res["covariance"])
    assert np.all(np.isnan(cov[:2, 2])) and np.all(np.isnan(cov[2, :2]))  # block-diagonal by stage
    # the pure-cell D does not depend on the vacancy's defect terms: the stage-1 fit stands after stage 2
    v = {p["label"]: p["value"] for p in res["parameters"]}
    x1 = [v["E_KRA_shift:vacancy:I"], v["ln_prefactor:vacancy:I"], 0.0]
    ev = Evaluator(spec, load_catalog("default"))
    assert ev.observables(x1, check_ids=())["V_I"]["Ea_eV"] == pytest.approx(res["targets"][0]["model"], abs=1e-12)
    md = format_report(res, spec)
    assert "| pure D |" in md and "| interface |" in md


@pytest.mark.parametrize("edit,msg", [
    (('name = "asym"\n', ''), "name missing"),
    (("terms = {1 = -1.0, 10 = 1.0}", "terms = {99 = 1.0}"), "local orbit 99 does not exist"),
    (("terms = {1 = -1.0, 10 = 1.0}", "terms = {one = 1.0}"), "key 'one' is not a local orbit"),
    (("ce_cutoffs_a = [1.01, 1.01, 1.01]\n", ""), "needs calibration.ce_cutoffs_a"),
    (("ce_cutoffs_a = [1.01, 1.01, 1.01]", "ce_cutoffs_a = [-1]"), "calibration.ce_cutoffs_a"),
    (("fit = true", "fit = 1"), "fit must be true or false"),
    (("fit = true", "fit = false"), "no [[target]] (and no [[check]] with fit = true)"),
    (('kind = "ce_defect"', 'kind = "ce_defect"\nmover = "I"'), "mover does not apply"),
])
def test_bad_ce_parameters_and_fitted_checks_name_the_field(tmp_path, edit, msg):
    text = CE_HEAD.format(seed=1) + CE_CHECK.format(value=0.1, err=0.02)
    assert edit[0] in text, edit
    with pytest.raises(CalibrationError, match=re.escape(msg)):
        load_targets(_write(tmp_path, text.replace(*edit, 1)))


@pytest.mark.parametrize("stage,msg", [
    ('parameters = ["E_KRA_shift:vacancy:Br"]', "is no parameter"),
    ('parameters = ["ce_defect:vacancy:asym"]\ntargets = ["nope"]', "'nope' is no target or check id"),
    ('parameters = []', "must list parameter labels"),
    ('parameters = ["ce_defect:vacancy:asym"]\nbogus = 1', "unknown key(s) ['bogus']"),
    ('parameters = ["ce_defect:vacancy:asym"]\nmax_evaluations = 0', "max_evaluations must be an integer >= 1"),
])
def test_bad_stages_name_the_field(tmp_path, stage, msg):
    text = CE_HEAD.format(seed=1) + CE_CHECK.format(value=0.1, err=0.02) + "\n[[stage]]\n" + stage + "\n"
    with pytest.raises(CalibrationError, match=re.escape(msg)):
        load_targets(_write(tmp_path, text))
    two = CE_HEAD.format(seed=1) + CE_CHECK.format(value=0.1, err=0.02) + """
[[parameter]]
kind = "ce_defect"
defect = "vacancy"
name = "sym"
terms = {4 = 1.0}
[[check]]
id = "E_i2"
kind = "interface_barrier"
defect = "vacancy"
interface = "I-rich"
shape = [8, 4, 4]
thickness_I = 2
thickness_Br = 2
temperature_K = 600
time_ns = 0.2
value = 0
err = 0.02
unit = "eV"
fit = true
[[stage]]
parameters = ["ce_defect:vacancy:asym"]
targets = ["E_i"]
"""
    with pytest.raises(CalibrationError, match=re.escape("['ce_defect:vacancy:sym'] are in no [[stage]]")):
        load_targets(_write(tmp_path, two))
