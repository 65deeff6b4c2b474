"""kmc sweep: expansion and validation, resumable tasks keyed by hash, scheduling-independent seeds, tidy results."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from kmc.cli import main  # noqa: E402
from kmc.sweep import SweepError, load_sweep, run_sweep  # noqa: E402

BASE = """[lattice]
shape = [8, 3, 3]
[configuration]
kind = "heterojunction"
thickness_I = 4
thickness_Br = 4
[defects]
vacancies = 1
interstitials = 1
placement = "interface"
[run]
temperatures_K = [500.0]
max_events = 5000
n_observations = 5
[output]
plots = false
"""


def write(tmp_path, axes='"configuration.interface" = ["I-rich", "Br-rich"]\n"run.temperatures_K" = [500.0, 600.0]',
          extra="", name="s.toml", directory="out"):
    (tmp_path / "base.toml").write_text(BASE)
    p = tmp_path / name
    p.write_text(f'[sweep]\nbase = "base.toml"\nreplicas = 2\nseed = 3\ndirectory = "{tmp_path / directory}"\n{extra}'
                 f"[axes]\n{axes}\n")
    return p


def test_grid_expands_validates_and_seeds_by_task(tmp_path):
    sw = load_sweep(write(tmp_path))
    assert len(sw["tasks"]) == 4
    assert len({t["hash"] for t in sw["tasks"]}) == 4
    again = load_sweep(write(tmp_path, axes='"run.temperatures_K" = [600.0, 500.0]\n'
                                            '"configuration.interface" = ["Br-rich", "I-rich"]'))
    seeds = {t["hash"]: t["config"].run.seed for t in sw["tasks"]}
    assert {t["hash"]: t["config"].run.seed for t in again["tasks"]} == seeds  # order of axes/values is irrelevant


@pytest.mark.parametrize("axes,msg", [
    ('"configuration.colour" = ["red"]', "unknown config field 'configuration.colour'"),
    ('"configuration.interface" = []', "non-empty list"),
    ('"configuration.interface" = ["I-rich", "I-rich"]', "duplicate values"),
    ('"configuration.interface" = ["sideways"]', "configuration.interface"),
    ('"run.temperatures_K" = [-5.0]', "run.temperatures_K"),
])
def test_bad_axes_are_refused_before_any_task(tmp_path, axes, msg, capsys):
    p = write(tmp_path, axes=axes)
    with pytest.raises(SweepError, match=msg):
        load_sweep(p)
    assert main(["sweep", str(p)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_sweep_runs_resumes_and_keeps_old_results(tmp_path):
    p = write(tmp_path)
    res = run_sweep(p, workers=2, progress=False)
    assert res["n_tasks"] == 4 and res["n_run"] == 4
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert len(rows) == 4 and {r["configuration.interface"] for r in rows} == {"I-rich", "Br-rich"}
    assert all(float(r["D_eq1_all_cm2_s"]) > 0 for r in rows)
    assert (tmp_path / "out" / "plots" / "D_vs_T.png").is_file()
    # a rerun skips every finished task
    assert run_sweep(p, workers=1, progress=False)["n_run"] == 0
    # a changed axis adds tasks; the old ones stay and are reused
    p2 = write(tmp_path, axes='"configuration.interface" = ["I-rich", "Br-rich"]\n"run.temperatures_K" = [500.0, 700.0]')
    res2 = run_sweep(p2, workers=1, progress=False)
    assert res2["n_run"] == 2 and len(list((tmp_path / "out" / "tasks").iterdir())) == 6
    # results do not depend on the scheduling: the same tasks on one worker in another folder
    p3 = write(tmp_path, name="s3.toml", directory="out3")
    run_sweep(p3, workers=1, progress=False)
    a = {r["task"]: r["D_eq1_all_cm2_s"] for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    b = {r["task"]: r["D_eq1_all_cm2_s"] for r in csv.DictReader((tmp_path / "out3" / "results.csv").open())}
    common = set(a) & set(b)
    assert len(common) == 2 and all(a[k] == b[k] for k in common)


def test_other_base_config_is_refused_unless_forced(tmp_path):
    p = write(tmp_path, axes='"configuration.interface" = ["I-rich"]')
    run_sweep(p, progress=False)
    (tmp_path / "base.toml").write_text(BASE.replace("max_events = 5000", "max_events = 6000"))
    with pytest.raises(SweepError, match="another base config"):
        run_sweep(p, progress=False)
    assert run_sweep(p, progress=False, force=True)["n_run"] == 1


def test_unreachable_scheduler_is_a_quick_clear_error(tmp_path, capsys):
    p = write(tmp_path, axes='"configuration.interface" = ["I-rich"]')
    t0 = time.time()
    rc = main(["sweep", str(p), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Dask scheduler" in err and time.time() - t0 < 30
    assert json.loads((Path(tmp_path) / "out" / "sweep.json").read_text())["tasks"]


def test_profile_and_mixing_plots(tmp_path):
    (tmp_path / "base.toml").write_text(BASE.replace('kind = "heterojunction"\nthickness_I = 4\nthickness_Br = 4',
                                                     'kind = "nanodomain"\ndomain_species = "I"\ndomain_size = 2')
                                        .replace('placement = "interface"', 'placement = "domain"')
                                        .replace("shape = [8, 3, 3]", "shape = [5, 5, 5]"))
    p = tmp_path / "n.toml"
    p.write_text(f'[sweep]\nbase = "base.toml"\nreplicas = 1\ndirectory = "{tmp_path / "nano"}"\n'
                 '[axes]\n"configuration.domain_size" = [2, 3]\n')
    run_sweep(p, progress=False)
    assert (tmp_path / "nano" / "plots" / "mixing.png").is_file()
    h = write(tmp_path, axes='"configuration.interface" = ["I-rich", "Br-rich"]', directory="het")
    run_sweep(h, progress=False)
    assert (tmp_path / "het" / "plots" / "profiles.png").is_file()


def test_killed_worker_task_reruns_from_its_checkpoint(tmp_path):
    """kill -9 the Dask worker in the middle of a task: Dask reruns the task, which resumes its checkpoint."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "base.toml").write_text(BASE.replace("max_events = 5000", "max_events = 40000000")
                                        .replace("n_observations = 5", "n_observations = 400\n"
                                                                       "checkpoint_every_wall_s = 0.5")
                                        .replace("shape = [8, 3, 3]", "shape = [16, 6, 6]")
                                        .replace("thickness_I = 4\nthickness_Br = 4", "thickness_I = 8\nthickness_Br = 8"))
    p = tmp_path / "k.toml"
    p.write_text(f'[sweep]\nbase = "base.toml"\nreplicas = 1\ndirectory = "{tmp_path / "k"}"\n'
                 '[axes]\n"configuration.interface" = ["I-rich"]\n')
    proc = subprocess.Popen([sys.executable, "-m", "kmc.cli", "sweep", str(p), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpts = lambda: list((tmp_path / "k" / "tasks").glob("*/runs/*.ckpt.h5")) if (tmp_path / "k" / "tasks").exists() else []  # noqa: E731
    deadline = time.time() + 120
    while time.time() < deadline and not ckpts():
        time.sleep(0.2)
    assert ckpts(), "no checkpoint appeared"
    time.sleep(1.0)
    # the worker is the process that has the checkpoint file's job open: a grandchild of the sweep
    def descendants(pid):
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if ppid == pid:
                    out += [int(d.name)] + descendants(int(d.name))
        return out
    killed = 0
    for q in descendants(proc.pid):
        cmd = Path(f"/proc/{q}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmd or b"multiprocessing" in cmd:
            os.kill(q, signal.SIGKILL)
            killed += 1
    assert killed >= 1
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "1 tasks (1 run now" in out
    runs = list((tmp_path / "k" / "tasks").glob("*/runs/T*_r0.h5"))
    assert runs and not ckpts()
    import h5py

    with h5py.File(runs[0], "r") as f:
        assert int(f.attrs["n_resumes"]) >= 1  # the rerun continued from the checkpoint, not from scratch
