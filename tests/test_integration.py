"""Tests for sklcrt.integration: Bonferroni combination of per-guide tests."""

import numpy as np
import pandas as pd
import pytest

from sklcrt.integration import combine_guides_bonferroni


def _per_guide():
    return pd.DataFrame(
        {
            "unit": ["a1", "a2", "a3", "a1", "a2", "a3", "b1", "b2", "c1"],
            "grna_target": ["A", "A", "A", "A", "A", "A", "B", "B", "C"],
            "response": ["X", "X", "X", "Y", "Y", "Y", "X", "X", "X"],
            "pvalue": [0.04, 0.01, 0.5, 0.3, 0.6, np.nan, 0.7, 0.9, np.nan],
            "effect": [-0.5, -1.5, 0.1, 0.2, 0.3, np.nan, 0.05, 0.0, np.nan],
            "n_treated": [30, 25, 40, 30, 25, 40, 20, 22, 3],
            "pass_qc": [True, True, True, True, True, False, True, True, False],
            "qc_reason": ["", "", "", "", "", "few nonzero", "", "", "no treated cells"],
        }
    )


def test_bonferroni_min_p_times_tested_guides():
    out = combine_guides_bonferroni(_per_guide())
    assert list(zip(out["grna_target"], out["response"], strict=True)) == [
        ("A", "X"),
        ("A", "Y"),
        ("B", "X"),
        ("C", "X"),
    ]
    o = out.set_index(["grna_target", "response"])
    assert o.loc[("A", "X"), "pvalue"] == pytest.approx(0.03)  # 3 x 0.01
    assert o.loc[("A", "X"), "best_guide"] == "a2" and o.loc[("A", "X"), "effect"] == -1.5
    assert o.loc[("A", "X"), "n_treated"] == 25 and o.loc[("A", "X"), "n_guides_tested"] == 3
    # the untested a3 does not count: 2 x 0.3
    assert o.loc[("A", "Y"), "pvalue"] == pytest.approx(0.6)
    assert o.loc[("A", "Y"), "n_guides"] == 3 and o.loc[("A", "Y"), "n_guides_tested"] == 2
    assert o.loc[("A", "Y"), "guides_tested"] == "a1;a2"
    assert o.loc[("B", "X"), "pvalue"] == 1.0  # 2 x 0.7 capped
    c = o.loc[("C", "X")]
    assert not c["pass_qc"] and np.isnan(c["pvalue"]) and c["best_guide"] is None
    assert "no guide tested" in c["qc_reason"] and "no treated cells" in c["qc_reason"]
    assert np.isnan(c["effect"])
    assert out["pass_qc"].tolist() == [True, True, True, False]
    assert (out["unit"] == out["grna_target"]).all()


def test_bonferroni_matches_brute_force_on_random_tables():
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame(
        {
            "unit": [f"g{i % 7}" for i in range(n)],
            "grna_target": [f"T{(i % 7) // 3}" for i in range(n)],
            "response": [f"R{i // 7}" for i in range(n)],
            "pvalue": rng.random(n),
            "pass_qc": rng.random(n) > 0.2,
        }
    )
    out = combine_guides_bonferroni(frame).set_index(["grna_target", "response"])
    for (t, r), g in frame.groupby(["grna_target", "response"]):
        tested = g[g["pass_qc"]]
        if tested.empty:
            assert not out.loc[(t, r), "pass_qc"]
            continue
        expected = min(1.0, tested["pvalue"].min() * len(tested))
        assert out.loc[(t, r), "pvalue"] == pytest.approx(expected)
        assert out.loc[(t, r), "best_guide"] == tested.loc[tested["pvalue"].idxmin(), "unit"]


def test_without_pass_column_every_finite_p_counts_and_ties_take_the_first():
    frame = pd.DataFrame(
        {
            "unit": ["g1", "g2"],
            "grna_target": ["A", "A"],
            "response": ["X", "X"],
            "pvalue": [0.1, 0.1],
        }
    )
    out = combine_guides_bonferroni(frame)
    assert out["pvalue"].tolist() == [pytest.approx(0.2)] and out["best_guide"].tolist() == ["g1"]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (pd.DataFrame({"unit": ["g"], "grna_target": ["A"], "pvalue": [0.1]}), r"\['response'\]"),
        (pd.DataFrame(columns=["unit", "grna_target", "response", "pvalue"]), "is empty"),
        (
            pd.DataFrame({"unit": ["g"], "grna_target": ["A"], "response": ["X"], "pvalue": [1.5]}),
            "outside",
        ),
        ([1, 2], "must be a pandas DataFrame"),
    ],
)
def test_bad_tables(frame, match):
    with pytest.raises(ValueError, match=match):
        combine_guides_bonferroni(frame)
