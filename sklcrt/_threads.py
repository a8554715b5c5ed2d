"""One way to limit BLAS threads on the hot path.

The products of a unit's test are thin (cells x a few columns @ a few columns x block): threaded
BLAS gains nothing on them and, when units already run in parallel, oversubscribes the cores and
makes them many times slower.
"""

from __future__ import annotations

from threadpoolctl import ThreadpoolController

_CONTROLLER: ThreadpoolController | None = None


def single_threaded_blas():
    """A context manager limiting BLAS to one thread (the controller is built once)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
