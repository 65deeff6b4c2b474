"""``kmc md analyze``: from trajectory files to a JSON summary and plots.

Per trajectory: defect tracking and labelled hop events
(:func:`md_reference.analysis.tracker.track_defects`), D by Eq. 1 for I, Br and all
halides (X), and, depending on the configuration, the defect occupancy per
layer with its Boltzmann free-energy profile (heterojunctions, Figure 4),
bridge-composition statistics (interstitials in mixed cells) and mixing
counts (nanodomains, Figure 5).

Per temperature: mean and standard error of D over runs, summed hop counts
and exposure times per environment class (rates n_c / exposure_c with
Poisson errors). Over temperatures: Arrhenius fits (Eq. 2) per species.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from common.provenance import file_sha256
from lattice.environment import N_CLASSES, class_label, decode_class
from lattice.species import BR, I
from md_reference.analysis.observables import (
    arrhenius,
    bridge_statistics,
    combine_runs,
    diffusion_by_species,
    diffusion_eq1,
    layer_occupancy,
    mixing_counts,
    msd_eq1,
    to_jsonable,
)
from md_reference.analysis.tracker import track_defects
from md_reference.md.trajectory import Trajectory, read_trajectory

log = logging.getLogger(__name__)

SCHEMA = "halide-kmc/md-analysis"
SCHEMA_VERSION = 1
SPECIES = ("X", "I", "Br")


def expand_paths(items) -> list[Path]:
    """Trajectory files from files and folders (``T*_r*.h5`` inside folders), sorted."""
    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(p.glob("T*_r*.h5"))
            if not found:
                raise ValueError(f"folder {str(p)!r} holds no trajectory files (T*_r*.h5)")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"trajectory {str(p)!r} not found")
    return out


def defect_path_A(sites: np.ndarray, lattice, lattice_constant_A: float) -> np.ndarray:
    """(n_frames, 3) unwrapped path (A) of a defect from its site per frame.

    Each step between consecutive frames is taken as the minimum image of the
    site displacement (a defect moves at most a few sites between frames).
    """
    s = np.asarray(sites, dtype=np.int64)
    c = lattice.coords(s[:1]).astype(np.int64)
    step = lattice.displacement(s[:-1], s[1:]) if s.size > 1 else np.zeros((0, 3), dtype=np.int64)
    path = np.concatenate([c, c + np.cumsum(step, axis=0)])
    return path * (0.5 * lattice_constant_A)


def _orientation_record(traj, hal, fw, track, events: list[dict]) -> dict:
    """Per-frame bridge orientations, rotations and hop labels (:mod:`md_reference.analysis.orientation`).

    Each interstitial event dict gains ``relation`` and ``landing``; the per-hop list is not repeated.
    """
    from md_reference.analysis.orientation import label_orientations, smoothed_positions
    from md_reference.analysis.tracker import remove_framework_drift

    pos = traj.positions_A[:, hal]
    if np.any(fw):
        pos = remove_framework_drift(pos, traj.positions_A[:, fw])
    smooth = smoothed_positions(pos, None, int(track.params["window_frames"]))
    out = label_orientations(track, smooth)
    for e, h in zip(events, out.pop("hops")):
        e.update(h)
    return out


def analyze_trajectory(traj: Trajectory, tracker_kwargs: dict | None = None) -> dict:
    """Analysis record of one run (JSON-ready after :func:`to_jsonable`)."""
    sym = traj.symbols
    hal = np.isin(sym, ("I", "Br"))
    fw = np.isin(sym, ("Pb", "Cs"))
    species = np.where(sym[hal] == "I", I, BR).astype(np.int8)
    T = traj.temperature_set_K
    track = track_defects(traj.positions_A[:, hal], traj.time_ps, species, traj.lattice,
                          traj.lattice_constant_A, framework_positions_A=traj.positions_A[:, fw],
                          **(tracker_kwargs or {}))
    D = diffusion_by_species(traj.positions_A, traj.time_ps, sym, species=SPECIES)
    D_defect = math.nan
    if track.n_defects == 1 and np.all(track.defect_site[:, 0] >= 0):
        path = defect_path_A(track.defect_site[:, 0], traj.lattice, traj.lattice_constant_A)
        D_defect = diffusion_eq1(path[:, None, :], traj.time_ps)
    lags, msd = msd_eq1(traj.positions_A[:, hal], traj.time_ps)
    rec = {
        "file": traj.path,
        "temperature_K": T,
        "run_index": traj.provenance.get("run", {}).get("run_index"),
        "duration_ps": float(traj.time_ps[-1] - traj.time_ps[0]),
        "n_frames": traj.n_frames,
        "complete": traj.provenance.get("complete"),
        "mean_temperature_K": float(np.mean(traj.temperature_K[1:])) if traj.n_frames > 1 else None,
        "lattice_constant_A": traj.lattice_constant_A,
        "configuration": traj.configuration.describe(),
        "halide_species": species,
        "potential": traj.provenance.get("potential", {}),
        "D_eq1_cm2_s": D,
        "D_defect_cm2_s": D_defect,
        "msd_X": {"lag_ps": lags, "msd_A2": msd},
        "tracking": track.summary(),
    }
    if any(k == "interstitial" for k in rec["tracking"]["defect_kinds"]):
        rec["orientation"] = _orientation_record(traj, hal, fw, track, rec["tracking"]["events"])
    config = traj.configuration
    d_site = track.defect_site[:, 0] if track.n_defects else np.zeros(0, np.int64)
    bridge = track.bridge_n_br[:, 0] if track.n_defects else np.zeros(0, np.int8)
    kinds = rec["tracking"]["defect_kinds"]
    if config.kind == "heterojunction" and track.n_defects == 1:
        # Frames per independent sample: the mean residence (run length / (hops + 1)).
        corr = max(1.0, traj.n_frames / (track.n_hops + 1))
        rec["layer_occupancy"] = layer_occupancy(d_site, config, T, correlation_frames=corr,
                                                 bridge_n_br=bridge if kinds == ["interstitial"] else None)
    if kinds == ["interstitial"] and np.any(bridge >= 0) and 0.0 < config.x_I < 1.0:
        rec["bridge_statistics"] = bridge_statistics(bridge, 1.0 - config.x_I, T, defect_site=d_site)
    if config.kind == "nanodomain":
        rec["mixing"] = mixing_counts(config, track.site_assignment, species)
        rec["mixing"]["time_ps"] = traj.time_ps
    return rec


def _per_temperature(records: list[dict]) -> list[dict]:
    groups: dict[float, list[dict]] = defaultdict(list)
    for r in records:
        groups[float(r["temperature_K"])].append(r)
    out = []
    for T in sorted(groups):
        rs = groups[T]
        hops = np.zeros(N_CLASSES, dtype=np.int64)
        expo = np.zeros(N_CLASSES)
        for r in rs:
            for c in r["tracking"]["classes"]:
                hops[c["cls"]] += c["n_hops"]
                expo[c["cls"]] += c["exposure_ps"]
        classes = []
        for c in np.flatnonzero((hops > 0) | (expo > 0)):
            rate = hops[c] / expo[c] if expo[c] > 0 else math.nan
            classes.append({"cls": int(c), "label": class_label(int(c)), **decode_class(int(c)),
                            "n_hops": int(hops[c]), "exposure_ps": float(expo[c]),
                            "rate_per_ps": rate, "rate_err_per_ps": math.sqrt(hops[c]) / expo[c] if expo[c] else None})
        entry = {
            "temperature_K": T,
            "n_runs": len(rs),
            "total_ps": float(sum(r["duration_ps"] for r in rs)),
            "n_hops": int(sum(r["tracking"]["n_hops"] for r in rs)),
            "n_hops_per_run": [r["tracking"]["n_hops"] for r in rs],
            "n_hops_unclassified": int(sum(r["tracking"]["n_hops"] - r["tracking"]["n_hops_classified"] for r in rs)),
            "n_recrossings": int(sum(r["tracking"]["n_recrossings"] for r in rs)),
            "n_complex_frames": int(sum(r["tracking"]["n_complex_frames"] for r in rs)),
            "D_eq1_cm2_s": {sp: combine_runs([r["D_eq1_cm2_s"][sp] for r in rs]) for sp in SPECIES},
            "D_defect_cm2_s": combine_runs([r["D_defect_cm2_s"] for r in rs]),
            "classes": classes,
        }
        if all("bridge_statistics" in r for r in rs):
            frames = np.sum([r["bridge_statistics"]["frames"] for r in rs], axis=0)
            entry["bridge_frames"] = {"II": int(frames[0]), "IBr": int(frames[1]), "BrBr": int(frames[2])}
        out.append(entry)
    return out


def analyze_files(files, tracker_kwargs: dict | None = None, plots_dir: Path | None = None) -> dict:
    """Analyse trajectory files; returns the JSON-ready summary (and writes plots)."""
    from common.provenance import provenance  # noqa: PLC0415

    records, inputs = [], []
    for f in files:
        f = Path(f)
        traj = read_trajectory(f)
        if not traj.provenance.get("complete"):
            log.warning("%s is incomplete (%d frames); analysing what is there", f, traj.n_frames)
        log.info("analysing %s (%d frames)", f, traj.n_frames)
        records.append(analyze_trajectory(traj, tracker_kwargs))
        inputs.append({"file": str(f), "sha256": file_sha256(f)})
    per_T = _per_temperature(records)
    arr = {}
    if len(per_T) >= 2:
        for sp in SPECIES:
            T = [e["temperature_K"] for e in per_T]
            Dm = [e["D_eq1_cm2_s"][sp]["mean"] for e in per_T]
            De = [e["D_eq1_cm2_s"][sp]["sem"] for e in per_T]
            try:
                arr[sp] = arrhenius(T, Dm, De)
            except ValueError as exc:
                arr[sp] = {"error": str(exc)}
    summary = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "units": {"D": "cm^2/s", "time": "ps", "rate": "1/ps", "energy": "eV", "temperature": "K"},
        "inputs": inputs,
        "tracker": records[0]["tracking"]["params"] if records else {},
        "per_temperature": per_T,
        "arrhenius": arr,
        "runs": records,
        "provenance": provenance(),
        "notes": ["D from Eq. 1 is the sum over all atoms of a species (one defect per cell)",
                  "ReaxFF defects are neutral (QEq); the paper's are charged"],
    }
    summary = to_jsonable(summary)
    if plots_dir is not None:
        try:
            write_plots(summary, Path(plots_dir))
        except Exception as exc:  # noqa: BLE001 - plots must not lose the analysis
            log.warning("plots failed: %s", exc)
    return summary


def _fmt(m, e=None) -> str:
    if m is None or (isinstance(m, float) and not math.isfinite(m)):
        return "n/a"
    if e is None or (isinstance(e, float) and not math.isfinite(e)):
        return f"{m:.3e}"
    return f"{m:.3e} +- {e:.1e}"


def print_report(summary: dict, stream) -> None:
    w = stream.write
    w(f"{'T (K)':>6} {'runs':>4} {'ps':>7} {'hops':>5}  {'D_X (cm2/s)':>22} {'D_I':>22} {'D_Br':>22}\n")
    for e in summary["per_temperature"]:
        D = e["D_eq1_cm2_s"]
        w(f"{e['temperature_K']:6g} {e['n_runs']:4d} {e['total_ps']:7.1f} {e['n_hops']:5d}  "
          f"{_fmt(D['X']['mean'], D['X']['sem']):>22} {_fmt(D['I']['mean'], D['I']['sem']):>22} "
          f"{_fmt(D['Br']['mean'], D['Br']['sem']):>22}\n")
        Dd = e["D_defect_cm2_s"]
        w(f"{'':6} defect D (tracked path) {_fmt(Dd['mean'], Dd['sem'])} cm2/s\n")
        w(f"{'':6} hops per run {e['n_hops_per_run']}; recrossings {e['n_recrossings']}; "
          f"unclassified {e['n_hops_unclassified']}; complex frames {e['n_complex_frames']}\n")
        for c in e["classes"]:
            if c["n_hops"]:
                w(f"{'':6}   {c['label']:<22} {c['n_hops']:4d} hops  rate {_fmt(c['rate_per_ps'], c['rate_err_per_ps'])} /ps\n")
        if "bridge_frames" in e:
            w(f"{'':6} bridge frames {e['bridge_frames']}\n")
    for sp, fit in summary.get("arrhenius", {}).items():
        if "Ea_eV" in fit:
            w(f"Arrhenius D_{sp}: Ea = {_fmt(fit['Ea_eV'], fit['Ea_err_eV'])} eV, D0 = {_fmt(fit['D0'], fit['D0_err'])} "
              f"cm2/s, D(300 K) = {_fmt(fit['D_ref'])} cm2/s\n")


def write_plots(summary: dict, out: Path) -> None:
    """MSD, Arrhenius, layer profile and mixing plots (PNG)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in summary["runs"]:
        ax.plot(r["msd_X"]["lag_ps"], r["msd_X"]["msd_A2"], lw=0.8, label=f"{r['temperature_K']:g} K r{r['run_index']}")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel(r"$\sum_i |\Delta r_i|^2$ halides (Å$^2$)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "md_msd.png", dpi=120)
    plt.close(fig)
    per_T = summary["per_temperature"]
    if len(per_T) >= 1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for sp, mk in (("X", "s"), ("I", "o"), ("Br", "^")):
            T = np.array([e["temperature_K"] for e in per_T], dtype=float)
            m = np.array([e["D_eq1_cm2_s"][sp]["mean"] if e["D_eq1_cm2_s"][sp]["mean"] is not None else np.nan
                          for e in per_T], dtype=float)
            s = np.array([e["D_eq1_cm2_s"][sp]["sem"] if e["D_eq1_cm2_s"][sp]["sem"] is not None else np.nan
                          for e in per_T], dtype=float)
            ok = np.isfinite(m) & (m > 0)
            if ok.any():
                ax.errorbar(1000.0 / T[ok], m[ok], yerr=np.where(np.isfinite(s[ok]), s[ok], 0), fmt=mk, label=sp)
            fit = summary.get("arrhenius", {}).get(sp, {})
            if "Ea_eV" in fit:
                x = np.linspace(1000.0 / T.max(), 1000.0 / T.min(), 20)
                ax.plot(x, fit["D0"] * np.exp(-fit["Ea_eV"] / (8.617333262e-5 * 1000.0 / x)), "--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("1000 / T (1/K)")
        ax.set_ylabel("D, Eq. 1 (cm$^2$/s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "md_arrhenius.png", dpi=120)
        plt.close(fig)
    lo = [r for r in summary["runs"] if "layer_occupancy" in r]
    if lo:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r in lo:
            L = r["layer_occupancy"]
            ax.plot(L["plane"], L["F_eV"], "o-", ms=3, lw=0.8, label=f"r{r['run_index']}")
        ax.set_xlabel("halide plane")
        ax.set_ylabel("F (eV)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "md_layer_energy.png", dpi=120)
        plt.close(fig)
    mx = [r for r in summary["runs"] if "mixing" in r]
    if mx:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r in mx:
            ax.plot(r["mixing"]["time_ps"], r["mixing"]["n_mixed"], lw=0.8, label=f"r{r['run_index']}")
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("mixed halides")
        fig.tight_layout()
        fig.savefig(out / "md_mixing.png", dpi=120)
        plt.close(fig)
