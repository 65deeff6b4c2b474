"""Rejection-free lattice kinetic Monte Carlo of halide vacancies and split interstitials.

Entry points: :class:`kmc.simulation.Simulation` (one trajectory),
:func:`kmc.runner.run_all` (a configured set of runs) and the ``kmc`` command.
"""

__version__ = "0.1.0"
