"""Diffusion coefficients, error bars and Arrhenius fits (kept for existing imports).

The implementations live in :mod:`common.stats`, shared with ``md_reference``.
"""

from common.stats import (  # noqa: F401
    block_D,
    block_ratio_D,
    endpoint_D,
    fit_arrhenius,
    half_lattice_sq_to_cm2,
    mean_sem,
    slope_D,
)
from common.units import ANGSTROM2_TO_CM2, K_B_EV  # noqa: F401
