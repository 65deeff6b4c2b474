"""kmc rates ce-data: the cell plan and a resumable relaxation run with the reference ReaxFF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lattice import HalideSublattice
from lattice.species import BRIDGE, VACANCY
from md_reference.ce_data import generate, plan
from rates.ce_fit import check_training_set

REAXFF = Path(__file__).resolve().parents[1].parent / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff"
needs_reaxff = pytest.mark.skipif(not REAXFF.is_file(), reason=f"reference ReaxFF file not found at {REAXFF}")


def test_plan_covers_every_junction_plane_hosts_first():
    tasks = plan()
    ids = [t["id"] for t in tasks]
    assert len(ids) == len(set(ids))
    first_defect = next(i for i, t in enumerate(tasks) if "defect" in t)
    assert all("defect" not in t for t in tasks[:first_defect]) and all("defect" in t for t in tasks[first_defect:])
    lat = HalideSublattice((6, 3, 3))
    planes = lat.plane_index(0)
    for itf in ("I-rich", "Br-rich"):
        for kind in ("vacancy", "interstitial"):
            got = sorted(int(planes[t["defect"]["site"]]) for t in tasks
                         if t.get("host_id") == f"het-{itf}" and t["defect"]["kind"] == kind)
            assert got == list(range(lat.n_planes(0)))
    assert plan() == tasks  # deterministic: a rerun finds the same ids


@needs_reaxff
def test_generate_relaxes_resumes_and_refuses_another_potential(tmp_path):
    host = {"id": "h", "host": {"kind": "mix", "x_I": 0.5, "seed": 0, "shape": [3, 3, 3]}}
    vac = {"id": "h-v0", "host": host["host"], "host_id": "h", "defect": {"kind": "vacancy", "site": 0}}
    inter = {"id": "h-i5", "host": host["host"], "host_id": "h", "defect": {"kind": "interstitial", "site": 5,
                                                                           "added": "Br"}}
    out = tmp_path / "t.json"
    pot = f"reaxff:{REAXFF}"
    doc = generate(out, pot, tasks=[host, vac, inter], max_steps=40, fmax=0.05, progress=False)
    assert [s["id"] for s in doc["structures"]] == ["h", "h-v0", "h-i5"] and not doc["failed"]
    ts = check_training_set(json.loads(out.read_text()), str(out))
    rows = {s["id"]: s for s in ts["structures"]}
    assert rows["h-v0"]["occ"][0] == VACANCY and rows["h-i5"]["occ"][5] == BRIDGE
    assert rows["h-i5"]["bridge_n_br"].tolist() in ([1], [2])
    # defect cells at the relaxed host cell; the host's cell lengths moved off the Vegard guess
    np.testing.assert_allclose(rows["h-v0"]["cell_A"], rows["h"]["cell_A"])
    assert np.max(np.abs(np.asarray(rows["h"]["cell_A"]) - 3 * (0.5 * 6.29 + 0.5 * 5.875))) > 1e-3
    assert all(np.isfinite(s["energy_eV"]) and s["steps"] > 0 for s in ts["structures"])
    again = generate(out, pot, tasks=[host, vac, inter], max_steps=40, fmax=0.05, progress=False)
    assert len(again["structures"]) == 3  # nothing recomputed
    with pytest.raises(ValueError, match="potential"):
        generate(out, "reaxff:" + str(REAXFF.parent / "IPbCs.ff"), tasks=[host], progress=False)
