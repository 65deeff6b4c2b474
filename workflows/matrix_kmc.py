"""KMC side of the validation matrix: catalogs fitted from the MD records, KMC on the MD cell and upscaled.

For a case the MD records give, per temperature, hop counts and exposures per
environment class (the maximum-likelihood data of :mod:`rates.fit`). Two
catalogs are fitted from them:

``all``
    every run at every temperature of the case (in-sample);
``held-out``
    for cases with several temperatures, leave that temperature out (the row
    at T is predicted from the others); for single-temperature cases, fit on
    the even-numbered runs and compare with the odd-numbered ones.

The KMC runs on the MD cell (same shape, arrangement, lattice constant from
the MD records, one defect) and, for diffusion cases, on an upscaled cell
with the same defect density. Each replica logs every event; the log is
replayed on atom identities (:mod:`kmc.hoplog`) so that MD and KMC go through
the same estimators (:mod:`common.diffusion`).
"""

from __future__ import annotations

import math

import numpy as np

from common.diffusion import HopLog, lattice_lag_D
from lattice import HalideSublattice, build_configuration, place_defects
from lattice.environment import N_CLASSES
from workflows.matrix_spec import Case

PS = 1e-12


def md_observations(records_by_T: dict[float, list[dict]], temperatures=None, runs=None):
    """:class:`rates.fit.HopObservations` of the chosen temperatures and run indices."""
    from rates.fit import observations_from_counts  # noqa: PLC0415

    Ts, hops, expo, src = [], [], [], []
    for T, recs in sorted(records_by_T.items()):
        if temperatures is not None and T not in temperatures:
            continue
        n = np.zeros(N_CLASSES, dtype=np.int64)
        e = np.zeros(N_CLASSES)
        used = 0
        for r in recs:
            if runs is not None and r["run_index"] not in runs:
                continue
            used += 1
            for c in r["tracking"]["classes"]:
                n[c["cls"]] += c["n_hops"]
                e[c["cls"]] += c["exposure_ps"] * PS
            src.append({"file": r["file"], "sha256": r["trajectory_sha256"]})
        if used:
            Ts.append(T)
            hops.append(n)
            expo.append(e)
    if not Ts:
        return None
    return observations_from_counts(np.array(Ts), np.array(hops), np.array(expo), sources=src)


FIT_MODE_NAMES = {"per-class": "per-class", "shared": "shared-prefactor", "fixed": "fixed-prefactor"}


def fit_catalog(obs, mode: str, name: str, records=None, interstitial_model: str = "orientation-free"):
    """Catalog fitted to ``obs`` over the embedded default (its energy model, unseen classes).

    With hops at a single temperature an Arrhenius pair cannot be separated:
    the fit falls back to ``per-class`` mode, which fixes the prefactor of such
    classes to the base catalog's and fits the barrier (the rate at that
    temperature is then reproduced exactly).
    """
    from rates.fit import build_catalog_from_md  # noqa: PLC0415

    n_T = int(np.count_nonzero(obs.hop_counts.sum(axis=1) > 0))
    m = FIT_MODE_NAMES[mode] if n_T >= 2 else "per-class"
    cat = build_catalog_from_md(obs, base_catalog="default", mode=m, name=name)
    if interstitial_model == "oriented" and records:
        cat = orient_from_records(cat, records)
    return cat


def orient_from_records(cat, records: list[dict]):
    """Oriented copy of ``cat`` with rotation rates fitted from the interstitial hop pairs of ``records``.

    Records without interstitial pairs (vacancy cases) leave ``cat`` as it is.
    With hops at one temperature the hop activation energy is the mean
    interstitial barrier of ``cat`` (see :func:`rates.orientation_fit.fit_rotations`).
    """
    from lattice.environment import N_VACANCY_CLASSES  # noqa: PLC0415
    from rates.orientation_fit import fit_rotations, orient_catalog  # noqa: PLC0415

    e_i = cat.E_KRA_eV[N_VACANCY_CLASSES:]
    fits = fit_rotations(records, single_T_hop_E_eV=float(np.nanmean(e_i)))
    if not fits:
        return cat
    return orient_catalog(cat, fits, name=cat.name,
                          md_sources=[{"file": r["file"], "sha256": r["trajectory_sha256"]} for r in records])


