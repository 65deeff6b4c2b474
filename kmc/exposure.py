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
a vacancy 8; blocked channels (rate 0) do not count.

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
    """

    temperature_K: float
    hop_counts: np.ndarray
    exposure_s: np.ndarray
    time_s: float
    n_events: int


def open_channels_per_class(sim: Simulation) -> np.ndarray:
    """(104,) int64: number of channels of each class with a rate > 0, all defects."""
    st = sim.state
    return np.bincount(st.classes[st.rates > 0.0], minlength=N_CLASSES).astype(np.int64)


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
    t_start = sim.time_s
    exposure = np.zeros(N_CLASSES)
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
    if int(counts.sum()) != done:
        raise RuntimeError(f"engine hop_count grew by {int(counts.sum())}, but {done} events were run")
    return ClassExposure(temperature_K=sim.temperature_K, hop_counts=counts, exposure_s=exposure,
                         time_s=sim.time_s - t_start, n_events=done)


__all__ = ["ClassExposure", "open_channels_per_class", "run_with_exposure"]
