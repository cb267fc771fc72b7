"""Test modules that need what only some machines have (a SLURM cluster, test hosts, CuPy
and NVRTC): each skips in one line where it is missing, and fails instead where CI sets the
module's REQUIRE_ variable, so that a broken set-up never passes as a skip."""
import os

import pytest


def require(what, why, variable, remedy):
    """Skip the calling module (``why``: what is missing, or None) or, with ``variable`` set
    to 1, raise RuntimeError naming it. Call it at module level, before the imports that
    need the missing thing."""
    if not why:
        return
    if os.environ.get(variable) == '1':
        raise RuntimeError('{}: {}'.format(what, why))
    pytest.skip('{}: {}; {}'.format(what, why, remedy), allow_module_level=True)
