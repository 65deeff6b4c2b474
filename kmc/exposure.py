"""Exact per-class hop counts and exposure of a KMC trajectory.

The same observables :mod:`md_reference.analysis.tracker` extracts from MD, here from
the KMC itself: synthetic data with known rates for :mod:`rates.fit`.

For a residence-time trajectory with channel rates constant between events,
the log-likelihood of the event sequence is

.. math::

    \\log L = \\sum_{\\mathrm{events}} \\ln \\Gamma_{\\mathrm{chosen}}
             - \\sum_{\\mathrm{intervals}} \\Delta t \\sum_j \\Gamma_j .

If every open channel of class ``c`` has the rate ``k_c`` (true when the energy
change ``dE`` of its hops is zero) this is
``sum_c [n_c ln k_c - k_c tau_c]`` with ``n_c`` the hops of class ``c`` and the
exposure ``tau_c = sum over intervals of dt x (number of open channels of class
c)``, all defects together. ``n_c / tau_c`` is then the exact
maximum-likelihood rate. An interstitial has 16 channels (8 destinations x 2
bridge atoms; for a II or BrBr bridge both atoms count, as in the MD tracker),
a vacancy 8; blocked channels (rate 0) do not count. An oriented bridge has 4
open kick-outs and 3 rotation channels (2 by 90 degrees, 1 flip), whose
counts and exposures are kept per rotation class.

The trajectory is run one event at a time (``Simulation.advance`` with
``max_events=1``, about 20 us per event): fine for 1e4-1e5 events on small
lattices, the kernels stay untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kmc.simulation import Simulation
from lattice.environment import N_CLASSES
from lattice.orientation import N_EVENT_CLASSES


@dataclass
class ClassExposure:
    """Hop counts and exposure of one KMC trajectory segment.

    Attributes
    ----------
    temperature_K : float
    hop_counts : (104,) int64
        Hops per class (from the engine's own ``hop_count``).
    exposure_s : (104,) float64
        Sum over inter-event intervals of dt x open channels of the class, s.
    time_s : float
        Simulated time covered, s.
    n_events : int
        Hops and rotations.
    rotation_counts, rotation_exposure_s : (6,)
        The same for the rotation classes of oriented bridges (zero for the orientation-free model).
    """

    temperature_K: float
    hop_counts: np.ndarray
    exposure_s: np.ndarray
    time_s: float
    n_events: int
    rotation_counts: np.ndarray
    rotation_exposure_s: np.ndarray

    def __add__(self, other: "ClassExposure") -> "ClassExposure":
        """Exposure of two consecutive segments at the same temperature."""
        if other.temperature_K != self.temperature_K:
            raise ValueError(f"cannot add exposures at {self.temperature_K} K and {other.temperature_K} K")
        return ClassExposure(self.temperature_K, self.hop_counts + other.hop_counts,
                             self.exposure_s + other.exposure_s, self.time_s + other.time_s,
                             self.n_events + other.n_events, self.rotation_counts + other.rotation_counts,
                             self.rotation_exposure_s + other.rotation_exposure_s)


def open_channels_per_class(sim: Simulation) -> np.ndarray:
    """(110,) int64: number of channels of each hop class (0..103) and rotation class (104..109) with a rate > 0."""
    st = sim.state
    return np.bincount(st.classes[st.rates > 0.0], minlength=N_EVENT_CLASSES).astype(np.int64)


def run_with_exposure(sim: Simulation, max_events: int, t_stop_s: float = math.inf) -> ClassExposure:
    """Advance ``sim`` event by event, accumulating per-class hop counts and exposure.

    Parameters
    ----------
    sim : Simulation
        Advanced in place.
    max_events : int
        Number of events to run (fewer if ``t_stop_s`` comes first).
    t_stop_s : float
        Stop at this simulated time, s; the unfinished last interval counts
        in the exposure (censored residence: a Poisson likelihood
        ``exp(-k tau)`` with no hop).

    Returns
    -------
    ClassExposure

    Raises
    ------
    ValueError
        ``max_events`` < 0.
    RuntimeError
        The engine's hop counter disagrees with the number of events run.
    """
    max_events = int(max_events)
    if max_events < 0:
        raise ValueError(f"max_events must be >= 0, got {max_events}")
    counts0 = sim.state.hop_count.copy()
    rot0 = sim.state.rot_count.copy()
    t_start = sim.time_s
    exposure = np.zeros(N_EVENT_CLASSES)
    done = 0
    while done < max_events:
        per_class = open_channels_per_class(sim)
        t0 = sim.time_s
        ev0 = sim.n_events
        reason = sim.advance(t_stop_s, max_events=1)
        exposure += (sim.time_s - t0) * per_class
        if reason == "time":
            break
        if sim.n_events != ev0 + 1:  # pragma: no cover - engine invariant
            raise RuntimeError(f"advance(max_events=1) ran {sim.n_events - ev0} events")
        done += 1
    counts = sim.state.hop_count - counts0
    rot = sim.state.rot_count - rot0
    if int(counts.sum() + rot.sum()) != done:
        raise RuntimeError(f"engine counters grew by {int(counts.sum() + rot.sum())}, but {done} events were run")
    return ClassExposure(temperature_K=sim.temperature_K, hop_counts=counts, exposure_s=exposure[:N_CLASSES],
                         time_s=sim.time_s - t_start, n_events=done, rotation_counts=rot,
                         rotation_exposure_s=exposure[N_CLASSES:])


__all__ = ["ClassExposure", "open_channels_per_class", "run_with_exposure"]
