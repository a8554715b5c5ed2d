"""Tests for sklcrt.preprocessing: CLR transform and covariate encoding."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sklcrt.preprocessing import clr_transform, encode_covariates

# --------------------------------------------------------------------------- clr_transform


def _usage(seed=0, n=50, k=6):
    rng = np.random.default_rng(seed)
    u = rng.dirichlet(np.ones(k), size=n)
    u[rng.random((n, k)) < 0.2] = 0.0
    return u


def test_clr_matches_formula_and_rows_sum_to_zero():
    u = _usage()
    out = clr_transform(u, floor_quantile=0.05)
    floor = np.quantile(u[u > 0], 0.05)
    logs = np.log(np.maximum(u, floor))
    np.testing.assert_allclose(out, logs - logs.mean(axis=1, keepdims=True))
    assert out.dtype == np.float64 and out.shape == u.shape
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), 0.0, atol=1e-12)


def test_clr_zero_floor_quantile_uses_smallest_positive():
    u = np.array([[0.0, 0.25, 0.75], [0.5, 0.5, 0.0]])
    out = clr_transform(u, floor_quantile=0.0)
    logs = np.log(np.maximum(u, 0.25))
    np.testing.assert_allclose(out, logs - logs.mean(axis=1, keepdims=True))


def test_clr_invariant_to_row_scaling_when_no_floor_binds():
    rng = np.random.default_rng(1)
    u = rng.dirichlet(np.ones(4), size=20) + 0.1
    scaled = u * rng.uniform(1, 10, size=(20, 1))
    np.testing.assert_allclose(
        clr_transform(u, floor_quantile=0.0), clr_transform(scaled, floor_quantile=0.0)
    )


def test_clr_accepts_dataframe_and_sparse():
    u = _usage(2)
    df = pd.DataFrame(u, columns=[f"p{k}" for k in range(u.shape[1])])
    np.testing.assert_allclose(clr_transform(df), clr_transform(u))
    np.testing.assert_allclose(clr_transform(sp.csr_matrix(u)), clr_transform(u))


def test_clr_all_zero_row_becomes_zeros():
    u = np.array([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(clr_transform(u)[0], 0.0, atol=1e-12)


@pytest.mark.parametrize(
    ("usage", "match"),
    [
        (np.array([[0.5, -0.1], [0.2, 0.8]]), "non-negative"),
        (np.array([[0.5, np.nan], [0.2, 0.8]]), "NaN"),
        (np.array([0.5, 0.5]), "2-D"),
        (np.zeros((3, 2)), "no positive"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_clr_rejects_bad_usage(usage, match):
    with pytest.raises(ValueError, match=match):
        clr_transform(usage)


@pytest.mark.parametrize("q", [-0.1, 1.0, 2, "0.1", True])
def test_clr_rejects_bad_floor_quantile(q):
    with pytest.raises(ValueError, match="floor_quantile"):
        clr_transform(_usage(), floor_quantile=q)


# ----------------------------------------------------------------------- encode_covariates


def _covar(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "batch": pd.Categorical(rng.choice(["b2", "b1", "b3"], size=n)),
            "n_umis": rng.poisson(100, size=n).astype(np.int64),
            "p_mito": rng.uniform(0, 0.1, size=n),
            "donor": rng.choice(["z", "a"], size=n).astype(object),
            "flag": rng.random(n) < 0.5,
        }
    )


def test_encode_intercept_first_one_hot_sorted_and_zscored():
    df = _covar()
    df.loc[0, "batch"] = "b1"  # make sure every level is observed
    df.loc[1, "batch"] = "b2"
    df.loc[2, "batch"] = "b3"
    df.loc[0, "donor"], df.loc[1, "donor"] = "a", "z"
    df.loc[0, "flag"], df.loc[1, "flag"] = False, True
    C, names = encode_covariates(df)
    assert names == [
        "intercept",
        "batch_b2",
        "batch_b3",
        "n_umis",
        "p_mito",
        "donor_z",
        "flag_True",
    ]
    assert C.shape == (len(df), len(names)) and C.dtype == np.float64
    np.testing.assert_array_equal(C[:, 0], 1.0)
    np.testing.assert_array_equal(C[:, 1], (df["batch"] == "b2").to_numpy())
    np.testing.assert_array_equal(C[:, 2], (df["batch"] == "b3").to_numpy())
    np.testing.assert_array_equal(C[:, 5], (df["donor"] == "z").to_numpy())
    np.testing.assert_array_equal(C[:, 6], df["flag"].to_numpy())
    for j in (3, 4):
        assert abs(C[:, j].mean()) < 1e-12
        assert C[:, j].std() == pytest.approx(1.0)
    x = df["p_mito"].to_numpy()
    np.testing.assert_allclose(C[:, 4], (x - x.mean()) / x.std())


def test_encode_uses_observed_levels_not_unused_categories():
    df = pd.DataFrame({"batch": pd.Categorical(["b", "c", "b"], categories=["a", "b", "c"])})
    C, names = encode_covariates(df)
    assert names == ["intercept", "batch_c"]
    np.testing.assert_array_equal(C[:, 1], [0, 1, 0])


def test_encode_columns_subset_order_and_string():
    df = _covar()
    C, names = encode_covariates(df, columns=["p_mito", "n_umis"])
    assert names == ["intercept", "p_mito", "n_umis"]
    C1, names1 = encode_covariates(df, columns="p_mito")
    assert names1 == ["intercept", "p_mito"]
    np.testing.assert_allclose(C1, C[:, :2])


def test_encode_empty_columns_gives_intercept_only():
    C, names = encode_covariates(_covar(), columns=[])
    assert names == ["intercept"] and C.shape == (12, 1)


def test_encode_nan_names_column():
    df = _covar()
    df.loc[3, "p_mito"] = np.nan
    with pytest.raises(ValueError, match="'p_mito' has 1 NaN"):
        encode_covariates(df)
    df = _covar()
    df["batch"] = df["batch"].cat.add_categories("x")
    df.loc[2, "batch"] = np.nan
    with pytest.raises(ValueError, match="'batch'"):
        encode_covariates(df)


def test_encode_inf_names_column():
    df = _covar()
    df.loc[3, "p_mito"] = np.inf
    with pytest.raises(ValueError, match="'p_mito' has infinite"):
        encode_covariates(df)


def test_encode_unknown_column_lists_available():
    with pytest.raises(ValueError, match=r"\['nope'\] not found.*available columns.*'n_umis'"):
        encode_covariates(_covar(), columns=["n_umis", "nope"])


def test_encode_duplicate_request_raises():
    with pytest.raises(ValueError, match="more than once"):
        encode_covariates(_covar(), columns=["n_umis", "n_umis"])


def test_encode_constant_columns_dropped_with_warning():
    df = _covar()
    df["const"] = 3.0
    df["one_level"] = "x"
    with pytest.warns(
        UserWarning, match=r"constant covariate column\(s\) \['const', 'one_level'\]"
    ):
        C, names = encode_covariates(df)
    assert "const" not in names and not any(n.startswith("one_level") for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C_ref, names_ref = encode_covariates(_covar())
    assert names == names_ref
    np.testing.assert_allclose(C, C_ref)


def test_encode_rejects_non_dataframe_and_bad_dtype():
    with pytest.raises(ValueError, match="DataFrame"):
        encode_covariates(np.ones((3, 2)))
    df = pd.DataFrame({"t": pd.date_range("2024-01-01", periods=3)})
    with pytest.raises(ValueError, match="'t' has dtype"):
        encode_covariates(df)


def test_encode_nullable_integer_with_missing_is_an_error():
    df = pd.DataFrame({"k": pd.array([1, None, 3], dtype="Int64")})
    with pytest.raises(ValueError, match="'k' has 1 NaN"):
        encode_covariates(df)
