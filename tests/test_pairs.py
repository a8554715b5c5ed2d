"""Tests for sklcrt.pairs: cis/trans/positive-control pairs, the calibration draw, symbols."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from sklcrt.pairs import (
    construct_cis_pairs,
    construct_positive_control_pairs,
    construct_trans_pairs,
    draw_calibration_pairs,
    gene_symbols,
)


def _toy():
    targets = pd.DataFrame(
        {
            "grna_id": ["e1a", "e1b", "e2a", "e3a", "n1"],
            "grna_target": ["enh1", "enh1", "enh2", "enh3", "non-targeting"],
            "chr": ["chr1", "chr1", "chr2", "chrX", np.nan],
            "start": [100_000, 100_400, 5_000_000, 10, np.nan],
            "end": [100_200, 100_600, 5_000_100, 20, np.nan],
        }
    )
    genes = pd.DataFrame(
        {
            "response_id": ["G1", "G2", "G3", "G4", "G5", "G6"],
            "chr": ["1", "chr1", "chr1", "2", "chr2", "3"],
            "position": [90_000, 700_000, 600_300, 5_400_000, 5_600_051, 100_300],
        }
    )
    return targets, genes


def test_cis_pairs_on_a_toy_table_match_brute_force():
    targets, genes = _toy()
    out = construct_cis_pairs(targets, genes, distance=500_000)
    # enh1 spans 100,000-100,600 (midpoint 100,300); enh2 midpoint 5,000,050
    assert out[["grna_target", "response_id"]].values.tolist() == [
        ["enh1", "G1"],  # 10,300 bp
        ["enh1", "G3"],  # exactly 500,000 bp: inclusive
        ["enh2", "G4"],  # 399,950
    ]
    np.testing.assert_allclose(out["distance"], [10_300, 500_000, 399_950])
    assert out["chr"].tolist() == ["1", "chr1", "2"]  # as written in gene_positions
    # G6 sits at enh1's position but on another chromosome; G5 is 50 bp beyond on chr2
    brute = []
    mids = {"enh1": ("1", 100_300.0), "enh2": ("2", 5_000_050.0), "enh3": ("X", 15.0)}
    for t, (c, m) in mids.items():
        for _, g in genes.iterrows():
            if str(g["chr"]).replace("chr", "") == c and abs(g["position"] - m) <= 500_000:
                brute.append([t, g["response_id"]])
    assert out[["grna_target", "response_id"]].values.tolist() == brute


def test_cis_pairs_options():
    targets, genes = _toy()
    assert len(construct_cis_pairs(targets, genes, distance=499_999)) == 2
    only = construct_cis_pairs(
        targets,
        genes,
        targets=["enh2", "non-targeting"],
        response_names=["G4", "G5", "other"],
        distance=700_000,
    )
    assert only["response_id"].tolist() == ["G4", "G5"]
    ex = construct_cis_pairs(targets, genes, exclude_targets=["enh1"])
    assert set(ex["grna_target"]) == {"enh2"}
    by_pos = targets.assign(position=(targets["start"] + targets["end"]) / 2).drop(
        columns=["start", "end"]
    )
    # with positions per gRNA, the target's position is the midpoint of their span
    got = construct_cis_pairs(by_pos, genes)
    assert got["grna_target"].tolist() == ["enh1", "enh1", "enh2"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t, g: (t.drop(columns="chr"), g), r"targets_positions needs column\(s\) \['chr'\]"),
        (lambda t, g: (t, g.drop(columns="position")), "needs a 'position' column"),
        (
            lambda t, g: (t.assign(start=t["start"].where(t["grna_id"] != "e2a")), g),
            "e.g. \\['enh2'\\]",
        ),
        (lambda t, g: (t, g.assign(response_id=["G1"] * 6)), "more than once"),
        (lambda t, g: (t, g.assign(chr="chr9")), "no response lies within"),
        (
            lambda t, g: (t.assign(chr=["chr1", "chr2", "chr2", "chrX", None]), g),
            "more than one chromosome",
        ),
    ],
)
def test_cis_pairs_errors(change, match):
    t, g = change(*_toy())
    with pytest.raises(ValueError, match=match):
        construct_cis_pairs(t, g)


def test_cis_pairs_errors_for_targets_and_ids():
    t, g = _toy()
    with pytest.raises(ValueError, match=r"have no position.*\['enh9'\]"):
        construct_cis_pairs(t, g, targets=["enh1", "enh9"])
    with pytest.raises(ValueError, match="same kind of id"):
        construct_cis_pairs(t, g, response_names=["ENSG0001"])
    with pytest.raises(ValueError, match="distance must be"):
        construct_cis_pairs(t, g, distance=-1)


def test_trans_pairs():
    out = construct_trans_pairs(["B", "A", "non-targeting", "A"], ["X", "Y", "Z"])
    assert len(out) == 6 and out["grna_target"].tolist() == ["A"] * 3 + ["B"] * 3
    pc = pd.DataFrame({"grna_target": ["A"], "response_id": ["Y"]})
    out = construct_trans_pairs(["A", "B"], ["X", "Y"], exclude=pc)
    assert out.values.tolist() == [["A", "X"], ["B", "X"], ["B", "Y"]]
    out = construct_trans_pairs(["A", "B"], ["X", "Y"], exclude_targets=["A"])
    assert set(out["grna_target"]) == {"B"}
    with pytest.raises(ValueError, match="targets is empty"):
        construct_trans_pairs(["NTC"], ["X"])
    with pytest.raises(ValueError, match="responses is empty"):
        construct_trans_pairs(["A"], [])
    with pytest.raises(ValueError, match="nothing|no trans pair"):
        construct_trans_pairs(
            ["A"], ["X"], exclude=pd.DataFrame({"grna_target": ["A"], "response_id": ["X"]})
        )
    with pytest.raises(ValueError, match=r"exclude needs column"):
        construct_trans_pairs(["A"], ["X"], exclude=pd.DataFrame({"target": ["A"]}))


def test_positive_control_pairs_by_id_symbol_and_suffix():
    out = construct_positive_control_pairs(
        {"g1": "MYC", "g2": "enh", "g3": "NTC"}, ["MYC", "GATA1"]
    )
    assert out.values.tolist() == [["MYC", "MYC"]]
    out = construct_positive_control_pairs(
        ["GATA1_TSS", "MYC"],
        ["E1", "E2"],
        symbols=pd.Series({"E1": "MYC", "E2": "GATA1"}),
        suffixes=("_TSS",),
    )
    assert out.values.tolist() == [["GATA1_TSS", "E2"], ["MYC", "E1"]]
    with pytest.raises(ValueError, match="symbols=gene_symbols"):
        construct_positive_control_pairs(["MYC_TSS"], ["E1"])


def test_calibration_pairs_sized_like_the_discovery_set():
    ntc = [f"ntc{i:02d}" for i in range(25)]
    responses = [f"R{i % 40}" for i in range(120)]  # 120 passing pairs over 40 genes
    cal = draw_calibration_pairs(ntc, group_size=2, responses=responses, random_state=1)
    assert len(cal) == 120 and list(cal.columns) == ["unit", "grna_target", "guides", "response_id"]
    assert not cal.duplicated(["unit", "response_id"]).any()
    assert set(cal["response_id"]) <= set(responses)
    assert (cal["grna_target"] == "non-targeting").all()
    # 12 disjoint units of 2 guides (one guide left over)
    units = cal.drop_duplicates("unit").set_index("unit")["guides"]
    used = [g for gs in units for g in gs]
    assert all(len(gs) == 2 for gs in units) and len(used) == len(set(used)) and len(units) <= 12
    # uniform over the 12 x 40 candidates: every unit gets about 120 / 12 = 10 pairs
    per_unit = cal["unit"].value_counts()
    assert per_unit.max() <= 20
    again = draw_calibration_pairs(ntc, group_size=2, responses=responses, random_state=1)
    pd.testing.assert_frame_equal(cal, again)
    other = draw_calibration_pairs(ntc, group_size=2, responses=responses, random_state=2)
    assert not other.equals(cal)
    small = draw_calibration_pairs(ntc, group_size=3, responses=responses, n_pairs=5)
    assert len(small) == 5 and all(len(g) == 3 for g in small["guides"])


def test_calibration_pairs_errors():
    with pytest.raises(ValueError, match="fewer than group_size=3"):
        draw_calibration_pairs(["a", "b"], group_size=3, responses=["X"])
    with pytest.raises(ValueError, match="responses is empty"):
        draw_calibration_pairs(["a", "b"], group_size=1, responses=[])
    with pytest.raises(ValueError, match="exceeds the 4 NTC pairs"):
        draw_calibration_pairs(["a", "b"], group_size=1, responses=["X", "Y"], n_pairs=5)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        draw_calibration_pairs(["a"], group_size=0, responses=["X"])


def test_gene_symbols():
    a = ad.AnnData(
        np.zeros((1, 3)),
        var=pd.DataFrame({"gene_name": ["MYC", None, "GATA1"]}, index=["E1", "E2", "E3"]),
    )
    s = gene_symbols(a)
    assert s.tolist() == ["MYC", None, "GATA1"] and s.index.tolist() == ["E1", "E2", "E3"]
    assert gene_symbols(a, ["E3", "E3", "p1"]).tolist() == ["GATA1", "GATA1", None]
    assert gene_symbols(a, key="symbol") is None


@pytest.mark.realdata
def test_gasperini_positive_controls_and_symbols(real_screen):
    adata = real_screen("gasperini2019_highmoi")
    symbols = gene_symbols(adata)
    assert symbols.notna().all() and symbols.index.equals(pd.Index(adata.var_names.astype(str)))
    pc = construct_positive_control_pairs(
        set(adata.uns["grna_target"]), adata.var_names, symbols=symbols, suffixes=("_TSS",)
    )
    stored = adata.uns["positive_control_pairs"][["grna_target", "response_id"]].astype(str)
    key = ["grna_target", "response_id"]
    assert pc.sort_values(key).values.tolist() == stored.sort_values(key).values.tolist()
    trans = construct_trans_pairs(set(adata.uns["grna_target"]), adata.var_names, exclude=pc)
    assert len(trans) == 27 * 366 - 10


@pytest.mark.realdata
def test_papalexi_positive_controls(real_screen):
    adata = real_screen("papalexi2021_lowmoi")
    pc = construct_positive_control_pairs(set(adata.uns["grna_target"]), adata.var_names)
    stored = adata.uns["positive_control_pairs"][["grna_target", "response_id"]].astype(str)
    # every stored positive control is a target named after a measured gene
    got = set(map(tuple, pc.values.tolist()))
    assert set(map(tuple, stored.values.tolist())) <= got
