"""kmc compare: KMC against an MD analysis summary."""

from __future__ import annotations

import json

import pytest

from kmc.cli import main
from kmc.compare import compare, load_md_analysis, md_cell


def _fake_md_analysis(path, D_by_T: dict, shape=(3, 3, 3), a=6.3, n_hops=500):
    """An md-analysis summary of a pure CsPbI3 cell with one interstitial and given D (mean, sem)."""
    runs = [{"temperature_K": T, "lattice_constant_A": a, "run_index": 0,
             "configuration": {"kind": "pure", "shape": list(shape), "n_sites": 3 * shape[0] * shape[1] * shape[2],
                               "x_I": 1.0, "axis": 0, "species": "I"},
             "tracking": {"defect_kinds": ["interstitial"]}} for T in D_by_T]
    per_T = [{"temperature_K": T,
              "D_eq1_cm2_s": {"X": {"mean": m, "sem": e, "n": 4}, "I": {"mean": m, "sem": e, "n": 4},
                              "Br": {"mean": None, "sem": None, "n": 0}},
              "D_defect_cm2_s": {"mean": None, "sem": None, "n": 0}, "n_hops": n_hops} for T, (m, e) in D_by_T.items()]
    path.write_text(json.dumps({"schema": "halide-kmc/md-analysis", "schema_version": 1,
                                "per_temperature": per_T, "runs": runs}))
    return path


def test_compare_agrees_with_itself_and_detects_a_wrong_catalog(tmp_path):
    # "MD" numbers made by the KMC with the default catalog (the same cell), then compared
    # with the default catalog (must agree) and with a catalog whose barriers are 0.1 eV higher.
    ref = compare(_fake_md_analysis(tmp_path / "seed.json", {500.0: (1.0, 0.1), 600.0: (1.0, 0.1)}),
                  ["default"], tmp_path / "ref", events=20_000, replicas=6, seed=11)
    D = {r["temperature_K"]: (r["D_kmc"], r["D_kmc_err"]) for r in ref["rows"] if r["species"] == "X"}
    md = _fake_md_analysis(tmp_path / "md.json", D)
    from rates import load_catalog

    cat = load_catalog("default")
    cat.E_KRA_eV = cat.E_KRA_eV + 0.1
    cat.name = "shifted"
    cat.save(tmp_path / "shifted.json")
    res = compare(md, ["default", str(tmp_path / "shifted.json")], tmp_path / "cmp", events=20_000, replicas=6, seed=12)
    rows = [r for r in res["rows"] if r["species"] == "X"]
    same = [r for r in rows if r["catalog"] != "shifted"]
    wrong = [r for r in rows if r["catalog"] == "shifted"]
    # Independent seeds, both sides with their standard errors: |z| <= 3 for the same model.
    assert all(abs(r["z"]) <= 3 for r in same), same
    assert all(r["verdict"] == "agree" for r in same), same
    # exp(0.1 eV / kT) >= 6.9 at 600 K: far outside the combined error.
    assert all(r["agree"] is False and r["ratio"] > 3 for r in wrong), wrong
    assert (tmp_path / "cmp" / "compare.json").is_file()


def test_compare_bad_input(tmp_path, capsys):
    with pytest.raises(ValueError, match="not found"):
        load_md_analysis(tmp_path / "none.json")
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="kmc md analyze"):
        load_md_analysis(p)
    assert main(["compare", str(p), "-c", "default", "--out", str(tmp_path / "o")]) == 2
    assert "kmc md analyze" in capsys.readouterr().err


def test_md_cell_reads_the_set_up(tmp_path):
    md = json.loads(_fake_md_analysis(tmp_path / "m.json", {500.0: (1e-5, 1e-6)}, shape=(4, 4, 4), a=6.36).read_text())
    cell = md_cell(md)
    assert cell["shape"] == [4, 4, 4] and cell["interstitials"] == 1 and cell["vacancies"] == 0
    assert cell["lattice_constant_A"] == pytest.approx(6.36) and cell["params"] == {"species": "I"}


def test_zero_D_is_kept_and_few_hops_get_no_verdict(tmp_path):
    md = _fake_md_analysis(tmp_path / "m.json", {500.0: (0.0, 1e-6), 600.0: (2e-5, 1e-6)}, n_hops=3)
    res = compare(md, ["default"], tmp_path / "c", events=2000, replicas=3, seed=1)
    rows = [r for r in res["rows"] if r["species"] == "X"]
    assert [r["temperature_K"] for r in rows] == [500.0, 600.0]  # the zero D is a row, not dropped
    assert rows[0]["D_md"] == 0.0 and rows[0]["ratio"] == 0.0
    assert all(r["verdict"] == "insufficient hops: 3 < 50" and r["agree"] is None for r in rows)
