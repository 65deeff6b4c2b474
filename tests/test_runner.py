"""Run files, checkpoint/resume, configs and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kmc import cli
from kmc.config import ConfigError, resolve
from kmc.runner import run_all, run_job
from kmc.simulation import Simulation

SMALL = {
    "lattice": {"shape": [8, 8, 8]},
    "configuration": {"kind": "nanodomain", "domain_species": "I", "domain_size": 4},
    "defects": {"vacancies": 2, "interstitials": 2, "placement": "domain"},
    "run": {"temperatures_K": [400.0], "time_s": 3e-9, "n_observations": 12, "replicas": 1, "seed": 3,
            "event_log": 500},
    "output": {"plots": False},
}


def small_cfg(tmp_path: Path, name: str, **run) -> dict:
    raw = json.loads(json.dumps(SMALL))
    raw["output"]["directory"] = str(tmp_path / name)
    raw["run"].update(run)
    return resolve(raw)


def read_run(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {f"{g}/{k}": f[g][k][()] for g in ("obs", "final", "events") if g in f for k in f[g]}
        out["attrs"] = dict(f.attrs)
    return out


def test_run_file_is_self_describing(tmp_path):
    cfg = small_cfg(tmp_path, "a")
    row = run_job(cfg, 0, 0)
    data = read_run(Path(row["file"]))
    a = data["attrs"]
    assert a["format"] == "halide-kmc-run" and a["complete"]
    for key in ("config_json", "provenance_json", "catalog_json", "catalog_sha256", "units_json"):
        assert a[key]
    prov = json.loads(a["provenance_json"])
    assert {"numpy", "numba", "git_revision", "package_version"} <= set(prov)
    assert data["obs/time_s"][-1] == pytest.approx(3e-9)
    # squared displacements stored in the run equal a recomputation from the event count growth
    assert np.all(np.diff(data["obs/n_events"]) >= 0)
    assert data["events/time_s"].size == min(500, int(data["obs/n_events"][-1]))


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    ref_cfg = small_cfg(tmp_path, "ref")
    ref = read_run(Path(run_job(ref_cfg, 0, 0)["file"]))

    cfg = small_cfg(tmp_path, "killed", checkpoint_every_wall_s=1e-9)
    calls = {"n": 0}
    real_advance = Simulation.advance

    def dying_advance(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill")
        return real_advance(self, *args, **kwargs)

    monkeypatch.setattr(Simulation, "advance", dying_advance)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, 0, 0)
    monkeypatch.setattr(Simulation, "advance", real_advance)
    ckpt = Path(cfg.output.directory) / "runs" / "T400_r0.ckpt.h5"
    assert ckpt.exists()
    with pytest.raises(FileExistsError, match="--resume"):
        run_job(cfg, 0, 0)
    res = read_run(Path(run_job(cfg, 0, 0, resume=True)["file"]))
    assert not ckpt.exists()
    for key, val in ref.items():
        if key == "attrs" or key.endswith("wall_s"):
            continue
        np.testing.assert_array_equal(res[key], val, err_msg=key)


def test_resume_refuses_other_config(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path, "x", checkpoint_every_wall_s=1e-9)
    real_advance = Simulation.advance
    calls = {"n": 0}

    def dying_advance(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_advance(self, *args, **kwargs)

    monkeypatch.setattr(Simulation, "advance", dying_advance)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, 0, 0)
    monkeypatch.setattr(Simulation, "advance", real_advance)
    other = small_cfg(tmp_path, "x", checkpoint_every_wall_s=1e-9, seed=99)
    with pytest.raises(ValueError, match="different config"):
        run_job(other, 0, 0, resume=True)


@pytest.mark.parametrize("bad, match", [
    ({"lattice": {"shape": [1, 8, 8]}}, "lattice.shape"),
    ({"configuration": {"kind": "spiral"}}, "unknown configuration.kind"),
    ({"configuration": {"domain_species": "Cl"}}, "unknown configuration.domain_species"),
    # silent coercions that used to pass (issue: types are exact, bounds checked in Python integers)
    ({"configuration": {"domain_size": 3.9}}, "configuration.domain_size must be an integer"),
    ({"configuration": {"domain_size": True}}, "configuration.domain_size must be an integer"),
    ({"configuration": {"domain_size": "4"}}, "configuration.domain_size must be an integer"),
    ({"configuration": {"x_I": "0.5"}}, "configuration.x_I must be a number"),
    ({"configuration": {"thickness_I": 8.7}}, "configuration.thickness_I must be an integer"),
    ({"configuration": {"origin": [1.7, 1, 1]}}, r"configuration.origin\[0\] must be an integer"),
    ({"configuration": {"origin": [9223372036854775807, 1, 1]}}, r"configuration.origin\[0\] must be <="),
    ({"configuration": {"kind": []}}, "unknown configuration.kind"),
    ({"defects": {"placement": [True, False]}}, r"defects.placement\[0\] must be an integer"),
    # non-finite and absurd numbers
    ({"run": {"temperatures_K": [float("inf")]}}, "run.temperatures_K.* must be finite"),
    ({"run": {"temperatures_K": [5e-324]}}, r"run.temperatures_K.* must lie in"),
    ({"run": {"time_s": float("inf")}}, "run.time_s must be finite"),
    ({"lattice": {"lattice_constant_A": float("inf")}}, "lattice.lattice_constant_A must be finite"),
    ({"lattice": {"lattice_constant_A": 1e300}}, "lattice.lattice_constant_A must lie in"),
    ({"run": {"seed": 2 ** 64}}, "run.seed must be <="),
    ({"run": {"replicas": 10 ** 9}}, "run.replicas must be <="),
    # colliding temperatures (both would be T300)
    ({"run": {"temperatures_K": [300, 300]}}, "duplicate"),
    ({"run": {"temperatures_K": [300, 300.0000001]}}, "duplicate"),
    ({"defects": {"vacancies": 0, "interstitials": 0}}, "at least one defect"),
    ({"defects": {"placement": "nowhere"}}, "unknown defects.placement"),
    ({"run": {"time_s": -1.0}}, "run.time_s"),
    ({"run": {"colour": 1}}, "unknown key 'colour'"),
    ({"physics": {}}, "unknown config section"),
])
def test_config_errors_name_the_field(tmp_path, bad, match):
    raw = json.loads(json.dumps(SMALL))
    for sec, vals in bad.items():
        raw.setdefault(sec, {}).update(vals)
    with pytest.raises(ConfigError, match=match):
        resolve(raw)


def test_impossible_lattice_is_a_clear_error(tmp_path, capsys):
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text('[lattice]\nshape = [6, 6, 6]\n[configuration]\nkind = "heterojunction"\n'
                       'thickness_I = 4\nthickness_Br = 4\n[defects]\nvacancies = 1\n[run]\ntime_s = 1e-9\n'
                       f'[output]\ndirectory = "{tmp_path / "o"}"\n')
    assert cli.main(["run", str(cfgfile)]) == 2
    assert "not a multiple of the layer period" in capsys.readouterr().err


def test_missing_rate_is_reported(tmp_path, capsys):
    from rates import load_catalog

    cat = load_catalog().to_dict()
    cat["classes"] = [c for c in cat["classes"] if c["defect"] != "vacancy" or c["mover"] != "I"]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(cat))
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text('[lattice]\nshape = [4, 4, 4]\n[configuration]\nkind = "pure"\nspecies = "I"\n'
                       f'[defects]\nvacancies = 1\n[run]\ntime_s = 1e-9\ncatalog = "{path}"\n'
                       f'[output]\ndirectory = "{tmp_path / "o"}"\nplots = false\n')
    assert cli.main(["run", str(cfgfile)]) == 2
    err = capsys.readouterr().err
    assert "no rate for event class" in err and "V:I:nI=12" in err


def test_cli_run_writes_summary_and_plots(tmp_path, capsys):
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(
        '[lattice]\nshape = [8, 8, 8]\n[configuration]\nkind = "nanodomain"\ndomain_size = 4\n'
        '[defects]\nvacancies = 2\ninterstitials = 2\nplacement = "domain"\n'
        '[run]\ntemperatures_K = [400.0, 500.0]\ntime_s = 2e-9\nn_observations = 10\nreplicas = 2\n'
        f'[output]\ndirectory = "{tmp_path / "out"}"\n')
    assert cli.main(["run", str(cfgfile)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["per_temperature"]) == 2 and "arrhenius" in summary
    assert summary["catalog"]["sha256"]
    for png in ("msd.png", "occupancy_profile.png", "composition.png", "mixing.png", "arrhenius.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "D_Eq1" in capsys.readouterr().out


def test_kernels_run_without_jit(tmp_path):
    """The kernels are plain Python under NUMBA_DISABLE_JIT=1 and give the same trajectory."""
    code = (
        "import numpy as np;"
        "from lattice import HalideSublattice, build_random_mix, place_defects;"
        "from rates import load_catalog;"
        "from kmc.simulation import Simulation;"
        "L = HalideSublattice((4, 4, 4)); c = build_random_mix(L, 0.5, 1);"
        "s = Simulation(c, place_defects(c, 2, 2, seed=2), load_catalog(), 450.0, 9, event_log=300);"
        "s.advance(float('inf'), max_events=300);"
        "e = s.event_log(); print(list(e['to_site'])); print(repr(float(s.time_s)))"
    )
    outs = []
    for disable in ("1", "0"):
        env = dict(os.environ, NUMBA_DISABLE_JIT=disable)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.splitlines())
    assert outs[0][0] == outs[1][0]
    assert float(outs[0][1]) == pytest.approx(float(outs[1][1]), rel=1e-12)


def test_default_config_is_valid():
    from kmc.config import load_config

    cfg = load_config(None)
    n_sites = 3 * np.prod(cfg.lattice.shape)
    assert n_sites >= 1_000_000
    assert cfg.configuration.kind == "nanodomain"


def test_run_all_single_worker(tmp_path):
    cfg = small_cfg(tmp_path, "all")
    summary = run_all(cfg, progress=False)
    e = summary["per_temperature"][0]
    assert e["D_eq1_per_defect_cm2_s"]["all"]["mean"] > 0
    assert (Path(cfg.output.directory) / "config.resolved.json").exists()


def test_refused_resume_leaves_the_old_run_untouched(tmp_path):
    cfg = small_cfg(tmp_path, "keep")
    run_all(cfg, progress=False)
    out = Path(cfg.output.directory)
    before = {p.name: p.read_bytes() for p in [out / "config.resolved.json", out / "summary.json",
                                                *sorted((out / "runs").glob("*.h5"))]}
    with pytest.raises(ValueError, match="different config"):
        run_all(cfg.with_overrides({"run.seed": 99}), resume=True, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        run_all(cfg, resume=False, progress=False)
    after = {p.name: p.read_bytes() for p in [out / "config.resolved.json", out / "summary.json",
                                               *sorted((out / "runs").glob("*.h5"))]}
    assert after == before


def test_config_is_frozen_typed_and_round_trips_through_toml(tmp_path):
    import dataclasses

    from kmc.config import RunConfig, load_config

    cfg = small_cfg(tmp_path, "rt")
    assert isinstance(cfg, RunConfig) and cfg.lattice.shape == (8, 8, 8) and cfg.run.temperatures_K == (400.0,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 4
    p = tmp_path / "rt.toml"
    p.write_text(cfg.to_toml())
    assert load_config(p) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # plain JSON, the run-file layout
    more = cfg.with_overrides({"run.replicas": 3})
    assert more.run.replicas == 3 and cfg.run.replicas == 1
    with pytest.raises(ConfigError, match="unknown config field"):
        cfg.with_overrides({"run.bogus": 1})
    with pytest.raises(ConfigError, match="run.replicas"):
        cfg.with_overrides({"run.replicas": 0})


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_writes_a_checkpoint_and_exits_quietly(tmp_path, sig):
    import signal
    import time

    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text('[lattice]\nshape = [20, 20, 20]\n[defects]\nvacancies = 40\n'
                       '[run]\ntemperatures_K = [600.0]\nmax_events = 200000000\nn_observations = 2000\nseed = 1\n'
                       f'[output]\ndirectory = "{tmp_path / "out"}"\nplots = false\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kmc.cli", "run", str(cfgfile)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    ckpt = tmp_path / "out" / "runs" / "T600_r0.ckpt.h5"
    deadline = time.time() + 120
    # wait until the job is running (its first observation is in)
    while time.time() < deadline and not (tmp_path / "out" / "config.resolved.json").exists():
        time.sleep(0.2)
    time.sleep(3.0)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1
    assert ckpt.is_file()
    with h5py.File(ckpt, "r") as f:
        assert f["obs/time_s"].shape[0] >= 2


def test_resume_with_other_temperatures_is_refused_and_changes_nothing(tmp_path):
    cfg = small_cfg(tmp_path, "temps")
    run_all(cfg, progress=False)
    out = Path(cfg.output.directory)
    before = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(ValueError, match="different config"):
        run_all(cfg.with_overrides({"run.temperatures_K": [450.0]}), resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
