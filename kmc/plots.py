"""Plots of a run directory: MSD, defect occupancy profile, composition, mixing, Arrhenius."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kmc import analysis  # noqa: E402
from lattice.species import BRIDGE_NAMES, HALIDES  # noqa: E402
from lattice.sublattice import HalideSublattice  # noqa: E402

COLORS = {"I": "tab:blue", "Br": "tab:red", "all": "k"}


def _run_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "runs").glob("*.h5") if not p.name.endswith(".ckpt.h5"))


def plot_msd(out: Path) -> Path:
    """Eq. 1 sum of squared displacements per species (per defect) vs time, every run."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for path in _run_files(out):
        with h5py.File(path, "r") as f:
            t = f["obs/time_s"][()]
            m = f["obs/msd_species"][()]
            a = float(f.attrs["lattice_constant_A"])
            nd = sum(json.loads(f.attrs["n_defects_json"]).values())
            T = float(f.attrs["temperature_K"])
        fac = (0.5 * a) ** 2 / nd
        for s, sp in enumerate(HALIDES):
            ax.plot(t * 1e9, m[:, s] * fac, color=COLORS[sp], alpha=0.6, lw=1,
                    label=f"{sp} ({T:g} K)" if path == _run_files(out)[0] else None)
    ax.set_xlabel("time (ns)")
    ax.set_ylabel(r"$\sum_i |r_i(t)-r_i(0)|^2$ per defect ($\AA^2$)")
    ax.set_title("Tracer MSD by species (Eq. 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "msd.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def plot_occupancy(out: Path, cfg, summary: dict) -> Path:
    """Defect residence per halide plane along the profile axis, per site (Figure 4 analysis)."""
    lat = HalideSublattice(tuple(cfg.lattice.shape))
    with h5py.File(_run_files(out)[0], "r") as f:
        axis = int(json.loads(f.attrs["configuration_json"])["axis"])
    per_site = lat.sites_per_plane(axis)
    fig, ax = plt.subplots(figsize=(7, 4))
    for entry in summary["per_temperature"]:
        occ = entry["occupancy_time_per_plane_s"]
        total = sum(np.sum(v) for v in occ.values())
        for name, v in occ.items():
            v = np.asarray(v)
            if v.sum() <= 0:
                continue
            ax.plot(np.arange(v.size) / 2.0, v / total / per_site, marker=".", lw=1,
                    label=f"{name} ({entry['temperature_K']:g} K)")
    ax.set_xlabel(f"halide plane position along {'xyz'[axis]} (unit cells)")
    ax.set_ylabel("defect occupancy per site (fraction of time)")
    ax.set_title("Defect occupancy profile")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "occupancy_profile.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def plot_composition(out: Path, cfg) -> Path:
    """Initial vs final I fraction per plane, and a final snapshot of the central plane."""
    lat = HalideSublattice(tuple(cfg.lattice.shape))
    path = _run_files(out)[0]
    with h5py.File(path, "r") as f:
        pc = f["obs/plane_count"][()]
        occ = f["final/occ"][()]
        axis = int(json.loads(f.attrs["configuration_json"])["axis"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for row, lab in ((0, "t = 0"), (-1, "final")):
        tot = pc[row].sum(axis=0).astype(float)
        frac = np.divide(pc[row, 0], tot, out=np.full(tot.shape, np.nan), where=tot > 0)
        a1.plot(np.arange(frac.size) / 2.0, frac, marker=".", lw=1, label=lab)
    a1.set_xlabel(f"plane position along {'xyz'[axis]} (unit cells)")
    a1.set_ylabel("I fraction")
    a1.set_title(f"Composition profile ({path.stem})")
    a1.legend()
    # snapshot: PbX2 plane through the middle along z (sites of types 0 and 1 at Z = 2 * (nz // 2))
    c = lat.coords()
    zmid = 2 * (lat.shape[2] // 2)
    sel = c[:, 2] == zmid
    from matplotlib.colors import ListedColormap

    grid = np.full((2 * lat.shape[0], 2 * lat.shape[1]), np.nan)
    grid[c[sel, 0], c[sel, 1]] = occ[sel]
    cmap = ListedColormap(["tab:blue", "tab:red", "black", "gold"]).with_extremes(bad="white")
    a2.imshow(grid.T, origin="lower", cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest",
              extent=(0, lat.shape[0], 0, lat.shape[1]))
    a2.set_title(f"final PbX2 plane z = {zmid / 2:g}: I blue, Br red, vacancy black, bridge gold", fontsize=8)
    a2.set_xlabel("x (cells)")
    a2.set_ylabel("y (cells)")
    fig.tight_layout()
    p = out / "composition.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def plot_mixing(out: Path) -> Path | None:
    """Nanodomain mixing counts vs time (Figure 5 analysis)."""
    files = _run_files(out)
    with h5py.File(files[0], "r") as f:
        if json.loads(f.attrs["configuration_json"])["kind"] != "nanodomain":
            return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for path in files:
        with h5py.File(path, "r") as f:
            t = f["obs/time_s"][()]
            m = f["obs/mixing"][()]
        ax.plot(t * 1e9, m[:, 0], color="tab:purple", alpha=0.7, lw=1)
        ax.plot(t * 1e9, m[:, 1], color="tab:green", alpha=0.7, lw=1, ls="--")
    ax.plot([], [], color="tab:purple", label="domain halides outside")
    ax.plot([], [], color="tab:green", ls="--", label="matrix halides inside")
    ax.set_xlabel("time (ns)")
    ax.set_ylabel("count")
    ax.set_title("Nanodomain mixing")
    ax.legend()
    fig.tight_layout()
    p = out / "mixing.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def plot_arrhenius(out: Path, summary: dict) -> Path | None:
    """ln D vs 1/T with the fitted Arrhenius lines (Figure 2/3 style)."""
    per_T = summary["per_temperature"]
    if len(per_T) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    T = np.array([e["temperature_K"] for e in per_T])
    for key, style in (("D_eq1_per_defect_cm2_s", "s"), ("D_defect_cm2_s", "o")):
        for sub in per_T[0][key]:
            D = np.array([e[key][sub]["mean"] if e[key][sub]["mean"] is not None else np.nan for e in per_T], float)
            err = np.array([e[key][sub]["sem"] if e[key][sub]["sem"] is not None else np.nan for e in per_T], float)
            lab = f"{'Eq.1' if style == 's' else 'defect'} {sub}"
            ax.errorbar(1000.0 / T, D, yerr=np.nan_to_num(err), fmt=style, capsize=3, label=lab,
                        color=COLORS.get(sub))
            fit = summary.get("arrhenius", {}).get(f"{key}:{sub}", {})
            if "Ea_eV" in fit and fit["Ea_eV"] is not None:
                x = np.linspace(T.min(), T.max(), 50)
                ax.plot(1000.0 / x, fit["D0"] * np.exp(-fit["Ea_eV"] / (analysis.K_B_EV * x)), ls="--",
                        color=COLORS.get(sub), lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel(r"D (cm$^2$/s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "arrhenius.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def make_all(out: str | Path, cfg, summary: dict) -> list[Path]:
    out = Path(out)
    made = [plot_msd(out), plot_occupancy(out, cfg, summary), plot_composition(out, cfg),
            plot_mixing(out), plot_arrhenius(out, summary)]
    return [p for p in made if p is not None]


__all__ = ["make_all", "BRIDGE_NAMES"]
