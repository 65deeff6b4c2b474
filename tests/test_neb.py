"""NEB of halide-defect hops: known barriers, hop geometry and classes, mirror-symmetric endpoints, ReaxFF smoke."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase", reason="the md extra (ASE) is not installed")

from ase import Atoms  # noqa: E402
from ase.calculators.calculator import Calculator, all_changes  # noqa: E402

from lattice import HalideSublattice, build_heterojunction, build_pure, build_random_mix  # noqa: E402
from lattice.environment import decode_class  # noqa: E402
from lattice.species import I  # noqa: E402
from md_reference.neb import band as N  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAXFF = SHARED / "potentials" / "reaxff" / "IBrPbCs.ff"
DFT_PATHS = SHARED / "reference" / "dft_migration_paths"


def _lammps_status() -> tuple[bool, str]:
    from md_reference.md.lammps_lib import lammps_available

    return lammps_available()


_LMP_OK, _LMP_WHY = _lammps_status()
# the ReaxFF tests need both the force-field file and a working LAMMPS
needs_reaxff = pytest.mark.skipif(not (REAXFF.is_file() and _LMP_OK),
                                  reason=f"reference ReaxFF file not found at {REAXFF}" if not REAXFF.is_file()
                                  else f"LAMMPS is not available: {_LMP_WHY}")
needs_dft = pytest.mark.skipif(not DFT_PATHS.is_dir(), reason=f"DFT reference paths not found at {DFT_PATHS}")


def _lammps_ok():
    return _LMP_OK, _LMP_WHY


# ----------------------------------------------------------------------------
# 1. The NEB machinery on surfaces with known saddles
# ----------------------------------------------------------------------------
class CurvedDoubleWell(Calculator):
    """E(x, y) = A (x^2 - 1)^2 + B (y - C x^2)^2 for one atom (z ignored).

    Minima at (+-1, C) with E = 0, one saddle at (0, 0) with E = A: the barrier
    is exactly A, and the straight line between the minima passes at
    E = A + B C^2 above it, so the band has to bend to find it.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, A=0.3, B=2.0, C=0.5):
        super().__init__()
        self.A, self.B, self.C = A, B, C

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x, y, _ = self.atoms.positions[0]
        A, B, C = self.A, self.B, self.C
        u = y - C * x * x
        e = A * (x * x - 1) ** 2 + B * u * u
        fx = -(4 * A * x * (x * x - 1) + 2 * B * u * (-2 * C * x))
        fy = -(2 * B * u)
        self.results = {"energy": e, "forces": np.array([[fx, fy, 0.0]])}


def test_climbing_image_finds_analytic_saddle():
    A, C = 0.3, 0.5
    ini = Atoms("H", positions=[[-1.0, C, 0.0]], cell=[10, 10, 10], pbc=False)
    fin = Atoms("H", positions=[[1.0, C, 0.0]], cell=[10, 10, 10], pbc=False)
    s = N.NEBSettings(n_images=7, fmax_eV_A=1e-3, max_steps=3000, spring_eV_A2=0.5, interpolation="linear")
    res = N.neb_between(ini, fin, lambda: CurvedDoubleWell(A=A, C=C), s)
    assert res["converged"]
    e = res["energies_eV"]
    top = int(np.argmax(e))
    # The climbing image sits on the saddle: E = A to within the force tolerance (E ~ f^2 / k near it).
    assert e.max() - e[0] == pytest.approx(A, abs=1e-4)
    np.testing.assert_allclose(res["images"][top].positions[0, :2], [0.0, 0.0], atol=2e-3)


