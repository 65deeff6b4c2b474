"""The validation matrix: spec errors, verdicts on planted inputs, and the miniature matrix on committed records.

Planted inputs are pseudo-MD records made from KMC trajectories with exact
hop counts and exposures (:mod:`kmc.exposure`): fitted and compared through
the same path as real MD records, they must agree; with every MD hop made
1.5x longer (a planted unit error, D x 2.25) they must disagree; with too few
hops they must get no verdict.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kmc.exposure import run_with_exposure
from kmc.hoplog import replay
from kmc.simulation import Simulation
from lattice import HalideSublattice, build_pure, place_defects
from rates.catalog import load_catalog
from workflows.matrix import evaluate_diffusion, format_report, verdict_counts
from workflows.matrix_spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC_HEAD = """
[matrix]
potential = "reaxff:pot.ff"
min_hops = 50
[md]
run_ps = 400.0
[kmc]
replicas = 6
time_factor = 2.0
upscale_shape = []
"""
CASE = """
[[case]]
id = "Xi-I"
defect = "interstitial"
structure = "pure"
species = "I"
shape = [3, 3, 3]
temperatures_K = [500.0, 600.0]
compare = "diffusion"
"""


def write_spec(tmp_path, text=SPEC_HEAD + CASE):
    (tmp_path / "pot.ff").write_text("not a real force field\n")
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


def pseudo_md_records(case, T, n_runs, run_ps, seed, a=6.3, stretch=1.0):
    """Records in the layout of workflows.matrix_md.compact_record, from KMC with the default catalog."""
    cat = load_catalog("default")
    cfg = build_pure(HalideSublattice(case.shape), "I")
    recs = []
    for r in range(n_runs):
        d = place_defects(cfg, 0, 1, seed=seed + r)
        sim = Simulation(cfg, d, cat, T, seed * 100 + r, event_log=1 << 30)
        ex = run_with_exposure(sim, 10 ** 9, t_stop_s=run_ps * 1e-12)
        log = sim.event_log()
        atoms, paths = replay(cfg, d, log, a, sim.time_s)
        ev = [{"time_ps": float(t * 1e12), "defect": 0, "from_site": int(f), "to_site": int(b), "kind": 1}
              for t, f, b in zip(log["time_s"], log["from_site"], log["to_site"])]
        classes = [{"cls": int(c), "n_hops": int(ex.hop_counts[c]), "exposure_ps": float(ex.exposure_s[c] * 1e12)}
                   for c in np.flatnonzero(ex.exposure_s > 0)]
        recs.append({"run_index": r, "file": f"T{T:g}_r{r}.h5", "trajectory_sha256": f"{seed}-{T}-{r}",
                     "temperature_K": T, "duration_ps": run_ps, "lattice_constant_A": a,
                     "configuration": {"shape": list(case.shape)}, "halide_species": atoms.atom_species,
                     "tracking": {"n_hops": int(ex.n_events), "classes": classes, "events": ev,
                                  "n_complex_frames": 0},
                     "lattice_hops": {"time_ps": atoms.time * 1e12, "atom": atoms.atom,
                                      "step_A": atoms.step_A * stretch},
                     "D_eq1_cm2_s": {"X": float("nan")}, "kinisi": {}, "framework_msd_half_run_A2": 1.0})
    return recs


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    spec = load_spec(write_spec(tmp))
    case = spec.cases[0]
    out = {}
    for name, stretch in (("same", 1.0), ("stretched", 1.5)):
        records = {T: pseudo_md_records(case, T, 4, 400.0, 11, stretch=stretch) for T in case.temperatures_K}
        out[name] = evaluate_diffusion(spec, case, records, upscale=False)["rows"]
    return out


def test_planted_agreement_agrees(planted):
    rows = planted["same"]
    assert {r["fit"] for r in rows} == {"all", "held-out"}
    assert all(r["n_hops_md"] >= 50 for r in rows)
    for r in rows:
        assert r["p_value"] > 0.01, r  # 99 % level: the same model may not be called different
    assert sum(r["verdict"] == "agree" for r in rows) >= len(rows) - 1


def test_planted_unit_error_disagrees(planted):
    for r in planted["stretched"]:
        if r["species"] == "X":
            assert r["verdict"] == "disagree", r
            assert r["ratio"] == pytest.approx(2.25, rel=0.35)


def test_too_few_hops_get_no_verdict(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    case = spec.cases[0]
    records = {T: pseudo_md_records(case, T, 2, 20.0, 5) for T in case.temperatures_K}
    rows = evaluate_diffusion(spec, case, records, upscale=False)["rows"]
    assert rows and all(r["verdict"].startswith("insufficient hops") for r in rows)
    report = {"potential": {"spec": "x", "sha256": "0" * 12}, "spec": "m.toml", "spec_sha256": "0" * 12,
              "provenance": {}, "verdict_estimator": "lattice", "min_hops": 50, "lanes": [],
              "cases": {"Xi-I": {"rows": json.loads(json.dumps(rows, default=lambda o: np.asarray(o).tolist()))}}}
    assert verdict_counts(report)["insufficient hops"] == len(rows)
    assert "insufficient hops" in format_report(report)


@pytest.mark.parametrize("edit,msg", [
    (("structure = \"pure\"", "structure = \"crystal\""), "structure must be one of"),
    (("defect = \"interstitial\"", "defect = \"antisite\""), "defect must be one of"),
    (("potential = \"reaxff:pot.ff\"", "potential = \"reaxff:missing.ff\""), "not found"),
    (("temperatures_K = [500.0, 600.0]", "temperatures_K = [500.0, 500.0]"), "duplicate temperatures"),
    (("shape = [3, 3, 3]", "shape = [3, 3]"), "shape must be a list of 3"),
    (("species = \"I\"", "species = \"I\"\nx_I = 0.5"), "does not apply"),
    (("compare = \"diffusion\"", "compare = \"profile\""), "needs a heterojunction"),
    (("min_hops = 50", "min_hops = 50\nbogus = 1"), "unknown key 'bogus'"),
    (("compare = \"diffusion\"", "compare = \"diffusion\"\ntarget_hops = {550 = 80}"), "550 K is not one of"),
    (("compare = \"diffusion\"", "compare = \"diffusion\"\ntarget_hops = {hot = 80}"), "'hot' is not a temperature"),
])
def test_spec_errors_name_the_field(tmp_path, edit, msg):
    text = (SPEC_HEAD + CASE).replace(*edit)
    with pytest.raises(SpecError, match=msg):
        load_spec(write_spec(tmp_path, text))


def test_target_hops_per_temperature(tmp_path):
    """A table of target hops extends one temperature's lane only; the others keep min_hops."""
    from workflows.matrix_md import lane_status

    text = (SPEC_HEAD + CASE).replace('compare = "diffusion"', 'compare = "diffusion"\ntarget_hops = {600 = 120}')
    spec = load_spec(write_spec(tmp_path, text))
    case = spec.cases[0]
    recs = [{"tracking": {"n_hops": 60}}, {"tracking": {"n_hops": 40}}]
    assert lane_status(spec, recs, case, 500.0) == {"n_runs": 2, "n_hops": 100, "needs_run": False, "next_run": 2,
                                                    "min_hops": 50}
    st = lane_status(spec, recs, case, 600.0)
    assert st["needs_run"] and st["min_hops"] == 120
    assert case.physics_hash("x", 1) == load_spec(write_spec(tmp_path)).cases[0].physics_hash("x", 1)


