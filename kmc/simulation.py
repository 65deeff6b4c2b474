"""Orchestration: a :class:`Simulation` owns the state, the random stream and the event log.

The kernels (:mod:`kmc._kernels`) run uninterrupted between observation
points; this class refills their buffer of uniform numbers, flushes the event
log, turns kernel status codes into exceptions and exposes the observables.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from kmc import _kernels as K
from kmc.state import OPTIONAL_SAVED, SAVED_ARRAYS, EngineState, RateParams, fill_rates, make_state
from lattice.configurations import Configuration
from lattice.defects import DefectSet
from rates.catalog import MissingRateError, RateCatalog

log = logging.getLogger(__name__)

BUFFER_SIZE = 1 << 16
LOG_KEYS = ("time_s", "defect", "from_site", "to_site", "hop_class", "slot")
"""Event-log fields; ``slot`` is the bridge atom that moved in a kick-out (0 or 1; 0 for vacancy hops)."""


class FrozenLatticeError(RuntimeError):
    """Every hop is blocked (total rate zero): the run cannot advance."""


class Simulation:
    """One KMC trajectory at one temperature.

    Parameters
    ----------
    config : Configuration
        Halide arrangement (before defects).
    defects : DefectSet
        Defects to place.
    catalog : RateCatalog
        Rates and energy model.
    temperature_K : float
    seed : int or numpy.random.SeedSequence
        Seed of the KMC random stream (only the Python side draws numbers).
    event_log : int
        Keep a log of up to this many hop events (0: none).

    Notes
    -----
    Residence-time algorithm: ``dt = -ln(1 - u) / R_total``; selection of a
    defect through a sum tree, then of one of its <= 20 channels (16 hops, 3
    rotations of an oriented bridge).
    """

    def __init__(self, config: Configuration, defects: DefectSet, catalog: RateCatalog,
                 temperature_K: float, seed, event_log: int = 0):
        self.config = config
        self.catalog = catalog
        self.temperature_K = float(temperature_K)
        self.params = RateParams.from_catalog(catalog, self.temperature_K)
        self.state: EngineState = make_state(config, defects, catalog)
        fill_rates(self.state, self.params)
        self.rng = np.random.default_rng(seed)
        self.buffer = np.empty(0, dtype=np.float64)
        self._buffer_store = np.empty(0, dtype=np.float64)  # refilled in place: no allocation per refill
        self.upos = 0
        self.time_s = 0.0
        self.event_log_cap = int(event_log)
        self._log_chunk = max(1, min(self.event_log_cap, 1 << 16)) if self.event_log_cap else 0
        self._alloc_log()
        self.events_logged: list[dict[str, np.ndarray]] = []
        self.n_logged = 0
        self.species_totals = self.state.species_totals()  # conserved

    # -- internals -------------------------------------------------------------
    def _alloc_log(self) -> None:
        n = self._log_chunk
        self._log = {
            "time_s": np.zeros(n, dtype=np.float64),
            "defect": np.zeros(n, dtype=np.int64),
            "from_site": np.zeros(n, dtype=np.int64),
            "to_site": np.zeros(n, dtype=np.int64),
            "hop_class": np.zeros(n, dtype=np.int64),
            "slot": np.zeros(n, dtype=np.int8),
        }

    def _flush_log(self) -> None:
        n = int(self.state.counters[K.C_LOG])
        if n:
            keep = min(n, self.event_log_cap - self.n_logged)
            if keep > 0:
                self.events_logged.append({k: v[:keep].copy() for k, v in self._log.items()})
                self.n_logged += keep
            self.state.counters[K.C_LOG] = 0
        if self.n_logged >= self.event_log_cap and self._log_chunk:
            self._log_chunk = 0
            self._alloc_log()

    def _refill(self) -> None:
        # The unused tail, then BUFFER_SIZE new uniforms, written into one reused array: the same stream as
        # concatenating, without allocating (and, under a small malloc trim threshold as Dask's nanny sets,
        # mapping and unmapping) half a megabyte per refill.
        tail = self.buffer[self.upos:].copy()
        n = tail.size + BUFFER_SIZE
        if self._buffer_store.size < n:
            self._buffer_store = np.empty(n, dtype=np.float64)
        store = self._buffer_store
        store[:tail.size] = tail
        self.rng.random(out=store[tail.size:n])
        self.buffer = store[:n]
        self.upos = 0

    # -- running ---------------------------------------------------------------
    @property
    def n_events(self) -> int:
        return int(self.state.counters[K.C_EVENTS])

    @property
    def n_rotations(self) -> int:
        """Rotation events executed (0 for the orientation-free model); hops are ``n_events - n_rotations``."""
        return int(self.state.rot_count.sum())

    def advance(self, t_stop: float, max_events: int | None = None) -> str:
        """Run events until ``t_stop`` (s) or until ``max_events`` more events.

        Returns
        -------
        "time" or "events": which limit was reached.

        Raises
        ------
        MissingRateError
            A hop class without a catalog entry occurred (the state is kept as
            it was after the last complete event).
        FrozenLatticeError
            No hop is possible.
        """
        st, p = self.state, self.params
        remaining = np.iinfo(np.int64).max if max_events is None else int(max_events)
        while True:
            if self.upos + 2 > self.buffer.size:
                self._refill()
            ev0 = self.n_events
            status, t, upos = K.run_events(
                st.occ, st.disp, st.dims,
                st.def_kind, st.def_site, st.def_xyz, st.def_s, st.def_sp, st.def_adisp, st.def_disp,
                st.def_tenter, st.def_or, st.rates, st.classes, st.tree, st.n_leaves, st.stamp,
                p.e_kra, p.prefactor, p.J, p.e_bridge, st.kernel_ce(p), p.rot_rate, p.beta,
                st.axis, st.msd, st.plane_count, st.occ_time, st.use_box, st.box, st.in_box, st.hop_count,
                st.rot_count,
                self._log["time_s"], self._log["defect"], self._log["from_site"], self._log["to_site"],
                self._log["hop_class"], self._log["slot"],
                self.time_s, float(t_stop), remaining, self.buffer, self.upos, st.counters, st.err,
            )
            self.time_s = float(t)
            self.upos = int(upos)
            remaining -= self.n_events - ev0
            if status == K.STOP_TIME:
                self._flush_log()
                return "time"
            if status == K.STOP_EVENTS:
                self._flush_log()
                return "events"
            if status == K.STOP_LOG_FULL:
                self._flush_log()
                continue
            if status == K.STOP_BUFFER:
                continue
            if status == K.STOP_FROZEN:
                raise FrozenLatticeError(
                    f"no hop is possible at t = {self.time_s:g} s: every defect is blocked (total rate 0)"
                )
            if status == K.STOP_MISSING_RATE:
                self._flush_log()
                raise MissingRateError([int(st.err[0])], self.catalog.name)
            raise RuntimeError(f"unknown kernel status {status}")  # pragma: no cover

    def flush_occupancy(self) -> None:
        """Bring the per-plane residence times up to the current time."""
        st = self.state
        K.flush_occupancy(self.time_s, st.def_kind, st.def_xyz, st.def_sp, st.def_tenter, st.axis, st.occ_time)

    def event_log(self) -> dict[str, np.ndarray]:
        """All logged events so far, concatenated."""
        keys = LOG_KEYS
        if not self.events_logged:
            return {k: np.zeros(0, dtype=self._log[k].dtype if k in self._log else np.float64) for k in keys}
        return {k: np.concatenate([c[k] for c in self.events_logged]) for k in keys}

    # -- checkpoint ------------------------------------------------------------
    def get_checkpoint(self) -> dict:
        """Everything needed to continue this trajectory exactly (arrays + JSON-able scalars)."""
        arrays = {name: getattr(self.state, name).copy() for name in SAVED_ARRAYS}
        arrays["buffer_tail"] = self.buffer[self.upos:].copy()
        log_arrays = self.event_log()
        for k, v in log_arrays.items():
            arrays[f"log_{k}"] = v
        scalars = {
            "time_s": self.time_s,
            "rng_state": json.dumps(self.rng.bit_generator.state),
            "n_logged": self.n_logged,
        }
        return {"arrays": arrays, "scalars": scalars}

    def set_checkpoint(self, ckpt: dict) -> None:
        """Restore a state written by :meth:`get_checkpoint` (same config, catalog and seed)."""
        arrays, scalars = ckpt["arrays"], ckpt["scalars"]
        for name in SAVED_ARRAYS:
            cur = getattr(self.state, name)
            if name not in arrays and name in OPTIONAL_SAVED:
                if self.catalog.oriented and name == "def_or":
                    raise ValueError("checkpoint of an orientation-free run cannot continue with an oriented catalog")
                cur[...] = OPTIONAL_SAVED[name]
                continue
            new = np.asarray(arrays[name])
            if new.shape != cur.shape:
                raise ValueError(f"checkpoint array {name!r} has shape {new.shape}, expected {cur.shape}")
            cur[...] = new
        self.buffer = np.asarray(arrays["buffer_tail"], dtype=np.float64).copy()
        self.upos = 0
        self.time_s = float(scalars["time_s"])
        self.rng.bit_generator.state = json.loads(scalars["rng_state"])
        self.n_logged = int(scalars["n_logged"])
        self.events_logged = []
        if self.n_logged:
            n = self.n_logged
            # checkpoints written before the slot field existed: slot unknown (-1)
            self.events_logged.append({k: np.asarray(arrays[f"log_{k}"]) if f"log_{k}" in arrays
                                       else np.full(n, -1, dtype=np.int8) for k in LOG_KEYS})
        if self.n_logged >= self.event_log_cap:
            self._log_chunk = 0
            self._alloc_log()
        self.state.counters[K.C_LOG] = 0
        fill_rates(self.state, self.params)

    # -- observables -----------------------------------------------------------
    def defect_msd(self) -> np.ndarray:
        """(2,) int64: sum over vacancies / interstitials of their squared displacement, (a/2)^2."""
        st = self.state
        d2 = np.einsum("ij,ij->i", st.def_disp, st.def_disp)
        return np.array([d2[st.def_kind == 0].sum(), d2[st.def_kind == 1].sum()], dtype=np.int64)

    def mixing_counts(self) -> np.ndarray:
        """(2,) int64: domain-species atoms outside the nanodomain, matrix-species atoms inside."""
        st = self.state
        if not st.use_box:
            return np.zeros(2, dtype=np.int64)
        dom = int(self.config.domain_species)
        mat = 1 - dom
        total = self.species_totals
        return np.array([total[dom] - st.in_box[dom], st.in_box[mat]], dtype=np.int64)
