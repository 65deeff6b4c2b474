"""Exceptions the ``kmc`` command line turns into one-line messages (importing nothing heavy)."""


class Interrupted(RuntimeError):
    """A job stopped by SIGINT or SIGTERM after writing its checkpoint (resume with ``--resume``)."""
