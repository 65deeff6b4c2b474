"""Fuzz suite: every bad input ends in a one-line error naming the field or file, never a traceback,
a hang or a changed existing file; good inputs still run.

Cases are generated tables (no randomness at collection time): mutated configs (every key of every
section set to values of the wrong type, out of range, non-finite, empty), mutated catalogs, damaged
checkpoints and run files, hostile paths, a full disk (mocked ENOSPC) and concurrent runs.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from kmc.cli import main

BASE = {
    "lattice": {"shape": [3, 3, 3], "lattice_constant_A": "vegard"},
    "configuration": {"kind": "pure", "species": "I"},
    "defects": {"vacancies": 1, "interstitials": 1, "placement": "random", "added_species": "same"},
    "run": {"temperatures_K": [500.0], "max_events": 200, "n_observations": 4, "replicas": 1, "seed": 1,
            "catalog": "default", "workers": 1, "checkpoint_every_wall_s": 60.0, "event_log": 0},
    "output": {"plots": False},
}
BAD_VALUES = ["text", "", True, -1, 0, 1.5, 2 ** 70, math.inf, -math.inf, math.nan, [], [1, 2], {"a": 1}, 1e300]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "inf" if v == math.inf else "-inf" if v == -math.inf else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_text(raw: dict) -> str:
    lines = []
    for sec, vals in raw.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in vals.items()]
    return "\n".join(lines) + "\n"


def config_cases():
    from kmc.config import DEFAULTS

    cases = []
    for sec, keys in DEFAULTS.items():
        for key in keys:
            if sec == "output" and key == "directory":
                continue
            for n, v in enumerate(BAD_VALUES):
                cases.append(pytest.param(sec, key, v, id=f"{sec}.{key}-{n}"))
    return cases


def snapshot(root: Path) -> dict:
    """Bytes of every file under root (what a refused run must leave unchanged)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_outcome(rc: int, err: str, name_hint: str | None = None):
    assert "Traceback" not in err, err
    if rc != 0:
        assert rc in (2, 130), (rc, err)
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING")]
        assert len(lines) == 1, err
        assert lines[0].startswith("kmc: "), err
        if name_hint is not None:
            assert name_hint in lines[0], (name_hint, err)


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A finished run whose files every refused call must leave untouched."""
    root = tmp_path_factory.mktemp("existing")
    raw = json.loads(json.dumps(BASE))
    raw["output"]["directory"] = str(root / "out")
    cfg = root / "good.toml"
    cfg.write_text(toml_text(raw))
    assert main(["run", str(cfg)]) == 0
    return root


@pytest.mark.parametrize("sec,key,value", config_cases())
def test_mutated_config(existing_run, tmp_path, capsys, sec, key, value):
    raw = json.loads(json.dumps(BASE))
    raw.setdefault(sec, {})[key] = value
    raw["output"]["directory"] = str(existing_run / "out")  # the existing run: must not be damaged
    p = tmp_path / "c.toml"
    p.write_text(toml_text(raw))
    before = snapshot(existing_run / "out")
    rc = main(["run", str(p), "--resume"])
    err = capsys.readouterr().err
    check_outcome(rc, err)
    never_valid = (isinstance(value, float) and not math.isfinite(value)) or isinstance(value, dict) or \
        (value is True and (sec, key) != ("output", "plots"))
    if never_valid:
        assert rc == 2, f"{sec}.{key} = {value!r} was accepted"
    if rc != 0:
        assert snapshot(existing_run / "out") == before, f"{sec}.{key}={value!r} changed the existing run"
        assert f"{sec}." in err or key in err or "config" in err or "catalog" in err, err


CATALOG_MUTATIONS = []
for path in (("units",), ("energy_model",), ("energy_model", "pair_eV"), ("energy_model", "bridge_eV"),
             ("classes",), ("sources",), ("assumptions",), ("provenance",), ("temperature_range_K",),
             ("lattice_constant_A",), ("name",), ("descriptor",), ("rate_law",), ("format",), ("schema_version",)):
    for n, v in enumerate([None, [], {}, 5, "x", [1, 2], True]):
        CATALOG_MUTATIONS.append(pytest.param(path, v, id=f"{'.'.join(path)}-{n}"))
for field in ("E_KRA_eV", "prefactor_Hz", "id"):
    for n, v in enumerate([None, "0.2", -1.0, math.inf, [], True]):
        CATALOG_MUTATIONS.append(pytest.param(("classes", 0, field), v, id=f"classes0.{field}-{n}"))


@pytest.mark.parametrize("path,value", CATALOG_MUTATIONS)
def test_mutated_catalog(tmp_path, capsys, path, value):
    from rates.catalog import load_catalog

    data = load_catalog("default").to_dict()
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    p = tmp_path / "cat.json"
    text = json.dumps(data, allow_nan=True)
    p.write_text(text)
    rc = main(["rates", "show", str(p)])
    err = capsys.readouterr().err
    check_outcome(rc, err, "cat.json")
    raw = json.loads(json.dumps(BASE))
    raw["run"]["catalog"] = str(p)
    raw["output"]["directory"] = str(tmp_path / "out")
    c = tmp_path / "c.toml"
    c.write_text(toml_text(raw))
    rc2 = main(["run", str(c)])
    err2 = capsys.readouterr().err
    check_outcome(rc2, err2)
    assert p.read_text() == text


# --------------------------------------------------------------------------
# damaged checkpoints and run files
# --------------------------------------------------------------------------
def _interrupted_run(root: Path):
    """A run with a checkpoint and no final file, made by a job stopped after its first checkpoint."""
    from kmc.config import resolve
    from kmc.runner import run_job

    raw = json.loads(json.dumps(BASE))
    raw["run"].update({"max_events": 4000, "n_observations": 40, "checkpoint_every_wall_s": 1e-9})
    raw["output"]["directory"] = str(root / "out")
    cfg = resolve(raw)
    run_job(cfg, 0, 0)
    runs = root / "out" / "runs"
    final = runs / "T500_r0.h5"
    ckpt = runs / "T500_r0.ckpt.h5"
    # recreate a checkpoint state: keep the finished file as the reference, make a checkpoint by copying
    return cfg, final, ckpt


def _make_checkpoint(cfg, ckpt: Path):
    """Write a genuine mid-run checkpoint by running the job with a tiny event budget per chunk."""
    from kmc import runner

    saved = {}

    def grab(path, attrs, groups):
        if path.name.endswith(".ckpt.h5") and "ckpt" not in saved:
            saved["ckpt"] = (dict(attrs), {g: dict(v) for g, v in groups.items()})
        orig(path, attrs, groups)

    orig = runner._write_h5_atomic
    runner._write_h5_atomic = grab
    try:
        runner.run_job(cfg.with_overrides({"output.directory": str(ckpt.parent.parent.parent / "scratch")}), 0, 0)
    finally:
        runner._write_h5_atomic = orig
    attrs, groups = saved["ckpt"]
    attrs = {k: v for k, v in attrs.items() if k != "content_sha256"}
    return attrs, groups


DAMAGES = ["truncated", "zero-byte", "garbage", "no-obs", "no-rng", "flipped-site", "digest-edited", "directory"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_checkpoint(tmp_path, capsys, damage):
    from kmc import runner

    cfg, final, ckpt = _interrupted_run(tmp_path)
    ref = runner.summarize_run_file(final)
    final.unlink()
    attrs, groups = _make_checkpoint(cfg, ckpt)
    runner._write_h5_atomic(ckpt, attrs, groups)
    good = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(good[: len(good) // 2])
    elif damage == "zero-byte":
        ckpt.write_bytes(b"")
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(4096))
    elif damage in ("no-obs", "no-rng", "flipped-site", "digest-edited"):
        with h5py.File(ckpt, "a") as f:
            if damage == "no-obs":
                del f["obs"]
            elif damage == "no-rng":
                del f.attrs["scalars_json"]
            elif damage == "flipped-site":
                occ = f["state/occ"][()]
                occ[0] = 1 - occ[0] if occ[0] < 2 else occ[0]
                f["state/occ"][...] = occ
            else:
                f["state/occ"][0] = 1
                f.attrs["content_sha256"] = "0" * 64
    elif damage == "directory":
        ckpt.unlink()
        ckpt.mkdir()
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(cfg.to_toml())
    before = snapshot(tmp_path / "out")
    rc = main(["run", str(cfgfile), "--resume"])
    err = capsys.readouterr().err
    check_outcome(rc, err, "T500_r0.ckpt.h5")
    assert rc == 2, f"damage {damage!r} was accepted"
    assert snapshot(tmp_path / "out") == before
    if damage == "directory":
        return
    rc = main(["run", str(cfgfile), "--resume", "--restart-corrupt"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert any(p.name.startswith("T500_r0.ckpt.h5.corrupt-") for p in (tmp_path / "out" / "runs").iterdir())
    again = runner.summarize_run_file(final)
    assert again["n_events"] == ref["n_events"] and again["D_eq1_per_defect_cm2_s"] == ref["D_eq1_per_defect_cm2_s"]


@pytest.mark.parametrize("damage", ["incomplete", "tampered", "truncated"])
def test_damaged_run_file(tmp_path, capsys, damage):
    cfg, final, _ = _interrupted_run(tmp_path)
    if damage == "incomplete":
        with h5py.File(final, "a") as f:
            f.attrs["complete"] = False
    elif damage == "tampered":
        with h5py.File(final, "a") as f:
            f["obs/msd_species"][-1, 0] += 1
    else:
        final.write_bytes(final.read_bytes()[:1000])
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(cfg.to_toml())
    rc = main(["run", str(cfgfile), "--resume"])
    err = capsys.readouterr().err
    check_outcome(rc, err, "T500_r0.h5")
    assert rc == 2


# --------------------------------------------------------------------------
# paths, disk full, concurrency
# --------------------------------------------------------------------------
PATH_CASES = ["config-missing", "config-dir", "config-devnull", "config-not-utf8", "config-bom", "out-under-file",
              "out-unwritable", "summary-is-dir", "catalog-dir", "catalog-missing"]


@pytest.mark.parametrize("case", PATH_CASES)
def test_hostile_paths(tmp_path, capsys, case):
    raw = json.loads(json.dumps(BASE))
    raw["output"]["directory"] = str(tmp_path / "out")
    cfg = tmp_path / "c.toml"
    text = toml_text(raw)
    cfg.write_text(text)
    target = str(cfg)
    if case == "config-missing":
        target = str(tmp_path / "none.toml")
    elif case == "config-dir":
        target = str(tmp_path)
    elif case == "config-devnull":
        target = "/dev/null"
    elif case == "config-not-utf8":
        cfg.write_bytes(b"[run]\nseed = \xff\xfe\n")
    elif case == "config-bom":
        cfg.write_bytes(b"\xef\xbb\xbf" + text.encode())
    elif case == "out-under-file":
        (tmp_path / "afile").write_text("x")
        raw["output"]["directory"] = str(tmp_path / "afile" / "out")
        cfg.write_text(toml_text(raw))
    elif case == "out-unwritable":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", stat.S_IRUSR | stat.S_IXUSR)
        raw["output"]["directory"] = str(tmp_path / "ro" / "out")
        cfg.write_text(toml_text(raw))
    elif case == "summary-is-dir":
        (tmp_path / "out" / "summary.json").mkdir(parents=True)
    elif case == "catalog-dir":
        raw["run"]["catalog"] = str(tmp_path)
        cfg.write_text(toml_text(raw))
    elif case == "catalog-missing":
        raw["run"]["catalog"] = str(tmp_path / "nope.json")
        cfg.write_text(toml_text(raw))
    rc = main(["run", target])
    err = capsys.readouterr().err
    check_outcome(rc, err)
    if case == "config-bom":
        assert rc == 0, err  # a UTF-8 byte-order mark is not an error
    else:
        assert rc == 2, (case, err)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    from kmc import runner

    raw = json.loads(json.dumps(BASE))
    raw["run"].update({"max_events": 4000, "n_observations": 40, "checkpoint_every_wall_s": 1e-9})
    raw["output"]["directory"] = str(tmp_path / "out")
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text(raw))
    calls = {"n": 0}
    real = h5py.File

    def full_disk(name, mode="r", *a, **k):
        if mode == "w" and str(name).endswith(".tmp"):
            calls["n"] += 1
            if calls["n"] >= 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(name, mode, *a, **k)

    monkeypatch.setattr(runner.h5py, "File", full_disk)
    rc = main(["run", str(cfg)])
    err = capsys.readouterr().err
    check_outcome(rc, err, "no space left on device while writing")
    runs = tmp_path / "out" / "runs"
    assert not list(runs.glob("*.tmp"))
    ckpt = runs / "T500_r0.ckpt.h5"
    assert ckpt.is_file()
    monkeypatch.setattr(runner.h5py, "File", real)
    runner._read_verified(ckpt, "checkpoint")  # the previous checkpoint is intact
    assert main(["run", str(cfg), "--resume"]) == 0


def test_concurrent_runs_on_one_directory(tmp_path):
    raw = json.loads(json.dumps(BASE))
    raw["lattice"]["shape"] = [12, 12, 12]
    raw["run"].update({"max_events": 3_000_000, "n_observations": 50})
    raw["output"]["directory"] = str(tmp_path / "out")
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kmc.cli", "run", str(cfg)]
    a = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    import time

    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "out" / ".lock").exists():
        time.sleep(0.05)
    b = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=120)
    a.communicate(timeout=300)
    assert a.returncode == 0
    assert b.returncode == 2 and "in use by PID" in b.stderr and "Traceback" not in b.stderr


def test_case_count():
    n = (len(config_cases()) + len(CATALOG_MUTATIONS) + len(DAMAGES) + 3 + len(PATH_CASES) + 2
         + 6 * len(MD_JSON_MUTATIONS) + 3 + len(MD_RUN_BAD))
    assert n >= 300, n



def test_huge_lattice_is_refused_with_an_estimate_before_allocating(tmp_path, capsys):
    raw = json.loads(json.dumps(BASE))
    raw["lattice"]["shape"] = [1000, 1000, 1000]
    raw["output"]["directory"] = str(tmp_path / "out")
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text(raw))
    rc = main(["run", str(cfg)])
    err = capsys.readouterr().err
    check_outcome(rc, err, "GiB of memory")
    assert rc == 2 and not (tmp_path / "out").exists()


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_die_with_their_parent(tmp_path):
    import signal
    import time

    raw = json.loads(json.dumps(BASE))
    raw["lattice"]["shape"] = [10, 10, 10]
    raw["run"].update({"max_events": 10 ** 9, "n_observations": 1000, "replicas": 2, "workers": 2})
    raw["output"]["directory"] = str(tmp_path / "out")
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text(raw))
    proc = subprocess.Popen([sys.executable, "-m", "kmc.cli", "run", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 90
    kids = []
    while time.time() < deadline and len(kids) < 2:
        time.sleep(0.5)
        kids = _children(proc.pid)  # the pool's workers (and multiprocessing's resource tracker)
    assert kids, "no worker processes started"
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.time() + 15
    def running(pid: int) -> bool:
        try:
            return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    alive = kids
    while time.time() < end and alive:
        time.sleep(0.5)
        alive = [k for k in alive if running(k)]
    assert not alive, f"workers {alive} outlived their parent"


# --------------------------------------------------------------------------
# the MD side and the fitting/compare commands: bad JSON inputs and damaged trajectories
# --------------------------------------------------------------------------
def _md_analysis_doc():
    """A valid (tiny) md-analysis summary: rates fit and compare both accept it."""
    d = {"mean": 1e-5, "sem": 1e-6, "n": 4}
    return {"schema": "halide-kmc/md-analysis", "schema_version": 1, "units": {"time": "ps"},
            "per_temperature": [{"temperature_K": 500.0, "classes": [{"cls": 3, "n_hops": 2, "exposure_ps": 10.0}],
                                 "n_hops": 60, "D_eq1_cm2_s": {"X": d, "I": d, "Br": {"mean": None, "sem": None, "n": 0}},
                                 "D_defect_cm2_s": d}],
            "runs": [{"temperature_K": 500.0, "lattice_constant_A": 6.3, "run_index": 0,
                      "configuration": {"kind": "pure", "shape": [3, 3, 3], "n_sites": 81, "x_I": 1.0, "axis": 0,
                                        "species": "I"},
                      "tracking": {"defect_kinds": ["interstitial"]}}]}


MD_JSON_MUTATIONS = [("schema",), ("per_temperature",), ("per_temperature", 0, "temperature_K"),
                     ("per_temperature", 0, "classes"), ("per_temperature", 0, "classes", 0, "n_hops"),
                     ("per_temperature", 0, "classes", 0, "exposure_ps"), ("per_temperature", 0, "classes", 0, "cls"),
                     ("per_temperature", 0, "D_eq1_cm2_s"), ("per_temperature", 0, "D_eq1_cm2_s", "X", "mean"),
                     ("runs",), ("runs", 0, "lattice_constant_A"), ("runs", 0, "configuration"),
                     ("runs", 0, "configuration", "shape"), ("runs", 0, "configuration", "kind"),
                     ("runs", 0, "tracking")]


def test_the_unmutated_md_json_is_accepted(tmp_path, capsys):
    p = tmp_path / "md_analysis.json"
    p.write_text(json.dumps(_md_analysis_doc()))
    assert main(["rates", "fit", "--md", str(p), "--out", str(tmp_path / "cat.json")]) == 0
    assert main(["compare", str(p), "-c", "default", "--out", str(tmp_path / "cmp"), "--events", "100",
                 "--replicas", "2"]) == 0


@pytest.mark.parametrize("path", MD_JSON_MUTATIONS)
@pytest.mark.parametrize("value", [None, "x", -1, [], {}, math.inf])
def test_rates_fit_and_compare_on_bad_md_json(tmp_path, capsys, path, value):
    doc = _md_analysis_doc()
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    p = tmp_path / "md_analysis.json"
    p.write_text(json.dumps(doc))
    rc = main(["rates", "fit", "--md", str(p), "--out", str(tmp_path / "cat.json")])
    check_outcome(rc, capsys.readouterr().err)
    rc = main(["compare", str(p), "-c", "default", "--out", str(tmp_path / "cmp"), "--events", "100", "--replicas", "2"])
    check_outcome(rc, capsys.readouterr().err)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"\x89HDF\r\n\x1a\n" + b"\0" * 100])
def test_md_analyze_on_damaged_trajectory(tmp_path, capsys, content):
    pytest.importorskip("ase")
    t = tmp_path / "T500_r0.h5"
    t.write_bytes(content)
    rc = main(["md", "analyze", str(tmp_path), "--no-plots"])
    check_outcome(rc, capsys.readouterr().err, "T500_r0.h5")
    assert rc == 2 and t.read_bytes() == content


def test_read_only_install_falls_back_to_a_temporary_numba_cache(monkeypatch, caplog):
    import common.numba_cache as nc

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_DISABLE_JIT", raising=False)
    monkeypatch.setattr(nc, "_writable", lambda d: False)
    import numba

    old = numba.config.CACHE_DIR
    try:
        with caplog.at_level("WARNING"):
            nc.ensure_writable_cache()
        assert os.environ["NUMBA_CACHE_DIR"].startswith(os.path.join(__import__("tempfile").gettempdir(),
                                                                     "halide-kmc-numba-cache"))
        assert numba.config.CACHE_DIR == os.environ["NUMBA_CACHE_DIR"]
        assert "read-only" in caplog.text
    finally:
        numba.config.CACHE_DIR = old
        monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)


MD_RUN_BAD = [
    ["--shape", "0", "4", "4"], ["--structure", "random"], ["--structure", "random", "--x-I", "2"],
    ["--ps", "-1"], ["--ps", "0.013"], ["-T", "inf"], ["-T", "-5"], ["--dt-fs", "100"], ["--runs", "0"],
    ["--potential", "reaxff:/nonexistent.ff"], ["--potential", "bogus:x"], ["--potential", "nocolon"],
    ["--lattice-constant", "abc"], ["--where", "nowhere"], ["--structure", "heterojunction"],
    ["--structure", "nanodomain", "--domain-species", "I", "--domain-size", "9"],
]


@pytest.mark.parametrize("extra", MD_RUN_BAD, ids=lambda e: "_".join(e).replace("/", ""))
def test_md_run_bad_arguments(tmp_path, capsys, extra):
    pytest.importorskip("ase")
    reaxff = Path(__file__).resolve().parents[2] / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff"
    args = ["md", "run", "--potential", f"reaxff:{reaxff}", "--shape", "3", "3", "3", "--ps", "0.1",
            "--out", str(tmp_path / "md")]
    args = args + extra  # a later flag overrides the earlier one
    rc = main(args)
    err = capsys.readouterr().err
    check_outcome(rc, err)
    assert rc == 2, (extra, err)
    assert not (tmp_path / "md").exists() or not any((tmp_path / "md").glob("T*.h5"))


def test_kernel_caches_of_changed_sources_are_removed(tmp_path):
    """numba keys a cache on the kernel's own file: an edit of a module it calls must remove the caches."""
    import common.numba_cache as nc

    for pkg in nc.SOURCE_PACKAGES:
        (tmp_path / pkg / "__pycache__").mkdir(parents=True)
        (tmp_path / pkg / "mod.py").write_text(f"X = 1  # {pkg}\n")
    cached = [tmp_path / "kmc" / "__pycache__" / "_kernels.f-1.py311.nbi",
              tmp_path / "kmc" / "__pycache__" / "_kernels.f-1.py311.1.nbc"]
    for f in cached:
        f.write_bytes(b"x")
    keep = tmp_path / "kmc" / "__pycache__" / "mod.cpython-311.pyc"
    keep.write_bytes(b"x")
    assert nc.purge_stale_kernels(tmp_path) == 2  # no stamp yet: caches of unknown sources go
    assert not any(f.exists() for f in cached) and keep.exists()
    for f in cached:
        f.write_bytes(b"x")
    assert nc.purge_stale_kernels(tmp_path) == 0  # same sources: the caches stay
    assert all(f.exists() for f in cached)
    (tmp_path / "lattice" / "mod.py").write_text("X = 2\n")  # a module the kernels call changes
    assert nc.purge_stale_kernels(tmp_path) == 2
    assert not any(f.exists() for f in cached)
