"""Heterojunction and nanodomain observables of a target table (``[[check]]``): measured, or fitted.

A ``[[check]]`` runs the KMC (``kmc run``'s engine and summary) at the start
and at the calibrated catalog and reports model against target side by side,
so a table says which targets a preset meets and which it does not. With
``fit = true`` it is also a residual of the fit (it needs a parameter that
moves it, e.g. a ``ce_defect`` term of the cluster expansion for an interface
barrier); without, it is measured only::

    [[check]]
    id = "E_i vacancy, Br-rich"
    kind = "interface_barrier"      # F(interface PbX2 planes) - F(Br layer), from the KMC occupancy
    defect = "vacancy"              # vacancy | interstitial (bridge occupancy)
    interface = "Br-rich"           # I-rich | Br-rich
    shape = [16, 6, 6]              # stacked along x: thickness_I + thickness_Br cells per period
    thickness_I = 8
    thickness_Br = 8
    temperature_K = 600
    time_ns = 2                     # simulated time per replica (or events = N, KMC events per replica)
    replicas = 20
    value = 130
    err = 20
    unit = "meV"                    # eV | meV
    fit = true                      # a residual of the fit (default false: measured and reported only)

    [[check]]
    id = "Fig. 5 Br domain, vacancy"
    kind = "mixing_events"          # halides of the domain outside it + of the matrix inside it, at the end
    defect = "vacancy"
    domain_species = "Br"
    shape = [8, 8, 8]
    domain_size = 4
    temperature_K = 600
    time_ns = 10
    replicas = 5
    value = 0                       # err optional: default the Poisson error sqrt(max(value, 1))

Interface barrier: the defect free energy per site of a plane is
``F = -kT ln(occupancy time per site)``; ``E_i`` is F of the interface PbX2
planes less F of the Br layer (its planes more than one plane away from an
interface), from the occupancy pooled over the replicas; its error is the
spread of the per-replica values. Mixing events: the mean over the replicas
of the final count, error the standard error.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np

CHECK_KINDS = ("interface_barrier", "mixing_events")
CHECK_KEYS = {
    "interface_barrier": {"id", "kind", "defect", "interface", "shape", "thickness_I", "thickness_Br",
                          "temperature_K", "events", "time_ns", "replicas", "value", "err", "unit", "fit"},
    "mixing_events": {"id", "kind", "defect", "domain_species", "shape", "domain_size", "temperature_K",
                      "time_ns", "replicas", "value", "err", "fit"},
}
UNITS = {"eV": 1.0, "meV": 1e-3}


class CheckError(ValueError):
    """A ``[[check]]`` entry that cannot be run, with the field named."""


@dataclasses.dataclass(frozen=True)
class Check:
    id: str
    kind: str
    defect: str
    temperature_K: float
    replicas: int
    config: dict  # the kmc run config sections of the check (lattice, configuration, defects, run limits)
    value: float  # eV for interface_barrier, a count for mixing_events
    err: float
    unit: str
    fit: bool = False  # a residual of the fit, not only measured


def _int(v, where, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise CheckError(f"{where} must be an integer >= {lo}, got {v!r}")
    return v


def _pos(v, where, allow_zero=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
            or (v == 0 and not allow_zero):
        raise CheckError(f"{where} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")
    return float(v)


def load_checks(raw, seed: int) -> tuple[Check, ...]:
    """Checks from the ``check`` list of a target table; every problem names the field."""
    from kmc.config import ConfigError, resolve  # noqa: PLC0415
    from kmc.runner import build_inputs  # noqa: PLC0415

    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CheckError("check must be a list of tables ([[check]])")
    out, ids = [], set()
    for n, c in enumerate(raw):
        where = f"check[{n}]"
        if not isinstance(c, dict):
            raise CheckError(f"{where} must be a table")
        kind = c.get("kind")
        if kind not in CHECK_KINDS:
            raise CheckError(f"{where}.kind must be one of {list(CHECK_KINDS)}, got {kind!r}")
        bad = set(c) - CHECK_KEYS[kind]
        if bad:
            raise CheckError(f"{where}: unknown key(s) {sorted(bad)} for kind {kind!r}; valid: "
                             f"{sorted(CHECK_KEYS[kind])}")
        cid = c.get("id")
        if not isinstance(cid, str) or not cid:
            raise CheckError(f"{where}.id must be a non-empty string")
        if cid in ids:
            raise CheckError(f"{where}: duplicate id {cid!r}")
        ids.add(cid)
        where = f"check {cid!r}"
        defect = c.get("defect")
        if defect not in ("vacancy", "interstitial"):
            raise CheckError(f"{where}.defect must be 'vacancy' or 'interstitial', got {defect!r}")
        T = _pos(c.get("temperature_K"), f"{where}.temperature_K")
        reps = _int(c.get("replicas", 4), f"{where}.replicas", 2)
        shape = c.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) for s in shape)):
            raise CheckError(f"{where}.shape must be 3 integers, got {shape!r}")
        defects = {"vacancies": int(defect == "vacancy"), "interstitials": int(defect == "interstitial")}
        if kind == "interface_barrier":
            unit = c.get("unit")
            if unit not in UNITS:
                raise CheckError(f"{where}.unit must be one of {list(UNITS)}, got {unit!r}")
            scale = UNITS[unit]
            conf = {"kind": "heterojunction", "interface": c.get("interface"),
                    "thickness_I": c.get("thickness_I", 8), "thickness_Br": c.get("thickness_Br", 8)}
            if "time_ns" in c:  # the set-up of an MD comparison: the same simulated time
                run = {"time_s": _pos(c["time_ns"], f"{where}.time_ns") * 1e-9, "max_events": 10**12}
            else:
                run = {"max_events": _int(c.get("events", 2_000_000), f"{where}.events", 1000), "time_s": 1.0}
            defects["placement"] = "interface"
            value = float(c.get("value")) * scale if isinstance(c.get("value"), (int, float)) else None
            if value is None or not math.isfinite(value):
                raise CheckError(f"{where}.value must be a number")
            err = _pos(c.get("err"), f"{where}.err") * scale
        else:
            unit = "events"
            conf = {"kind": "nanodomain", "domain_species": c.get("domain_species"),
                    "domain_size": c.get("domain_size", 4)}
            run = {"time_s": _pos(c.get("time_ns"), f"{where}.time_ns") * 1e-9, "max_events": 10**12}
            defects["placement"] = "domain"
            value = _pos(c.get("value"), f"{where}.value", allow_zero=True)
            err = _pos(c["err"], f"{where}.err") if "err" in c else math.sqrt(max(value, 1.0))
        cfg = {"lattice": {"shape": shape}, "configuration": conf, "defects": defects,
               "run": {**run, "temperatures_K": [T], "replicas": reps, "workers": 1, "seed": int(seed) + n,
                       "n_observations": 20},
               "output": {"plots": False}}
        try:  # every config problem (e.g. a shape that is no multiple of the period) now, before any KMC
            build_inputs(resolve(cfg), 0, 0)
        except (ConfigError, ValueError) as exc:
            raise CheckError(f"{where}: {exc}") from None
        fit = c.get("fit", False)
        if not isinstance(fit, bool):
            raise CheckError(f"{where}.fit must be true or false, got {fit!r}")
        out.append(Check(cid, kind, defect, T, reps, cfg, value, err, unit, fit))
    return tuple(out)


def _free_energy_planes(occ_time, cfgobj, T) -> np.ndarray:
    from common.units import K_B_EV  # noqa: PLC0415

    spp = cfgobj.lattice.sites_per_plane(cfgobj.axis)
    with np.errstate(divide="ignore"):
        return -K_B_EV * T * np.log(np.asarray(occ_time, dtype=np.float64) / spp)


def interface_barrier(occ_time, cfgobj, T) -> float:
    """F(interface PbX2 planes) - F(Br layer, planes more than one away from an interface), eV."""
    from lattice.species import BR  # noqa: PLC0415

    occ = np.asarray(occ_time, dtype=np.float64)
    spp = cfgobj.lattice.sites_per_plane(cfgobj.axis).astype(np.float64)
    n = occ.size
    iface = np.asarray(cfgobj.interface_planes)
    dist = np.min(np.abs((np.arange(n)[:, None] - iface[None, :] + n // 2) % n - n // 2), axis=1)
    br = (np.asarray(cfgobj.plane_region) == BR) & (dist > 1)
    from common.units import K_B_EV  # noqa: PLC0415

    p_i = occ[iface].sum() / spp[iface].sum()
    p_b = occ[br].sum() / spp[br].sum()
    if p_i <= 0 or p_b <= 0:
        return math.inf if p_i <= 0 else -math.inf
    return float(-K_B_EV * T * (math.log(p_i) - math.log(p_b)))


def run_check(check: Check, catalog_path: str) -> dict:
    """The check's KMC with one catalog: model value, error and the per-replica values."""
    from kmc.config import resolve  # noqa: PLC0415
    from kmc.runner import build_inputs, run_all  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="kmc-check-") as d:
        cfg = resolve({**check.config, "run": {**check.config["run"], "catalog": catalog_path},
                       "output": {**check.config["output"], "directory": str(Path(d) / "run")}})
        summ = run_all(cfg, progress=False)
    rows = summ["runs"]
    if check.kind == "mixing_events":
        vals = np.array([r["mixing_final"]["domain_halides_outside"] + r["mixing_final"]["matrix_halides_inside"]
                         for r in rows], dtype=np.float64)
        return {"value": float(vals.mean()), "err": float(vals.std(ddof=1) / math.sqrt(vals.size)),
                "replica_values": vals.tolist()}
    cfgobj = build_inputs(cfg, 0, 0)[0]  # a heterojunction has no random part: the same for every replica
    sel = slice(0, 1) if check.defect == "vacancy" else slice(1, None)
    occ = [np.asarray(r["occ_time_per_plane_s"], dtype=np.float64)[sel].sum(axis=0) for r in rows]
    pooled = interface_barrier(np.sum(occ, axis=0), cfgobj, check.temperature_K)
    per = np.array([interface_barrier(o, cfgobj, check.temperature_K) for o in occ])
    fin = per[np.isfinite(per)]
    err = float(fin.std(ddof=1) / math.sqrt(fin.size)) if fin.size >= 2 else math.nan
    return {"value": pooled, "err": err, "replica_values": per.tolist(),
            "free_energy_planes_eV": _free_energy_planes(np.sum(occ, axis=0), cfgobj,
                                                         check.temperature_K).tolist()}