def test_record_from_another_potential_is_refused(tmp_path):
    from workflows.matrix_md import load_records, record_path

    spec = load_spec(write_spec(tmp_path))
    case = spec.cases[0]
    p = record_path(tmp_path / "out", case, 500.0, 0)
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"schema": "halide-kmc/md-run-record", "physics_hash": "0123", "temperature_K": 500.0,
                             "run_index": 0}))
    with pytest.raises(SpecError, match="another potential, structure or MD settings"):
        load_records(spec, case, tmp_path / "out")


def test_miniature_matrix_on_committed_records(tmp_path):
    """`kmc compare --matrix ... --no-md` redoes the KMC side of a committed case without LAMMPS."""
    spec_path = REPO / "validation" / "matrix.toml"
    src = REPO / "validation" / "md" / "Xi-CsPbI3"
    if not (REPO.parent / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff").is_file():
        pytest.skip("the reference ReaxFF (../shared/potentials) is not beside the checkout")
    if not src.is_dir():
        pytest.skip("no committed MD records for Xi-CsPbI3")
    shutil.copytree(src, tmp_path / "md" / "Xi-CsPbI3")
    # keep the miniature small: only the lowest temperature's records
    for p in (tmp_path / "md" / "Xi-CsPbI3").glob("*.json"):
        if not p.name.startswith("T500_"):
            p.unlink()
    res = subprocess.run([sys.executable, "-m", "kmc.cli", "compare", "--matrix", str(spec_path), "--out",
                          str(tmp_path), "--no-md", "--case", "Xi-CsPbI3", "--no-plots"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    rows = rep["cases"]["Xi-CsPbI3"]["rows"]
    assert {r["species"] for r in rows} >= {"X", "defect"}
    n_hops = rows[0]["n_hops_md"]
    for r in rows:
        assert r["verdict"] in ("agree", "disagree") if n_hops >= 50 else r["verdict"].startswith("insufficient")
        assert r["D_md"] > 0 and r["D_kmc"] > 0
    assert (tmp_path / "report.md").read_text().startswith("# Validation matrix")


HETERO = """
[[case]]
id = "Xi-het"
defect = "interstitial"
structure = "heterojunction"
thickness_I = 2
thickness_Br = 2
interface = "Br-rich"
shape = [4, 2, 2]
where = "interface"
temperatures_K = [600.0]
compare = "profile"

[[case]]
id = "Xi-nano"
defect = "interstitial"
structure = "nanodomain"
domain_species = "I"
domain_size = 2
shape = [4, 4, 4]
where = "domain"
temperatures_K = [600.0]
compare = "mixing"
"""


def pseudo_frame_records(case, T, n_runs, run_ps, frame_ps, seed):
    """Frame-sampled pseudo-MD records (layer occupancy or mixing counts) from KMC with the default catalog."""
    from md_reference.analysis.observables import layer_occupancy
    from workflows.matrix_kmc import kmc_cell

    cat = load_catalog("default")
    recs = []
    for r in range(n_runs):
        config, d = kmc_cell(case, case.shape, seed + r)
        sim = Simulation(config, d, cat, T, seed * 100 + r, event_log=1 << 30)
        n_frames = int(round(run_ps / frame_ps)) + 1
        sites, mixing = [], []
        ex = None
        for k in range(n_frames):
            ex_k = run_with_exposure(sim, 10 ** 9, t_stop_s=k * frame_ps * 1e-12)
            ex = ex_k if ex is None else ex + ex_k
            sites.append(int(sim.state.def_site[0]))
            mixing.append(int(sim.mixing_counts().sum()))
        classes = [{"cls": int(c), "n_hops": int(ex.hop_counts[c]), "exposure_ps": float(ex.exposure_s[c] * 1e12)}
                   for c in np.flatnonzero(ex.exposure_s > 0)]
        rec = {"run_index": r, "file": f"T{T:g}_r{r}.h5", "trajectory_sha256": f"{case.id}-{r}", "temperature_K": T,
               "duration_ps": run_ps, "lattice_constant_A": 6.1,
               "tracking": {"n_hops": int(ex.n_events), "classes": classes, "events": [], "n_complex_frames": 0}}
        if case.compare == "profile":
            rec["layer_occupancy"] = layer_occupancy(np.array(sites), config, T)
        else:
            m = np.array(mixing)
            rec["mixing"] = {"time_ps": np.arange(n_frames) * frame_ps, "events": m - m[0]}
        recs.append(rec)
    return recs


def test_profile_and_mixing_paths_on_planted_inputs(tmp_path):
    from workflows.matrix import evaluate_mixing, evaluate_profile

    spec = load_spec(write_spec(tmp_path, SPEC_HEAD + HETERO))
    het, nano = spec.cases
    recs = {600.0: pseudo_frame_records(het, 600.0, 6, 300.0, 0.5, 3)}
    prof = evaluate_profile(spec, het, recs)["profiles"]
    assert {p["fit"] for p in prof} == {"all", "held-out"}
    p = [p for p in prof if p["fit"] == "all"][0]
    assert p["n_hops_md"] >= 50 and p["dof"] == len(p["md_fraction"]) - 1
    assert np.isclose(np.sum(p["md_fraction"]), 1) and np.isclose(np.sum(p["kmc_fraction"]), 1)
    assert p["p_value"] > 0.001, p  # the same model: the chi-square is not extreme
    assert set(p["F_I_layer_minus_Br_layer_eV"]) == {"md", "kmc"}
    recs = {600.0: pseudo_frame_records(nano, 600.0, 6, 100.0, 1.0, 4)}
    mix = evaluate_mixing(spec, nano, recs)["mixing"]
    m = [m for m in mix if m["fit"] == "all"][0]
    assert m["md_mixing_events"] >= 0 and m["kmc_mixing_events"] >= 0 and m["n_kmc"] >= 16
    assert m["verdict"] in ("agree", "disagree") or m["verdict"].startswith("insufficient")


def test_single_md_run_falls_back_to_hop_counting(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    case = spec.cases[0]
    records = {T: pseudo_md_records(case, T, 1, 1500.0, 21) for T in case.temperatures_K}
    rows = evaluate_diffusion(spec, case, records, upscale=False)["rows"]
    x = [r for r in rows if r["species"] == "X" and r["fit"] == "all"]
    assert x and all(r["verdict_estimator"].startswith("hop_count") for r in x)
    assert all(r["verdict"] in ("agree", "disagree") for r in x)  # a verdict, not "undetermined"
    assert all(r["p_value"] > 0.01 for r in x)  # same model


TWO_CASES = CASE + CASE.replace('id = "Xi-I"', 'id = "Xi-I-bis"')


def _write_records(spec, case, out, n_runs=2, run_ps=20.0):
    from common.provenance import file_sha256
    from workflows.matrix_md import RECORD_SCHEMA, record_path

    h = case.physics_hash(file_sha256(spec.potential_path), spec.seed)
    for T in case.temperatures_K:
        for rec in pseudo_md_records(case, T, n_runs, run_ps, 5):
            rec.update(schema=RECORD_SCHEMA, physics_hash=h)
            p = record_path(out, case, T, rec["run_index"])
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(rec, default=lambda o: np.asarray(o).tolist()))


def test_failed_kmc_side_is_a_row_and_case_runs_merge_into_the_report(tmp_path, monkeypatch):
    """A rate fit the MD does not support (e.g. a negative rotation barrier) becomes a named entry of the report
    instead of stopping the matrix; a run restricted with --case keeps the other cases of the previous report."""
    import workflows.matrix as WM

    spec_path = write_spec(tmp_path, SPEC_HEAD + TWO_CASES)
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    for case in spec.cases:
        _write_records(spec, case, out)
    rep = WM.run_matrix(spec_path, out, run_md=False, plots=False)
    assert set(rep["cases"]) == {"Xi-I", "Xi-I-bis"} and rep["cases"]["Xi-I-bis"]["rows"]
    bis_rows = rep["cases"]["Xi-I-bis"]["rows"]

    def boom(spec, case, records):
        raise ValueError("rotation fit gave a negative activation energy for Xi-rot:rot90:II (-0.020 eV)")

    monkeypatch.setitem(WM.EVALUATORS, "diffusion", boom)
    # only Xi-I is evaluated again (its cached result is removed so that the evaluator runs)
    (out / "kmc_cache" / "Xi-I.json").unlink()
    rep = WM.run_matrix(spec_path, out, run_md=False, plots=False, cases=["Xi-I"])
    assert rep["cases"]["Xi-I"]["status"].startswith("KMC side failed: rotation fit gave a negative")
    assert rep["cases"]["Xi-I-bis"]["rows"] == bis_rows  # carried over, not lost
    md = (out / "report.md").read_text()
    assert "## Cases without a KMC comparison" in md and "Xi-I: KMC side failed" in md
    assert json.loads((out / "report.json").read_text())["cases"]["Xi-I-bis"]["rows"] == bis_rows


def test_single_worker_lanes_take_turns(tmp_path, monkeypatch):
    """With one worker each lane gets one run in turn, so a wall-time limit does not starve the last lane."""
    import workflows.matrix_md as MM

    spec = load_spec(write_spec(tmp_path))
    calls = []
    runs = {500.0: 0, 600.0: 0}

    def fake_worker(args, max_new_runs=None):
        T = args[2]
        calls.append((T, max_new_runs))
        runs[T] += 1
        done = runs[T] >= (3 if T == 500.0 else 1)
        return {"case": args[1], "temperature_K": T, "status": "done" if done else "partial"}

    monkeypatch.setattr(MM, "_lane_worker", fake_worker)
    st = MM.run_missing_md(spec, tmp_path / "out", workers=1)
    assert calls == [(500.0, 1), (600.0, 1), (500.0, 1), (500.0, 1)]
    assert [s["status"] for s in st] == ["done", "done"]


def test_several_workers_lanes_take_turns(tmp_path, monkeypatch):
    """With two workers the lanes take turns too: a lane that needs more runs goes to the back of the queue,
    so a third lane is started before the first two are done."""
    import concurrent.futures as CF

    import workflows.matrix_md as MM

    spec = load_spec(write_spec(tmp_path))
    monkeypatch.setattr(MM, "lane_status", lambda spec, recs, case, T: {"needs_run": True})
    monkeypatch.setattr(MM, "load_records", lambda spec, case, out, pot: {float(T): [] for T in case.temperatures_K})
    monkeypatch.setattr(MM, "_potential_sha", lambda spec: "x")
    import dataclasses

    case = dataclasses.replace(spec.cases[0], temperatures_K=(500.0, 600.0, 700.0))
    spec = dataclasses.replace(spec, cases=(case,))
    order, runs = [], {500.0: 0, 600.0: 0, 700.0: 0}

    def fake_worker(args, max_new_runs=None):
        T = args[2]
        assert max_new_runs == 1
        order.append(T)
        runs[T] += 1
        done = runs[T] >= 3
        return {"case": args[1], "temperature_K": T, "status": "done" if done else "partial"}

    class Threads(CF.ThreadPoolExecutor):
        def __init__(self, max_workers, mp_context=None):
            super().__init__(max_workers=1)  # one thread: a deterministic order of the turns

    monkeypatch.setattr(MM, "_lane_worker", fake_worker)
    monkeypatch.setattr(CF, "ProcessPoolExecutor", Threads)
    st = MM.run_missing_md(spec, tmp_path / "out", workers=2)
    assert [s["status"] for s in st] == ["done", "done", "done"]
    assert runs == {500.0: 3, 600.0: 3, 700.0: 3}
    assert order[:3] == [500.0, 600.0, 700.0]  # 700 K starts before 500 K has its second run
