from __future__ import annotations

import numpy as np
import pytest

from scvi_scgpt import tl

GMT = (
    "S1\tfirst set\tg0\tg1\tg2\tg3\tg10\n"
    "S2\thttp://example\tg5\tg6\tnot_in_background\n"
    "\n"
    "S3\t\tg0\tg0\tg19\n"
)


def test_read_gmt(tmp_path):
    path = tmp_path / "toy.gmt"
    path.write_text(GMT)
    sets = tl.read_gmt(path)
    assert list(sets) == ["S1", "S2", "S3"]
    assert sets["S3"] == ["g0", "g19"]  # repeated genes kept once


def test_hypergeometric_enrichment_hand_computed(tmp_path):
    path = tmp_path / "toy.gmt"
    path.write_text(GMT)
    background = [f"g{i}" for i in range(20)]
    programs = {"A": ["g0", "g1", "g2", "g3", "g4"], "B": ["g5", "g6", "g7", "g8", "g9"]}
    table = tl.program_enrichment(programs, path, background=background)
    top = table.iloc[0]
    assert (top["program"], top["gene_set"], top["overlap"]) == ("A", "S1", 4)
    assert (top["program_size"], top["set_size"], top["background_size"]) == (5, 5, 20)
    # P(X >= 4) with X ~ Hypergeom(N=20, K=5, n=5) = (C(5,4) C(15,1) + 1) / C(20,5)
    assert top["p_value"] == pytest.approx(76 / 15504)
    assert top["genes"] == "g0;g1;g2;g3"
    b = table[(table["program"] == "B") & (table["gene_set"] == "S2")].iloc[0]
    assert b["set_size"] == 2  # restricted to the background
    assert b["p_value"] == pytest.approx(1 / 19)  # C(5,2) / C(20,2) = 10/190
    # BH over the 6 tested pairs (pairs without overlap have p = 1 and are not reported)
    assert len(table) == 3
    a3 = table[(table["program"] == "A") & (table["gene_set"] == "S3")].iloc[0]
    assert a3["p_value"] == pytest.approx(1 - 8568 / 15504)  # 1 - C(18,5) / C(20,5)
    p = np.array(sorted([76 / 15504, 1 / 19, 1 - 8568 / 15504, 1.0, 1.0, 1.0]))
    q = np.minimum.accumulate((p * 6 / np.arange(1, 7))[::-1])[::-1]
    assert top["q_value"] == pytest.approx(q[0])
    assert b["q_value"] == pytest.approx(q[1])
    assert a3["q_value"] == pytest.approx(q[2])
    assert (table["q_value"] >= table["p_value"]).all()


def test_bad_gmt(tmp_path):
    bad = tmp_path / "bad.gmt"
    bad.write_text("S1 g1 g2\n")
    with pytest.raises(ValueError, match="line 1"):
        tl.read_gmt(bad)
    dup = tmp_path / "dup.gmt"
    dup.write_text("S1\t-\tg1\nS1\t-\tg2\n")
    with pytest.raises(ValueError, match="appears twice"):
        tl.read_gmt(dup)
    with pytest.raises(FileNotFoundError):
        tl.read_gmt(tmp_path / "absent.gmt")
    with pytest.raises(ValueError, match="non-empty"):
        tl.program_enrichment({"A": ["g1"]}, {})
