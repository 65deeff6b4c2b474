"""Energy model and rate law shared by the catalog, the engine and its reference.

Energy model (lattice Hamiltonian)
----------------------------------
The configurational energy of a halide sublattice with defects is

.. math::

    E = \\sum_{\\langle u v \\rangle} J[\\sigma_u, \\sigma_v] + \\sum_{b \\in \\mathrm{bridges}} e_{\\mathrm{bridge}}[n_{Br}(b)]

where the first sum runs over nearest-neighbour X-X bonds, ``sigma`` is the
site state (I, Br, V = vacancy, B = bridge; :mod:`lattice.species`) and ``J``
a symmetric 4x4 table of pair energies in eV. ``e_bridge`` is the energy of a
bridge with 0, 1 or 2 Br atoms (II, IBr, BrBr). Because E is a function of the
configuration, rates built from energy differences obey detailed balance.

Rate law (kinetically-resolved activation barrier)
--------------------------------------------------
A hop of class ``c`` (:mod:`lattice.environment`) from configuration X to Y has

.. math::

    \\Gamma = \\nu_c \\exp(-E_a / k_B T), \\qquad
    E_a = \\max(E_{KRA}(c) + \\Delta E / 2,\\; \\Delta E,\\; 0), \\qquad
    \\Delta E = E(Y) - E(X).

With a class-symmetric ``E_KRA`` and ``nu`` the forward and backward rates
satisfy ``Gamma_f / Gamma_b = exp(-Delta E / k_B T)`` in every case, including
the branches where the barrier is limited by the endpoint energies.
"""

from __future__ import annotations

import math

import numpy as np
import common.numba_cache  # noqa: F401 - before numba: a writable kernel cache
from numba import njit

from lattice.species import BRIDGE, I, N_STATES, VACANCY

from common.units import K_B_EV  # noqa: E402  eV/K (CODATA 2018)


@njit(cache=True)
def delta_energy_vacancy(cA, cB, mover, J):
    """Energy change of a vacancy hop: the vacancy A -> B, the mover B -> A.

    Parameters
    ----------
    cA, cB : (4,) int64
        State counts over N(A) - {B} and N(B) - {A} (:func:`lattice.environment.hop_counts`).
    mover : int
        Species code of the moving halide.
    J : (4, 4) float64
        Pair energies, eV.
    """
    de = 0.0
    for t in range(N_STATES):
        dj = J[mover, t] - J[VACANCY, t]
        de += (cA[t] - cB[t]) * dj
    return de


@njit(cache=True)
def delta_energy_kickout(cA, cB, mover, remaining, target, J, e_bridge):
    """Energy change of a kick-out: bridge (mover + remaining) on A -> bridge (mover + target) on B.

    Parameters
    ----------
    cA, cB : (4,) int64
        State counts over N(A) - {B} and N(B) - {A}.
    mover, remaining, target : int
        Species codes.
    J : (4, 4) float64
        Pair energies, eV.
    e_bridge : (3,) float64
        Bridge energies by number of Br atoms, eV.
    """
    de = 0.0
    for t in range(N_STATES):
        de += cA[t] * (J[remaining, t] - J[BRIDGE, t]) + cB[t] * (J[BRIDGE, t] - J[target, t])
    de += J[remaining, BRIDGE] - J[BRIDGE, target]
    de += e_bridge[mover + target] - e_bridge[mover + remaining]
    return de


@njit(cache=True)
def activation_energy(e_kra, de):
    """``max(E_KRA + dE/2, dE, 0)`` in eV."""
    ea = e_kra + 0.5 * de
    if de > ea:
        ea = de
    if ea < 0.0:
        ea = 0.0
    return ea


@njit(cache=True)
def hop_rate(cls, de, beta, e_kra, prefactor):
    """Rate (Hz) of a hop of class ``cls`` with energy change ``de`` (eV).

    ``beta = 1 / (k_B T)`` in 1/eV. Returns NaN when the catalog has no entry
    for ``cls`` (its ``e_kra`` is NaN): the caller must treat that as an error.
    """
    return prefactor[cls] * math.exp(-beta * activation_energy(e_kra[cls], de))


def total_energy(occ: np.ndarray, neighbour_table: np.ndarray, bridge_nbr: np.ndarray,
                 J: np.ndarray, e_bridge: np.ndarray) -> float:
    """Configurational energy by brute force over all bonds (slow; for tests and the reference).

    Parameters
    ----------
    occ : (n_sites,) int8
        Site states.
    neighbour_table : (n_sites, 8) int64
    bridge_nbr : (n_bridges,) int
        Number of Br atoms of each bridge.
    J : (4, 4) float64
    e_bridge : (3,) float64
    """
    occ = np.asarray(occ, dtype=np.int64)
    pair = J[occ[:, None], occ[neighbour_table]]
    return 0.5 * float(pair.sum()) + float(np.sum(e_bridge[np.asarray(bridge_nbr, dtype=np.int64)]))


__all__ = [
    "K_B_EV",
    "activation_energy",
    "delta_energy_kickout",
    "delta_energy_vacancy",
    "hop_rate",
    "total_energy",
    "I",
]