@pytest.mark.md
def test_lj_vacancy_hop_matches_symmetric_saddle():
    """Rigid fcc LJ lattice, only the mover free, run through LAMMPS.

    The midpoint of a nearest-neighbour hop lies on three mirror planes of the
    lattice (a stationary point) and at the centre of the rectangle of the four
    common neighbours, so it is the saddle: the barrier is E(midpoint) - E(site),
    two single-point energies independent of the NEB.
    """
    ok, why = _lammps_ok()
    if not ok:
        pytest.skip(f"LAMMPS cannot be started: {why}")
    from ase.build import bulk

    from md_reference.md.calculator import LammpsCalculator
    from md_reference.md.potentials import load_potential

    pot = load_potential({"kind": "lammps", "pair_style": "lj/cut 8.0", "pair_coeff": ["* * 0.01 2.6"],
                          "elements": ["Cs"]})
    a = 2 ** (1 / 6) * 2.6 * np.sqrt(2)
    cell = bulk("Cs", "fcc", a=a, cubic=True).repeat((3, 3, 3))
    site_v = 0
    mover = int(np.argsort(np.linalg.norm(cell.positions - cell.positions[site_v], axis=1))[1])
    target = cell.positions[site_v].copy()
    del cell[site_v]
    mover -= 1
    ini = cell.copy()
    fin = cell.copy()
    fin.positions[mover] = target
    fixed = np.ones(len(ini), dtype=bool)
    fixed[mover] = False
    s = N.NEBSettings(n_images=5, fmax_eV_A=1e-3, max_steps=2000)
    res = N.neb_between(ini, fin, lambda: LammpsCalculator(pot), s, fixed=fixed)
    mid = ini.copy()
    mid.positions[mover] = 0.5 * (ini.positions[mover] + target)
    e_site, e_mid = N.path_energies([ini, mid], pot)
    assert res["converged"]
    e = res["energies_eV"]
    assert e.max() - e[0] == pytest.approx(e_mid - e_site, rel=1e-4)
    assert e_mid - e_site > 0.01  # a real barrier, not a flat line


# ----------------------------------------------------------------------------
# 2. Hop geometry: atom counts, classes, mirror symmetry
# ----------------------------------------------------------------------------
def _shell_count(atoms, lat, site_a, site_b, a):
    """Single iodides on the 12 shell sites, counted from atom positions (independent of classify_hop)."""
    pos = lat.positions_A(a)
    L = np.diag(atoms.cell.array)
    nn = a / np.sqrt(2)
    sym = np.asarray(atoms.get_chemical_symbols())
    site = atoms.arrays["halide_site"]
    count = 0
    for s in range(lat.n_sites):
        if s in (site_a, site_b):
            continue
        d = [np.linalg.norm(N._mic(pos[s] - pos[x], L)) for x in (site_a, site_b)]
        if min(d) > nn + 1e-6:
            continue
        held = np.flatnonzero(site == s)
        if held.size == 1 and sym[held[0]] == "I":
            count += 1
    return count


@pytest.mark.parametrize("kind", ["vacancy", "interstitial"])
def test_hop_endpoints_counts_and_class(kind):
    lat = HalideSublattice((3, 3, 3))
    a = 6.1
    config = build_random_mix(lat, 0.5, seed=4)
    rng = np.random.default_rng(2)
    for _ in range(12):
        site_a, slot, mi = int(rng.integers(lat.n_sites)), int(rng.integers(8)), int(rng.integers(2))
        ini, fin, info = N.hop_endpoints(config, kind, site_a, slot, a, mover_index=mi)
        n_expected = 27 * 2 + lat.n_sites + (-1 if kind == "vacancy" else 1)
        assert len(ini) == len(fin) == n_expected
        assert ini.get_chemical_symbols() == fin.get_chemical_symbols()
        site_b = int(lat.neighbours(site_a)[slot])
        assert info["site_b"] == site_b
        d = decode_class(info["env_class"])
        assert d["defect"] == kind
        assert d["shell_nI"] == _shell_count(ini, lat, site_a, site_b, a)
        assert d["mover"] == ini.get_chemical_symbols()[info["i_mover"]]
        # The mover ends on the other site of the hop, one nearest-neighbour distance away (A).
        step = np.linalg.norm(N._mic(fin.positions[info["i_mover"]] - ini.positions[info["i_mover"]],
                                     np.diag(ini.cell.array)))
        if kind == "vacancy":
            assert step == pytest.approx(a / np.sqrt(2))
            assert d["mover"] == ("I", "Br")[config.occ[site_b]]
        else:
            pair = int(info["other"] == I) + int(config.occ[site_b] == I)
            assert d["pair_nI"] == pair


def test_pure_cell_classes():
    lat = HalideSublattice((3, 3, 3))
    for sp, label_v, label_i in (("I", "V:I:nI=12", "Xi:I:pI=2:nI=12"), ("Br", "V:Br:nI=0", "Xi:Br:pI=0:nI=0")):
        config = build_pure(lat, sp)
        from lattice.environment import class_label

        assert class_label(N.hop_endpoints(config, "vacancy", 5, 3, 6.0)[2]["env_class"]) == label_v
        assert class_label(N.hop_endpoints(config, "interstitial", 5, 3, 6.0)[2]["env_class"]) == label_i