def check_rows(checks, catalogs: dict) -> list[dict]:
    """Per check, the model at each named catalog (e.g. start and calibrated) against the target."""
    rows = []
    for c in checks:
        row = {"id": c.id, "kind": c.kind, "defect": c.defect, "temperature_K": c.temperature_K,
               "target": c.value, "target_err": c.err, "unit": "eV" if c.kind == "interface_barrier" else "events",
               "fitted": c.fit}
        for name, path in catalogs.items():
            m = run_check(c, path)
            comb = math.hypot(c.err, m["err"]) if math.isfinite(m["err"]) else c.err
            z = (m["value"] - c.value) / comb if math.isfinite(m["value"]) else math.nan
            row[name] = {**m, "z": z, "within_error": bool(abs(z) <= 1.0)}
        rows.append(row)
    return rows


def format_checks(rows: list[dict], names=("start", "calibrated")) -> str:
    if not rows:
        return ""
    if any(r["fitted"] for r in rows):
        lines = ["", "## Checks: heterojunction and nanodomain observables", "",
                 "Measured with the KMC with the base catalog (start column) and the calibrated catalog; those marked "
                 "fitted are residuals of the fit, the others are measured only.", ""]
    else:
        lines = ["", "## Checks: measured, not fitted", "",
                 "No parameter of this calibration moves these observables (they need terms the optimiser does not "
                 "vary); they are measured with the KMC with the base catalog (start column) and the calibrated "
                 "catalog.", ""]
    lines += ["| check | fitted | target | " + " | ".join(names) + " | z (calibrated) | within error |",
              "|---|---|---|" + "---|" * len(names) + "---|---|"]

    def fmt(v, e, kind):
        if kind == "interface_barrier":
            return f"{v * 1e3:.0f} +- {e * 1e3:.0f} meV" if math.isfinite(e) else f"{v * 1e3:.0f} meV"
        return f"{v:.1f} +- {e:.1f}"

    for r in rows:
        last = r[names[-1]]
        lines.append(f"| {r['id']} | {'yes' if r['fitted'] else 'no'} | {fmt(r['target'], r['target_err'], r['kind'])} | "
                     + " | ".join(fmt(r[n]["value"], r[n]["err"], r["kind"]) for n in names)
                     + f" | {last['z']:+.1f} | {'yes' if last['within_error'] else 'NO'} |")
    n_out = sum(not r[names[-1]]["within_error"] for r in rows)
    lines += ["", f"{n_out} of {len(rows)} checks outside their errors."]
    lines += _order_lines(rows, names[-1])
    return "\n".join(lines) + "\n"


