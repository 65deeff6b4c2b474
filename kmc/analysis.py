"""Diffusion coefficients, error bars and Arrhenius fits (kept for existing imports).

The implementations live in :mod:`common.stats`, shared with ``md_reference``.
"""

from common.stats import block_D, fit_arrhenius, half_lattice_sq_to_cm2, mean_sem, slope_D  # noqa: F401
from common.units import ANGSTROM2_TO_CM2, K_B_EV  # noqa: F401
