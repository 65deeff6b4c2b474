"""Workflows that span the stages: ``md_reference`` -> ``rates`` -> ``kmc``.

The stage packages never import each other upwards (``md_reference`` does not
import ``kmc``, ``kmc`` does not import ``md_reference``); a job that needs
all of them, such as the KMC-vs-MD validation matrix (:mod:`workflows.matrix`),
lives here and is reached from the ``kmc`` command line.
"""