@pytest.mark.parametrize("kind", ["vacancy", "interstitial"])
def test_mirror_maps_ideal_initial_onto_ideal_final(kind):
    lat = HalideSublattice((3, 3, 3))
    config = build_random_mix(lat, 0.5, seed=1)
    for site_a in range(0, lat.n_sites, 7):
        for slot in range(8):
            ini, fin, info = N.hop_endpoints(config, kind, site_a, slot, 6.2)
            out = N.mirror_final(ini, ini, fin, lat, site_a, info["site_b"], 6.2)
            assert out is not None
            np.testing.assert_allclose(N._mic(out.positions - fin.positions, np.diag(fin.cell.array)), 0.0,
                                       atol=1e-9)


def test_mirror_refused_in_non_cubic_cell_and_settings_errors():
    lat = HalideSublattice((3, 3, 4))
    config = build_heterojunction(lat, 2, 2, axis="z")
    # A hop between an x-bond and a z-bond site: cell lengths along x and z differ.
    site_a = 0
    slot = next(k for k in range(8) if int(lat.neighbours(site_a)[k]) % 3 == 2)
    ini, fin, info = N.hop_endpoints(config, "vacancy", site_a, slot, 6.1)
    assert N.mirror_final(ini, ini, fin, lat, site_a, info["site_b"], 6.1) is None
    with pytest.raises(ValueError, match="valid values"):
        N.NEBSettings(endpoints="symmetric").validate()
    with pytest.raises(ValueError, match="valid values"):
        N.NEBSettings(constraint="soft").validate()
    with pytest.raises(ValueError, match="n_images"):
        N.NEBSettings(n_images=0).validate()


def test_sample_hops_distinct_and_near_interface():
    lat = HalideSublattice((4, 3, 3))
    config = build_heterojunction(lat, 2, 2, interface="Br-rich", axis="x")
    hops = N.sample_hops(config, "interstitial", 20, seed=3, where="near-interface", near_planes=0)
    keys = {(h["site_a"], h["slot"], h["mover_index"]) for h in hops}
    assert len(keys) == 20
    planes = lat.plane_index(0)
    assert all(planes[h["site_a"]] in set(config.interface_planes.tolist()) for h in hops)
    assert hops == N.sample_hops(config, "interstitial", 20, seed=3, where="near-interface", near_planes=0)
    with pytest.raises(ValueError, match="n_hops"):
        N.sample_hops(build_pure(HalideSublattice((2, 2, 2)), "I"), "vacancy", 10_000)


# ----------------------------------------------------------------------------
# 3. ReaxFF: symmetric barrier in a pure cell, a mixed-cell smoke test, validation, CLI
# ----------------------------------------------------------------------------


@pytest.mark.md
@needs_reaxff
def test_pure_cell_barrier_is_symmetric_and_cubic_far_field():
    """CsPbBr3 3x3x3, default set-up: dE = 0 and equal barriers both ways (mirror endpoints)."""
    lat = HalideSublattice((3, 3, 3))
    config = build_pure(lat, "Br")
    res = N.run_neb(config, "vacancy", 51, 7, f"reaxff:{REAXFF}", 5.90, N.NEBSettings())
    assert res.converged and res.endpoints_converged
    # Mirror images of one relaxed state: equal up to the QEq tolerance (1e-6 in charges).
    assert abs(res.delta_E_eV) < 1e-6
    assert res.barrier_forward_eV == pytest.approx(res.barrier_backward_eV, abs=1e-6)
    assert 0.05 < res.barrier_forward_eV < 1.0
    e = np.asarray(res.image_energies_eV)
    assert e.min() >= -N.NEBSettings().refine_tolerance_eV
    # No tilt collapse: the far shell (>= 1.8 a from the hop) stays cubic.
    assert res.tilt_deg["initial"]["far"]["mean"] < 1.0
    d = res.to_dict()
    assert d["provenance"]["potential"]["sha256"] and d["provenance"]["endpoint_method"] == "mirror"
    json.dumps(d)


@pytest.mark.md
@needs_reaxff
def test_reaxff_neb_smoke_mixed_interstitial():
    lat = HalideSublattice((3, 3, 3))
    config = build_random_mix(lat, 0.5, seed=2)
    s = N.NEBSettings(n_images=3, max_steps=150, fmax_eV_A=0.05, endpoint_refinements=0)
    res = N.run_neb(config, "interstitial", 10, 2, f"reaxff:{REAXFF}", 6.10, s, mover_index=0)
    assert res.defect == "interstitial" and res.env_label.startswith("Xi:")
    assert len(res.image_energies_eV) == 5 and res.image_energies_eV[0] == 0.0
    assert np.isfinite(res.barrier_forward_eV) and res.barrier_forward_eV >= 0.0
    assert res.kra_barrier_eV == pytest.approx(res.barrier_forward_eV - 0.5 * res.delta_E_eV)


