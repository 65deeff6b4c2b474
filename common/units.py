"""Physical constants and unit factors (energies eV, lengths A, times s or ps, D in cm^2/s)."""

K_B_EV = 8.617333262e-5
"""Boltzmann constant, eV/K (CODATA 2018)."""

ANGSTROM2_TO_CM2 = 1e-16
A2_PER_PS_TO_CM2_PER_S = 1e-4
"""1 A^2/ps = 1e-16 cm^2 / 1e-12 s = 1e-4 cm^2/s."""
