"""SCEPTRE's proven choices for high- and low-MOI screens, where the specification leaves them open.

``moi="high"`` or ``"low"`` on the runners, :func:`~sklcrt.assignment.assign_guides`,
:func:`~sklcrt.qc.cellwise_qc` and the command line picks these for every setting the user does
not give. Burden bins are never turned on by ``moi``: they stay a choice of the test.
"""

from __future__ import annotations

__all__ = ["MOI_CHOICES", "moi_choices"]

#: What each MOI picks. ``control_group`` and ``test`` (CRTTest parameters, applied only when
#: the user configures no resampling) for the runners, ``assignment`` for
#: :func:`~sklcrt.assignment.assign_guides`, ``qc`` for :func:`~sklcrt.qc.cellwise_qc`.
MOI_CHOICES: dict[str, dict] = {
    "high": {
        # every other cell as control, the classic CRT (the test's default), SCEPTRE's mixture
        "control_group": "complement",
        "test": {},
        "assignment": {"method": "mixture"},
        "qc": {"remove_cells_w_zero_or_twoplus_grnas": False},
    },
    "low": {
        # the NT cells as controls, permutations, one gRNA per cell
        "control_group": "nt_cells",
        "test": {"resampling_method": "perm"},
        "assignment": {"method": "maximum"},
        "qc": {"remove_cells_w_zero_or_twoplus_grnas": True},
    },
}


def moi_choices(moi: str | None) -> dict:
    """The choices of ``moi`` (empty for ``None``).

    Parameters
    ----------
    moi : {"high", "low"} or None

    Returns
    -------
    dict
        A copy of ``MOI_CHOICES[moi]``, or ``{}``.

    Examples
    --------
    >>> from sklcrt.moi import moi_choices
    >>> moi_choices("low")["control_group"]
    'nt_cells'
    """
    if moi is None:
        return {}
    if moi not in MOI_CHOICES:
        raise ValueError(f"moi must be one of {list(MOI_CHOICES)} or None, got {moi!r}.")
    return {k: dict(v) if isinstance(v, dict) else v for k, v in MOI_CHOICES[moi].items()}