@pytest.mark.md
@pytest.mark.slow
@needs_reaxff
@needs_dft
def test_validate_reference_path_v_br():
    rows = N.validate_reference_paths(f"reaxff:{REAXFF}", DFT_PATHS, hops=("V_Br",))
    (row,) = rows
    assert row["dft_barrier_eV"] == pytest.approx(0.195, abs=1e-3)
    i_ref = int(np.argmin(row["dft_image_eV"]))
    assert row["pot_image_eV"][i_ref] == 0.0
    # The mapped DFT endpoints are the ideal hop geometry plus relaxations (< 1 A).
    assert max(row["map_dev_A"]) < 1.0
    assert row["neb_converged"] and row["neb_barrier_eV"] == pytest.approx(row["neb_barrier_backward_eV"], abs=1e-6)
    assert "V_Br" in N.format_validation_table(rows)


@pytest.mark.md
@needs_reaxff
def test_cli_rates_neb_writes_records(tmp_path, capsys):
    from kmc.cli import main

    out = tmp_path / "neb.json"
    rc = main(["rates", "neb", "--potential", f"reaxff:{REAXFF}", "--structure", "pure", "--species", "Br",
               "--defect", "vacancy", "--hops", "1", "--images", "3", "--max-steps", "200",
               "--lattice-constant", "5.9", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "halide-kmc/neb-records" and len(data["records"]) == 1
    rec = data["records"][0]
    for key in ("env_class", "env_label", "site_a", "site_b", "slot", "mover", "barrier_forward_eV",
                "barrier_backward_eV", "energy_initial_eV", "energy_final_eV", "kra_barrier_eV",
                "image_energies_eV", "converged", "settings", "provenance"):
        assert key in rec
    assert rec["provenance"]["potential"]["sha256"] and data["versions"]["git_revision"]
    assert "V:Br:nI=0" in capsys.readouterr().out


def test_cli_rates_neb_errors():
    from kmc.cli import main

    assert main(["rates", "neb", "--structure", "random", "--potential", "reaxff:/nonexistent.ff"]) == 2


# ----------------------------------------------------------------------------
# Rotations of a split interstitial in place
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rot90", "flip"])
def test_rotation_endpoints_geometry(kind):
    lat = HalideSublattice((3, 3, 3))
    config = build_random_mix(lat, 0.5, seed=4)
    site = 40
    a = 6.1
    ini, fin, info = N.rotation_endpoints(config, site, kind, a, added_species="Br")
    own, added = info["pair"]
    centre = lat.positions_A(a)[site]
    s = site % 3
    w, u = (s + 1) % 3, (s + 2) % 3
    d_i = ini.positions[own] - ini.positions[added]
    d_f = fin.positions[own] - fin.positions[added]
    half = 2 * 0.25 * a
    assert d_i[w] == pytest.approx(half) and abs(d_i[u]) < 1e-9 and abs(d_i[s]) < 1e-9
    if kind == "rot90":
        assert d_f[u] == pytest.approx(half) and abs(d_f[w]) < 1e-9
    else:
        assert d_f[w] == pytest.approx(-half)
    np.testing.assert_allclose(0.5 * (fin.positions[own] + fin.positions[added]), centre, atol=1e-9)
    others = np.setdiff1d(np.arange(len(ini)), [own, added])
    np.testing.assert_array_equal(ini.positions[others], fin.positions[others])
    assert info["n_br"] == int(config.occ[site] == 1) + 1
    with pytest.raises(ValueError, match="rotation kind"):
        N.rotation_endpoints(config, site, "twist", a)


@pytest.mark.md
@needs_reaxff
def test_reaxff_rotation_neb_smoke():
    lat = HalideSublattice((3, 3, 3))
    config = build_pure(lat, "I")
    s = N.NEBSettings(n_images=3, max_steps=60, fmax_eV_A=0.05)
    rec = N.run_rotation_neb(config, 68, "rot90", f"reaxff:{REAXFF}", 6.383, s)
    assert rec["kind"] == "rot90" and rec["bridge"] == "II" and len(rec["image_energies_eV"]) == 5
    assert rec["settings"]["max_step_A"] == 0.05 and rec["settings"]["endpoints"] == "independent"
    # pure cell: the two orientations are equivalent; the band stays bounded (no diverging image)
    assert abs(rec["delta_E_eV"]) < 0.1
    assert not rec["diverged"] and 0.0 <= rec["barrier_forward_eV"] < 1.0
    json.dumps(rec)
