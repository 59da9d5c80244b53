"""The human-evaluation figures from hand-made ratings, against values computed by hand."""

import pytest

from polyalign.evaluation.human import (
    agreement,
    attention_pass_rates,
    bradley_terry,
    kept_raters,
    spot_accuracy,
    win_rates,
)


def rating(item, rater, a, b, choice, task="pairwise"):
    return {"item": item, "rater": rater, "task": task, "a": a, "b": b, "choice": choice, "bucket": "x",
            "slice": "en/single"}


def test_win_rate_counts_ties_as_halves_whatever_side_a_method_was_shown_on():
    ratings = [rating("i1", "r1", "X", "Y", "a"),   # X wins
               rating("i2", "r1", "Y", "X", "b"),   # X wins, shown as B
               rating("i3", "r1", "X", "Y", "tie"),
               rating("i4", "r1", "Y", "X", "a"),   # Y wins
               rating("i5", "r1", "X", "Y", "skip")]  # counts nowhere
    (row,) = win_rates(ratings, resamples=200, seed=1)
    assert (row["a"], row["b"], row["n"], row["wins"], row["ties"], row["losses"]) == ("X", "Y", 4, 2, 1, 1)
    assert row["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert 0 <= row["low"] <= row["win_rate"] <= row["high"] <= 1 and row["low"] < row["high"]


def test_bradley_terry_orders_the_methods_by_their_wins():
    ratings = []
    for k, (winner, loser, wins, losses) in enumerate([("A", "B", 3, 1), ("B", "C", 3, 1), ("A", "C", 4, 0)]):
        ratings += [rating(f"{k}w{i}", "r1", winner, loser, "a") for i in range(wins)]
        ratings += [rating(f"{k}l{i}", "r1", winner, loser, "b") for i in range(losses)]
    s = bradley_terry(ratings)
    assert s["A"] > s["B"] > s["C"] and sum(s.values()) == pytest.approx(0, abs=1e-9)


def test_attention_checks_exclude_raters_below_the_threshold():
    ratings = [rating("c1", "r1", "human", "corrupted", "a", "attention"),
               rating("c2", "r1", "corrupted", "human", "b", "attention"),
               rating("c1", "r2", "human", "corrupted", "b", "attention"),
               rating("c2", "r2", "corrupted", "human", "a", "attention"),
               rating("i1", "r3", "X", "Y", "a")]
    assert attention_pass_rates(ratings) == {"r1": (2, 2), "r2": (0, 2)}
    assert kept_raters(ratings, 0.5) == ({"r1", "r3"}, {"r2": 0.0})


def test_spot_the_human_accuracy_per_method():
    ratings = [rating("s1", "r1", "human", "M", "a", "spot"), rating("s2", "r1", "M", "human", "b", "spot"),
               rating("s3", "r2", "M", "human", "a", "spot"), rating("s4", "r2", "human", "N", "skip", "spot")]
    assert spot_accuracy(ratings) == {"M": {"accuracy": pytest.approx(2 / 3), "n": 3}}


def test_cohens_kappa_for_two_raters():
    votes = {"r1": ["a", "a", "b", "tie"], "r2": ["a", "b", "b", "tie"]}
    ratings = [rating(f"i{k}", r, "X", "Y", v) for r, vs in votes.items() for k, v in enumerate(vs)]
    # observed agreement 3/4; chance (2*1 + 1*2 + 1*1) / 16 = 5/16
    assert agreement(ratings) == {"measure": "cohen_kappa", "value": pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16)),
                                  "raters": 2, "items": 4}


def test_krippendorffs_alpha_for_more_raters():
    votes = {"u1": ["a", "a", "a"], "u2": ["b", "b", "a"]}
    ratings = [rating(u, f"r{k}", "X", "Y", v) for u, vs in votes.items() for k, v in enumerate(vs)]
    # coincidences o_aa 3, o_bb 1, o_ab = o_ba 1; n_a 4, n_b 2, n 6: 1 - (2/6) / (16/30) = 0.375
    assert agreement(ratings) == {"measure": "krippendorff_alpha", "value": pytest.approx(0.375), "raters": 3,
                                  "items": 2}
    assert agreement([rating("u1", "r1", "X", "Y", "a")]) is None
