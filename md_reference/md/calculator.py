"""An ASE calculator backed by a :class:`LammpsSession`.

Lets ASE tools (optimisers, NEB, dataset labelling) use any potential of
:mod:`md_reference.md.potentials` with exactly the energies and forces that the
package's MD sees. The LAMMPS instance is kept between calls while the atoms
(number, species, cell) stay the same; only the positions are updated.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from md_reference.md.lammps_driver import LammpsSession
from md_reference.md.potentials import Potential, load_potential

# 1 bar in eV/A^3.
BAR_TO_EV_A3 = 1e5 / 1.602176634e-19 * 1e-30


class LammpsCalculator(Calculator):
    """Energies (eV), forces (eV/A) and stress (eV/A^3) from a package potential.

    Parameters
    ----------
    potential : Potential or spec ("reaxff:PATH", ...)
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: Potential | str | dict, **kwargs):
        super().__init__(**kwargs)
        self.potential = load_potential(potential)
        self.session: LammpsSession | None = None
        self._key = None

    def _session_for(self, atoms) -> LammpsSession:
        key = (tuple(atoms.get_chemical_symbols()), tuple(np.round(atoms.cell.array.ravel(), 10)))
        if self.session is None or key != self._key:
            if self.session is not None:
                self.session.close()
            self.session = LammpsSession(atoms, self.potential)
            self._key = key
        return self.session

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        sess = self._session_for(self.atoms)
        sess.set_positions(self.atoms.get_positions())
        energy, forces = sess.energy_forces()
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if "stress" in properties:
            lmp = sess.lmp
            from md_reference.md.potentials import UNIT_PRESSURE_TO_BAR  # noqa: PLC0415

            conv = UNIT_PRESSURE_TO_BAR[sess.units] * BAR_TO_EV_A3
            p = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")]
            # The calculator's sessions never run dynamics: velocities are zero and
            # LAMMPS' pressure tensor is the pure virial.
            self.results["stress"] = -np.asarray(p, dtype=np.float64) * conv

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