def mixing_order(rows: list[dict], name: str = "calibrated") -> list[dict]:
    """Every pair of mixing-count checks whose targets differ: does the KMC (catalog ``name``) order them as the
    targets do? ``z`` is the KMC difference (larger target minus smaller) over its standard error; a pair is
    ``resolved`` when |z| >= 2."""
    mix = sorted((r for r in rows if r["kind"] == "mixing_events"), key=lambda r: r["target"])
    out = []
    for i, lo in enumerate(mix):
        for hi in mix[i + 1:]:
            if hi["target"] == lo["target"]:
                continue
            d = hi[name]["value"] - lo[name]["value"]
            e = math.hypot(hi[name]["err"], lo[name]["err"])
            z = d / e if e > 0 else (math.inf if d > 0 else -math.inf if d < 0 else 0.0)
            out.append({"lower": lo["id"], "higher": hi["id"], "difference": d, "err": e, "z": z,
                        "same_order": bool(d > 0), "resolved": bool(abs(z) >= 2.0)})
    return out


def _order_lines(rows: list[dict], name: str) -> list[str]:
    pairs = mixing_order(rows, name)
    if not pairs:
        return []
    lines = ["", "### Order of the mixing counts", "",
             "Each pair of mixing checks whose targets differ, the lower target first: the KMC difference (higher "
             "minus lower) and its z; the order is reproduced when the difference is positive, and resolved when "
             "z >= 2.", "",
             "| lower target | higher target | KMC difference | z | order |", "|---|---|---|---|---|"]
    for q in pairs:
        verdict = ("same" if q["same_order"] else "REVERSED") + ("" if q["resolved"] else " (not resolved)")
        lines.append(f"| {q['lower']} | {q['higher']} | {q['difference']:+.1f} +- {q['err']:.1f} | {q['z']:+.1f} | "
                     f"{verdict} |")
    n_same = sum(q["same_order"] and q["resolved"] for q in pairs)
    lines += ["", f"{n_same} of {len(pairs)} pairs in the targets' order and resolved (z >= 2); "
              f"{sum(not q['same_order'] for q in pairs)} reversed."]
    return lines


__all__ = ["CHECK_KINDS", "Check", "CheckError", "check_rows", "format_checks", "interface_barrier", "load_checks",
           "mixing_order", "run_check"]
