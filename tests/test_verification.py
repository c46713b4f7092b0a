"""Pair verification metrics and the LFW pairs-file reader: small hand-built and seeded cases, offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from retrieval.verification import (
    Pair,
    accuracy,
    best_threshold,
    deal_folds,
    kfold_verification,
    read_pairs_file,
    roc_auc,
    roc_curve,
    tar_at_far,
)

LFW_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"

TWO_FOLDS = """2\t2
Alice\t1\t2
Bob\t3\t10
Alice\t1\tBob\t2
Carol\t5\tDave\t1
Eve\t1\t2
Frank\t2\t3
Gina\t1\tHank\t1
Eve\t2\tFrank\t1
"""


def write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# --- pairs file --------------------------------------------------------------------------------


def test_reads_a_two_fold_pairs_file(tmp_path):
    pairs = read_pairs_file(write(tmp_path, TWO_FOLDS))
    assert len(pairs) == 8
    assert pairs[0] == Pair("Alice/Alice_0001.jpg", "Alice/Alice_0002.jpg", True, 0)
    assert pairs[1] == Pair("Bob/Bob_0003.jpg", "Bob/Bob_0010.jpg", True, 0)
    assert pairs[2] == Pair("Alice/Alice_0001.jpg", "Bob/Bob_0002.jpg", False, 0)
    assert pairs[7] == Pair("Eve/Eve_0002.jpg", "Frank/Frank_0001.jpg", False, 1)
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4


def test_joins_image_root_and_extension(tmp_path):
    root = tmp_path / "lfw"
    pairs = read_pairs_file(write(tmp_path, TWO_FOLDS), image_root=root, ext=".png")
    assert pairs[0].a == os.path.join(str(root), "Alice/Alice_0001.png")
    assert pairs[3].b == os.path.join(str(root), "Dave/Dave_0001.png")


def test_malformed_line_error_names_the_line(tmp_path):
    bad = TWO_FOLDS.replace("Bob\t3\t10", "Bob\t3")  # line 3: too few fields
    with pytest.raises(ValueError, match="line 3"):
        read_pairs_file(write(tmp_path, bad))
    bad = TWO_FOLDS.replace("Carol\t5\tDave\t1", "Carol\tx\tDave\t1")  # line 5: not a number
    with pytest.raises(ValueError, match="line 5"):
        read_pairs_file(write(tmp_path, bad))
    bad = TWO_FOLDS.replace("Frank\t2\t3", "Frank\t0\t3")  # line 7: LFW numbers from 1
    with pytest.raises(ValueError, match="line 7"):
        read_pairs_file(write(tmp_path, bad))
    with pytest.raises(ValueError, match="found 7"):  # wrong count for the header
        read_pairs_file(write(tmp_path, TWO_FOLDS.rsplit("Eve\t2", 1)[0]))


def test_headerless_file_is_one_fold_read_by_field_count(tmp_path):
    text = "Alice 1 2\n\nAlice  1  Bob 2\nBob 3 4\n"
    pairs = read_pairs_file(write(tmp_path, text))
    assert [p.same for p in pairs] == [True, False, True]
    assert {p.fold for p in pairs} == {0}
    assert pairs[1] == Pair("Alice/Alice_0001.jpg", "Bob/Bob_0002.jpg", False, 0)
    with pytest.raises(ValueError, match="line 2"):
        read_pairs_file(write(tmp_path, "Alice 1 2\nAlice 1 Bob 2 extra\n"))


@pytest.mark.skipif(not (LFW_DIR / "pairs.txt").is_file(), reason="LFW pairs.txt not available")
def test_official_lfw_pairs_file():
    pairs = read_pairs_file(LFW_DIR / "pairs.txt", image_root=LFW_DIR / "lfw-deepfunneled")
    assert len(pairs) == 6000
    assert len({p.fold for p in pairs}) == 10
    assert sum(p.same for p in pairs) == 3000
    assert pairs[0].a.endswith("Abel_Pacheco/Abel_Pacheco_0001.jpg")
    assert pairs[0].b.endswith("Abel_Pacheco/Abel_Pacheco_0004.jpg")
    if (LFW_DIR / "lfw-deepfunneled").is_dir():
        assert all(os.path.isfile(p.a) and os.path.isfile(p.b) for p in pairs[::97])


# --- metrics -----------------------------------------------------------------------------------


def test_separable_scores_give_perfect_accuracy_and_auc(rng):
    same = rng.random(200) < 0.5
    scores = np.where(same, rng.uniform(0.6, 1.0, 200), rng.uniform(-1.0, 0.4, 200))
    t = best_threshold(scores, same)
    assert scores[~same].max() < t < scores[same].min()
    assert accuracy(scores, same, t) == 1.0
    assert roc_auc(scores, same) == 1.0
    assert tar_at_far(scores, same, 0.0)[0] == 1.0
    assert roc_auc(-scores, same) == 0.0


def test_roc_curve_shape_and_ends(rng):
    scores = rng.integers(0, 10, 50).astype(float)
    same = rng.random(50) < 0.4
    far, tar, thr = roc_curve(scores, same)
    assert far.shape == tar.shape == thr.shape == (len(np.unique(scores)) + 1,)
    assert far[0] == tar[0] == 0.0 and far[-1] == tar[-1] == 1.0 and thr[0] == np.inf
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0) and np.all(np.diff(thr) < 0)
    k = 4
    pred = scores >= thr[k]
    assert tar[k] == pred[same].mean() and far[k] == pred[~same].mean()


def test_auc_equals_mann_whitney_with_ties(rng):
    scores = rng.integers(0, 8, 300).astype(float)  # many ties
    same = rng.random(300) < 0.3
    pos, neg = scores[same], scores[~same]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert roc_auc(scores, same) == pytest.approx(brute, abs=1e-12)
    far, tar, _ = roc_curve(scores, same)
    assert np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2) == pytest.approx(brute, abs=1e-12)


def test_tar_at_far_hand_built():
    #                   same: 0.9 0.8 0.4   different: 0.7 0.3 0.2 0.1
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
    same = np.array([True, True, True, False, False, False, False])
    assert tar_at_far(scores, same, 0.0) == (pytest.approx(2 / 3), 0.8)
    assert tar_at_far(scores, same, 0.1) == (pytest.approx(2 / 3), 0.8)
    assert tar_at_far(scores, same, 0.25) == (1.0, 0.4)  # 0.7 accepted too, but 0.4 brings TAR to 1
    assert tar_at_far(scores, same, 1.0) == (1.0, 0.1)
    # The top "different" pair ties the top "same" pair: nothing is accepted at FAR 0.
    assert tar_at_far([0.5, 0.5, 0.1], [True, False, False], 0.0) == (0.0, np.inf)
    with pytest.raises(ValueError, match="far"):
        tar_at_far(scores, same, 1.5)


def test_best_threshold_beats_a_brute_force_scan(rng):
    for trial in range(20):
        n = int(rng.integers(2, 60))
        same = rng.random(n) < rng.uniform(0.2, 0.8)
        scores = np.round(rng.normal(same * 1.0, 1.0), 1)  # rounding makes ties
        t = best_threshold(scores, same)
        u = np.unique(scores)
        grid = np.r_[-np.inf, u, (u[1:] + u[:-1]) / 2, np.inf]
        best = max(accuracy(scores, same, g) for g in grid)
        assert accuracy(scores, same, t) == best, trial
        if np.isfinite(t):  # a midpoint between adjacent distinct scores
            i = np.searchsorted(u, t)
            assert t == pytest.approx((u[i - 1] + u[i]) / 2)


def test_accuracy_counts_ties_as_same():
    assert accuracy([0.5, 0.4], [True, False], 0.5) == 1.0
    assert accuracy([0.5, 0.4], [True, False], 0.50001) == 0.5


def test_kfold_chooses_each_threshold_on_the_other_folds():
    # Fold 0 separates at 0.7, fold 1 at 0.225: each fold's own optimum fails on the other.
    scores = np.array([0.9, 0.8, 0.6, 0.5, 0.4, 0.35, 0.1, 0.0])
    same = np.array([True, True, False, False, True, True, False, False])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = kfold_verification(scores, same, folds)
    np.testing.assert_allclose(out["fold_thresholds"], [0.225, 0.7])
    np.testing.assert_allclose(out["fold_accuracies"], [0.5, 0.5])  # leakage would give 1.0
    assert out["accuracy"] == 0.5 and out["accuracy_std"] == 0.0
    np.testing.assert_array_equal(out["fold_ids"], [0, 1])


def test_kfold_matches_a_manual_loop_and_reports_overall_metrics(rng):
    n = 600
    same = rng.random(n) < 0.5
    scores = rng.normal(same * 1.5, 1.0)
    folds = np.repeat(np.arange(3), n // 3)
    out = kfold_verification(scores, same, folds)
    for k in range(3):
        t = best_threshold(scores[folds != k], same[folds != k])
        assert out["fold_thresholds"][k] == t
        assert out["fold_accuracies"][k] == accuracy(scores[folds == k], same[folds == k], t)
    assert out["accuracy"] == pytest.approx(np.mean(out["fold_accuracies"]))
    assert out["accuracy_std"] == pytest.approx(np.std(out["fold_accuracies"]))
    assert out["auc"] == roc_auc(scores, same)
    assert out["tar@far=1e-2"] == tar_at_far(scores, same, 1e-2)[0]
    assert 0.0 <= out["tar@far=1e-3"] <= out["tar@far=1e-2"] <= 1.0
    assert 0.75 < out["accuracy"] < 0.9


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="both"):
        roc_curve([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="finite"):
        accuracy([np.nan], [True], 0.0)
    with pytest.raises(ValueError, match="both"):
        kfold_verification([0.1, 0.2], [True, True], [0, 1])
    assert kfold_verification([0.1, 0.2], [True, False], [0, 0])["fold_ids"].tolist() == [0, 1]  # dealt


def test_deal_folds_gives_every_fold_its_share_of_each_kind():
    same = np.array([True] * 20 + [False] * 30)
    folds = deal_folds(same)
    assert sorted(set(folds.tolist())) == list(range(10))
    for k in range(10):
        assert (folds[same] == k).sum() == 2 and (folds[~same] == k).sum() == 3
    assert deal_folds(np.array([True, False])).tolist() == [0, 1]


def test_pairs_without_folds_are_dealt_into_ten_folds_as_one_rule(tmp_path):
    """A pairs file without a header (or with a one-number header) holds one fold: the k-fold accuracy is
    measured on 10 dealt folds, as `faces calibrate` takes the same file."""
    rng = np.random.default_rng(0)
    lines = [f"P{i} 1 2" for i in range(20)] + [f"P{i} 1 Q{i} 1" for i in range(20)]
    pairs = read_pairs_file(write(tmp_path, "\n".join(lines)))
    assert {p.fold for p in pairs} == {0}
    same = np.array([p.same for p in pairs])
    scores = np.where(same, 0.8, 0.3) + rng.normal(0, 0.1, same.size)
    out = kfold_verification(scores, same, np.array([p.fold for p in pairs]))
    assert out["folds_dealt"] is True and len(out["fold_ids"]) == 10
    assert out["accuracy"] > 0.9
    two = kfold_verification(scores, same, np.arange(same.size) % 2)
    assert two["folds_dealt"] is False and len(two["fold_ids"]) == 2
