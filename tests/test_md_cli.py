"""End to end: ``kmc md run`` then ``kmc md analyze`` on a tiny ReaxFF cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase", reason="the md extra (ASE) is not installed")
pytestmark = pytest.mark.md

from md_reference.md.lammps_lib import lammps_available  # noqa: E402

if not lammps_available()[0]:
    pytest.skip("LAMMPS cannot be started", allow_module_level=True)

from kmc.cli import main  # noqa: E402

REAXFF = Path(__file__).resolve().parents[1].parent / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff"


@pytest.mark.skipif(not REAXFF.is_file(), reason=f"reference ReaxFF file not found at {REAXFF}")
def test_md_run_and_analyze(tmp_path, capsys):
    out = tmp_path / "md"
    rc = main(["md", "run", "--potential", f"reaxff:{REAXFF}", "--structure", "random", "--x-I", "0.5",
               "--shape", "2", "2", "2", "--defect", "interstitial", "--where", "4", "--lattice-constant", "6.1",
               "-T", "500", "600", "--runs", "1", "--ps", "0.2", "--equil-ps", "0.02", "--dump-fs", "20",
               "--workers", "1", "--out", str(out)])
    assert rc == 0
    files = sorted(out.glob("T*_r0.h5"))
    assert [f.name for f in files] == ["T500_r0.h5", "T600_r0.h5"]
    job = json.loads((out / "job.json").read_text())
    assert job["job"]["structure"]["params"] == {"x_I": 0.5} and "git_revision" in job["versions"]
    rc = main(["md", "analyze", str(out), "--out", str(tmp_path / "a.json")])
    assert rc == 0
    s = json.loads((tmp_path / "a.json").read_text())
    assert s["schema"] == "halide-kmc/md-analysis"
    assert [e["temperature_K"] for e in s["per_temperature"]] == [500.0, 600.0]
    assert {i["file"] for i in s["inputs"]} == {str(f) for f in files}
    for r in s["runs"]:
        assert r["tracking"]["defect_kinds"] == ["interstitial"]
        assert r["n_frames"] == 11
        assert np.isfinite(r["D_eq1_cm2_s"]["X"])
        assert "bridge_statistics" in r  # a mixed cell with an interstitial
    assert "arrhenius" in s and (tmp_path / "md_plots" / "md_msd.png").is_file()
    text = capsys.readouterr().out
    assert "D_X" in text and "wrote" in text


def test_md_run_bad_input_is_a_clear_error(capsys):
    rc = main(["md", "run", "--potential", "reaxff:/no/such/file.ff", "--ps", "0.1"])
    assert rc == 2
    assert "not found" in capsys.readouterr().err
    rc = main(["md", "run", "--potential", "foo:bar"])
    assert rc == 2
    assert "valid kinds" in capsys.readouterr().err
    rc = main(["md", "run", "--potential", f"reaxff:{REAXFF}", "--structure", "random"])
    assert rc == 2
    assert "--x-I" in capsys.readouterr().err
    rc = main(["md", "analyze", "/no/such/dir"])
    assert rc == 2


@pytest.mark.skipif(not REAXFF.is_file(), reason=f"reference ReaxFF file not found at {REAXFF}")
@pytest.mark.parametrize("structure,extra,key", [
    ("heterojunction", ["--shape", "4", "2", "2", "--thickness-I", "1", "--thickness-Br", "1",
                        "--interface", "Br-rich", "--where", "interface", "--defect", "vacancy"], "layer_occupancy"),
    ("nanodomain", ["--shape", "3", "3", "3", "--domain-species", "I", "--domain-size", "1",
                    "--where", "domain", "--defect", "interstitial"], "mixing"),
])
def test_md_layer_and_mixing_analyses(structure, extra, key, tmp_path):
    out = tmp_path / structure
    rc = main(["md", "run", "--potential", f"reaxff:{REAXFF}", "--structure", structure, *extra,
               "-T", "600", "--ps", "0.1", "--equil-ps", "0", "--dump-fs", "10", "--out", str(out)])
    assert rc == 0
    rc = main(["md", "analyze", str(out), "--out", str(tmp_path / "a.json"), "--no-plots"])
    assert rc == 0
    s = json.loads((tmp_path / "a.json").read_text())
    run = s["runs"][0]
    assert key in run
    if key == "layer_occupancy":
        lo = run["layer_occupancy"]
        assert len(lo["plane"]) == 8 and sum(lo["counts"]) == run["n_frames"]
    else:
        mix = run["mixing"]
        assert len(mix["n_mixed"]) == run["n_frames"]