def kmc_cell(case: Case, shape, seed: int):
    """Configuration and defects for the KMC: the MD arrangement on the MD cell, the same statistics elsewhere.

    The MD cell of a random mix is built with structure seed 0; the same seed
    gives the same arrangement here. Defects: one per MD-cell volume.
    """
    lat = HalideSublattice(tuple(int(s) for s in shape))
    kw = dict(case.params)
    if case.structure == "random":
        kw["seed"] = 0
    config = build_configuration(lat, case.structure, **kw)
    n = max(1, round(lat.n_sites / (3 * int(np.prod(case.shape)))))
    n_v = n if case.defect == "vacancy" else 0
    n_i = n if case.defect == "interstitial" else 0
    where = case.where if isinstance(case.where, str) else "random"
    defects = place_defects(config, n_v, n_i, where=where, added_species="same", seed=int(seed))
    return config, defects


def run_replicas(case: Case, catalog, shape, temperature_K: float, lattice_constant_A: float, time_s: float,
                 replicas: int, seed: int, n_obs: int = 50) -> list[dict]:
    """KMC replicas with full event logs; per replica the hop logs, plane residences, mixing counts, class counts."""
    from kmc.hoplog import replay  # noqa: PLC0415
    from kmc.simulation import Simulation  # noqa: PLC0415

    out = []
    for r in range(int(replicas)):
        ss = np.random.SeedSequence([int(seed), int(round(temperature_K * 1000)), r])
        cfg_seed, kmc_seed = ss.spawn(2)
        config, defects = kmc_cell(case, shape, int(cfg_seed.generate_state(1)[0]))
        sim = Simulation(config, defects, catalog, temperature_K, kmc_seed, event_log=1 << 62)
        times = np.linspace(0.0, time_s, n_obs + 1)
        mixing = [sim.mixing_counts().sum()]
        for t in times[1:]:
            sim.advance(float(t))
            mixing.append(sim.mixing_counts().sum())
        sim.flush_occupancy()
        atoms, paths = replay(config, defects, sim.event_log(), lattice_constant_A, sim.time_s)
        out.append({
            "atoms": atoms, "paths": paths, "n_defects": len(defects), "n_events": sim.n_events,
            "hop_count": sim.state.hop_count.copy(), "occ_time": sim.state.occ_time.sum(axis=0).copy(),
            "mixing_time_s": times, "mixing": np.asarray(mixing, dtype=np.int64),
            "sites_per_plane": config.lattice.sites_per_plane(config.axis),
        })
    return out


def per_replica_D(reps: list[dict], lag_s: float, species: str) -> list[float]:
    """Eq. 1 ``D_tau`` per replica and per defect (cm^2/s), or the defect-path D for species "defect"."""
    vals = []
    for rep in reps:
        if species == "defect":
            ds = [lattice_lag_D(p, lag_s, "X", A2_per_time_to_cm2_s=1e-16) for p in rep["paths"]]
            vals.append(float(np.mean(ds)))
        else:
            if species != "X" and not np.any(rep["atoms"].atom_species == {"I": 0, "Br": 1}[species]):
                return []
            vals.append(lattice_lag_D(rep["atoms"], lag_s, species, A2_per_time_to_cm2_s=1e-16) / rep["n_defects"])
    return vals


def md_hoplogs(recs: list[dict]) -> tuple[list[HopLog], list[HopLog]]:
    """Hop logs (times in ps) of the atoms and of the defect path of each MD record."""
    atoms, paths = [], []
    for r in recs:
        lh = r["lattice_hops"]
        sp = np.asarray(r["halide_species"], dtype=np.int8)
        atoms.append(HopLog.from_arrays(lh["time_ps"], lh["atom"], np.asarray(lh["step_A"]).reshape(-1, 3), sp,
                                        r["duration_ps"]))
        ev = [e for e in r["tracking"]["events"] if e["defect"] == 0]
        lat = HalideSublattice(tuple(r["configuration"]["shape"]))
        st = (lat.displacement([e["from_site"] for e in ev], [e["to_site"] for e in ev]) * 0.5 * r["lattice_constant_A"]
              if ev else np.zeros((0, 3)))
        paths.append(HopLog.from_arrays([e["time_ps"] for e in ev], np.zeros(len(ev), dtype=np.int64), st,
                                        np.zeros(1, dtype=np.int8), r["duration_ps"]))
    return atoms, paths


def unseen_fraction(reps: list[dict], obs) -> float:
    """Fraction of KMC hops in classes without MD hops in the fitting data."""
    seen = obs.hop_counts.sum(axis=0) > 0
    tot = np.sum([r["hop_count"] for r in reps], axis=0)
    n = tot.sum()
    return float(tot[~seen].sum() / n) if n else math.nan
