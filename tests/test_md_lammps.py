"""LAMMPS through md_reference: ReaxFF energies/forces, MD runs, trajectories, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase", reason="the md extra (ASE) is not installed")
pytestmark = pytest.mark.md

from md_reference.md.lammps_lib import lammps_available  # noqa: E402

_OK, _WHY = lammps_available()
if not _OK:
    pytest.skip(f"LAMMPS cannot be started: {_WHY}", allow_module_level=True)

from md_reference.md.lammps_driver import LammpsSession, MDSettings  # noqa: E402
from md_reference.md.potentials import KCAL_MOL_TO_EV, PotentialError, load_potential  # noqa: E402
from md_reference.md.runner import MDJob, StructureSpec, run_md  # noqa: E402
from md_reference.md.structures import build_cell  # noqa: E402
from md_reference.md.trajectory import TrajectoryError, read_trajectory  # noqa: E402

REAXFF = Path(__file__).resolve().parents[1].parent / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff"
needs_reaxff = pytest.mark.skipif(not REAXFF.is_file(), reason=f"reference ReaxFF file not found at {REAXFF}")


def _direct_lammps(atoms, tmp_path: Path):
    """Energy (eV) and forces (eV/A) from a plain LAMMPS input run by the lmp executable."""
    from ase.io import write

    data = tmp_path / "cell.data"
    order = ["Cs", "Pb", "I", "Br"]
    present = [e for e in order if e in atoms.get_chemical_symbols()]
    write(data, atoms, format="lammps-data", atom_style="charge", specorder=present, masses=True)
    inp = tmp_path / "in.direct"
    inp.write_text(
        "units real\natom_style charge\natom_modify map array sort 0 0.0\n"
        f"read_data {data}\n"
        f"pair_style reaxff NULL\npair_coeff * * {REAXFF} {' '.join(present)}\n"
        "fix q all qeq/reaxff 1 0.0 10.0 1e-6 reaxff\n"
        "neighbor 2.0 bin\nthermo_style custom step pe\nrun 0\n"
        f"print \"PE= $(pe:%.12f)\"\n"
        f"write_dump all custom {tmp_path / 'f.dump'} id fx fy fz modify sort id format float %.12f\n"
    )
    lmp = Path(sys.executable).parent / "lmp"
    res = subprocess.run([str(lmp), "-in", str(inp), "-log", "none"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    pe = float(next(line for line in res.stdout.splitlines() if line.startswith("PE=")).split()[1])
    rows = np.loadtxt(tmp_path / "f.dump", skiprows=9)
    return pe * KCAL_MOL_TO_EV, rows[:, 1:] * KCAL_MOL_TO_EV


@needs_reaxff
@pytest.mark.parametrize("defect", ["vacancy", "interstitial"])
def test_reaxff_matches_direct_lammps(defect, tmp_path):
    atoms, _, _ = build_cell("random", (2, 2, 2), x_I=0.5, defect=defect, where=5, seed=3, lattice_constant=6.1)
    atoms = build_atoms_rattled(atoms)
    with LammpsSession(atoms, f"reaxff:{REAXFF}") as sess:
        e, f = sess.energy_forces()
    e_ref, f_ref = _direct_lammps(atoms, tmp_path)
    # Same code path inside LAMMPS, QEq converged to 1e-6: agreement to the printed precision.
    assert e == pytest.approx(e_ref, abs=1e-6)
    np.testing.assert_allclose(f, f_ref, atol=1e-6)
    assert np.abs(f).max() > 0.05  # a rattled cell has real forces: the comparison is not of zeros


def build_atoms_rattled(atoms):
    rng = np.random.default_rng(7)
    atoms = atoms.copy()
    atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
    return atoms


@needs_reaxff
def test_reaxff_forces_are_energy_gradient():
    """Finite-difference check of the unit conversions (kcal/mol -> eV)."""
    atoms, _, _ = build_cell("pure", (2, 2, 2), species="Br", defect="interstitial", where=4, lattice_constant=5.95)
    atoms = build_atoms_rattled(atoms)
    with LammpsSession(atoms, f"reaxff:{REAXFF}") as sess:
        _, f = sess.energy_forces()
        i, h = int(np.argmax(np.abs(f[:, 0]))), 1e-3
        pos = atoms.get_positions()
        pos[i, 0] += h
        sess.set_positions(pos)
        ep, _ = sess.energy_forces()
        pos[i, 0] -= 2 * h
        sess.set_positions(pos)
        em, _ = sess.energy_forces()
    fd = -(ep - em) / (2 * h)
    # Central difference error O(h^2 f''') plus QEq tolerance: well below 1 % of a 0.1-1 eV/A force.
    assert fd == pytest.approx(f[i, 0], rel=0.02, abs=5e-3)


def test_unknown_potential_and_missing_file():
    with pytest.raises(PotentialError, match="valid kinds"):
        load_potential("tersoff:/x")
    with pytest.raises(PotentialError, match="not found"):
        load_potential("reaxff:/nonexistent/file.ff")
    with pytest.raises(PotentialError, match="KIND:PATH"):
        load_potential("reaxff")


def test_lj_pair_potential_and_unknown_element():
    pot = load_potential({"kind": "lammps", "pair_style": "lj/cut 6.0", "pair_coeff": ["* * 0.01 3.0"]})
    atoms, _, _ = build_cell("pure", (2, 2, 2), species="I", defect="none", lattice_constant=6.3)
    with LammpsSession(atoms, pot) as sess:
        e, f = sess.energy_forces()
    assert np.isfinite(e) and np.allclose(f.sum(axis=0), 0.0, atol=1e-9)
    pot2 = load_potential({"kind": "lammps", "pair_style": "lj/cut 6.0", "pair_coeff": ["* * 0.01 3.0"],
                           "elements": ["Cs", "Pb", "I"]})
    atoms_br, _, _ = build_cell("pure", (2, 2, 2), species="Br", defect="none", lattice_constant=5.9)
    with pytest.raises(PotentialError, match="Br"):
        LammpsSession(atoms_br, pot2)


@needs_reaxff
def test_md_run_writes_trajectory_and_resumes(tmp_path):
    job = MDJob(
        structure=StructureSpec(kind="pure", shape=(2, 2, 2), defect="interstitial", where=3,
                                lattice_constant=6.38, params={"species": "I"}),
        potential=f"reaxff:{REAXFF}",
        settings=MDSettings(temperature_K=600.0, n_steps=120, equilibration_steps=20, dump_every=10),
        temperatures_K=(600.0,), n_runs=1, seed=5, out_dir=str(tmp_path / "runs"), checkpoint_every_frames=3,
    )
    full = run_md(job, 0, 0)
    assert full["status"] == "done"
    ref = read_trajectory(full["path"])
    assert ref.n_frames == 13 and ref.positions_A.shape == (13, 41, 3)
    np.testing.assert_allclose(np.diff(ref.time_ps), 0.02)
    prov = ref.provenance
    assert prov["potential"]["sha256"] and prov["md_settings"]["temperature_K"] == 600.0
    assert prov["structure"]["lattice_constant_A"] == 6.38 and prov["complete"]
    # The first frame is the equilibrated cell in the lattice frame: halides near their sites.
    lat = ref.lattice
    hal = ref.halide_site >= 0
    d = ref.positions_A[0, hal] - lat.positions_A(6.38)[ref.halide_site[hal]]
    d -= 6.38 * 2 * np.round(d / (6.38 * 2))
    assert np.median(np.linalg.norm(d, axis=1)) < 1.0

    # Interrupted run (wall-time limit 0: stops after the first frame), then resumed.
    job2 = MDJob(**{**job.__dict__, "out_dir": str(tmp_path / "runs2")})
    part = run_md(job2, 0, 0, max_wall_s=0.0)
    assert part["status"] == "interrupted" and part["n_frames"] == 2
    done = run_md(job2, 0, 0)
    assert done["status"] == "done"
    res = read_trajectory(done["path"])
    assert res.n_frames == ref.n_frames and res.provenance["complete"]
    np.testing.assert_allclose(res.time_ps, ref.time_ps)
    # A complete file is kept, not rerun.
    assert run_md(job2, 0, 0)["status"].startswith("complete")
    # A changed job refuses to resume an incomplete file.
    job3 = MDJob(**{**job.__dict__, "out_dir": str(tmp_path / "runs3")})
    run_md(job3, 0, 0, max_wall_s=0.0)
    job3.settings = MDSettings(**{**job.settings.to_dict(), "timestep_fs": 1.0})
    with pytest.raises(RuntimeError, match="different settings"):
        run_md(job3, 0, 0)


def test_read_trajectory_errors(tmp_path):
    with pytest.raises(TrajectoryError, match="not found"):
        read_trajectory(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(TrajectoryError, match="not an HDF5"):
        read_trajectory(bad)


def test_md_settings_validation():
    with pytest.raises(ValueError, match="thermostat"):
        MDSettings(thermostat="berendsen").validate()
    with pytest.raises(ValueError, match="temperature_K"):
        MDSettings(temperature_K=-1).validate()
    assert json.dumps(MDSettings().to_dict())


@needs_reaxff
def test_ase_calculator_stress_matches_strain_derivative():
    from md_reference.md.calculator import LammpsCalculator

    atoms, _, _ = build_cell("pure", (2, 2, 2), species="I", defect="vacancy", where=3, lattice_constant=6.2)
    atoms.rattle(0.05, seed=1)
    calc = LammpsCalculator(f"reaxff:{REAXFF}")
    atoms.calc = calc
    stress = atoms.get_stress()
    vol, eps = atoms.get_volume(), 1e-4
    for ax in range(3):
        energies = []
        for sign in (1, -1):
            strained = atoms.copy()
            strained.calc = calc
            cell = strained.cell.array.copy()
            cell[ax, ax] *= 1 + sign * eps
            strained.set_cell(cell, scale_atoms=True)
            energies.append(strained.get_potential_energy())
        fd = (energies[0] - energies[1]) / (2 * eps) / vol
        # Central differences + QEq tolerance 1e-6: a few 1e-5 eV/A^3 at most.
        assert stress[ax] == pytest.approx(fd, abs=5e-5)
    assert np.abs(stress[:3]).max() > 5e-4  # strained cell: non-trivial stress
    calc.close()
