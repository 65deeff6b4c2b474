"""Plots of the validation-matrix report (PNG): D against 1/T, occupancy profiles, mixing counts, back-hops."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _f(v):
    return np.nan if v is None else float(v)


def _log_err(vals, errs):
    """Asymmetric error bars that stay positive on a log axis."""
    v = np.array([_f(x) for x in vals])
    e = np.nan_to_num(np.array([_f(x) for x in errs]))
    return np.vstack([np.minimum(e, 0.95 * v), e])


def plot_diffusion(report: dict, path: Path) -> bool:
    plt = _plt()
    cases = {k: v for k, v in report["cases"].items() if v.get("rows")}
    if not cases:
        return False
    n = len(cases)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (cid, c) in zip(axes[0], cases.items()):
        for sp, mk in (("X", "s"), ("defect", "o"), ("I", "^"), ("Br", "v")):
            rows = sorted([r for r in c["rows"] if r["species"] == sp and r["fit"] == "all" and r["cell"] == "md-cell"],
                          key=lambda r: r["temperature_K"])
            if not rows:
                continue
            x = np.array([1000.0 / r["temperature_K"] for r in rows])
            ax.errorbar(x, [_f(r["D_md"]) for r in rows],
                        yerr=_log_err([r["D_md"] for r in rows], [r["D_md_err"] for r in rows]), fmt=mk, color="k",
                        mfc="none" if sp != "X" else "k", capsize=2, label=f"MD {sp}")
            ax.errorbar(x * 1.004, [_f(r["D_kmc"]) for r in rows],
                        yerr=_log_err([r["D_kmc"] for r in rows], [r["D_kmc_err"] for r in rows]), fmt=mk,
                        color="C3", mfc="none" if sp != "X" else "C3", capsize=2, label=f"KMC {sp}")
        ax.set_yscale("log")
        ax.set_title(cid, fontsize=9)
        ax.set_xlabel("1000 / T (1/K)")
    axes[0][0].set_ylabel("D per defect (cm$^2$/s)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_profiles(report: dict, path: Path) -> bool:
    plt = _plt()
    prof = [p for c in report["cases"].values() for p in c.get("profiles", []) if p["fit"] == "all"]
    if not prof:
        return False
    fig, axes = plt.subplots(1, len(prof), figsize=(4.2 * len(prof), 3.3), squeeze=False)
    for ax, p in zip(axes[0], prof):
        planes = np.arange(len(p["md_fraction"]))
        ax.errorbar(planes, [_f(v) for v in p["md_fraction"]],
                    yerr=[_f(v) for v in (p["md_fraction_err"] if p["md_fraction_err"] is not None else [None] * planes.size)], fmt="ks", ms=3,
                    capsize=2, label="MD")
        ax.errorbar(planes + 0.1, [_f(v) for v in p["kmc_fraction"]], yerr=[_f(v) for v in p["kmc_fraction_err"]],
                    fmt="o", color="C3", ms=3, capsize=2, label="KMC")
        reg = np.asarray([] if p["region"] is None else p["region"], dtype=float)
        for k in np.flatnonzero(reg == 0):
            ax.axvspan(k - 0.5, k + 0.5, color="C0", alpha=0.08, lw=0)
        ax.set_title(f"{p['case']} {p['temperature_K']:g} K (I layer shaded)", fontsize=8)
        ax.set_xlabel("halide plane")
        ax.set_ylabel("defect time fraction")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_mixing(report: dict, path: Path) -> bool:
    plt = _plt()
    mix = [m for c in report["cases"].values() for m in c.get("mixing", []) if m["fit"] == "all"]
    if not mix:
        return False
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for k, m in enumerate(mix):
        for j, cur in enumerate(m["md_curves"]):
            ax.plot(cur["time_ps"], cur["events"], color=f"C{k}", lw=0.6, alpha=0.5,
                    label=f"MD runs {m['case']}" if j == 0 else None)
        ax.plot(m["kmc_curve"]["time_ps"], m["kmc_curve"]["events_mean"], color=f"C{k}", lw=2,
                label=f"KMC mean {m['case']}")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("mixing events")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_back_hops(report: dict, path: Path) -> bool:
    plt = _plt()
    corr = [c for case in report["cases"].values() for c in case.get("correlations", [])]
    if not corr:
        return False
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(corr) + 1.5), 3.4))
    x = np.arange(len(corr))
    ax.bar(x - 0.2, [_f(c["md"]["back_hop_fraction"]) for c in corr], 0.4,
           yerr=[_f(c["md"]["back_hop_err"]) for c in corr], label="MD", color="0.4")
    ax.bar(x + 0.2, [_f(c["kmc"]["back_hop_fraction"]) for c in corr], 0.4,
           yerr=[_f(c["kmc"]["back_hop_err"]) for c in corr], label="KMC", color="C3")
    ax.set_xticks(x, [f"{c['case']}\n{c['temperature_K']:g} K" for c in corr], fontsize=6, rotation=60)
    ax.set_ylabel("back-hop fraction")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(report: dict, out: Path) -> list[str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, fn in (("diffusion.png", plot_diffusion), ("profiles.png", plot_profiles),
                     ("mixing.png", plot_mixing), ("back_hops.png", plot_back_hops)):
        if fn(report, out / name):
            made.append(name)
    return made
