"""The specification's string API gives bit-identical results to the code before the redesign.

``tests/data/string_api_golden.csv`` holds the outputs of the string API (``resampling_method``,
``resampling_kwargs`` and the runners' string options) written by the code as it was before the
settings redesign (issue #11); see ``tests/data/make_string_api_golden.py``.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"


def _generator():
    spec = importlib.util.spec_from_file_location("golden", DATA / "make_string_api_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_string_api_reproduces_stored_outputs_bit_for_bit():
    stored = pd.read_csv(
        DATA / "string_api_golden.csv",
        keep_default_na=False,
        na_values=[""],
        float_precision="round_trip",
    )
    now = _generator().golden_frame()
    assert list(now["case"]) == list(stored["case"])
    for col in ("unit", "response", "pvalue_method"):
        assert (
            now[col].fillna("").astype(str).tolist() == stored[col].fillna("").astype(str).tolist()
        )
    # The resampling (draws, strata, p-values) must be bit for bit the same. The NB null fit's
    # optimiser may improve: the count statistics may move by rounding-level amounts (every
    # p-value must still be the same).
    counts = now["case"].str.startswith(("runner_genes", "runner_ntc")).to_numpy()
    for col in ("p_value", "n_resamples", "n_strata"):
        np.testing.assert_array_equal(
            now[col].to_numpy(dtype=float), stored[col].to_numpy(dtype=float), err_msg=col
        )
    for col in ("statistic", "effect", "effect_se"):
        a, b = now[col].to_numpy(dtype=float), stored[col].to_numpy(dtype=float)
        np.testing.assert_array_equal(a[~counts], b[~counts], err_msg=col)
        np.testing.assert_allclose(a[counts], b[counts], rtol=1e-7, atol=1e-9, err_msg=col)
