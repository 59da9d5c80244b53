"""`pairs.chosen`, `pairs.rejected` and `pairs.min_gap` on hand-made critic distances (`pick_pair`)."""

import numpy as np
import pytest

from polyalign.stages.pairs import pick_pair

HUMAN = (0.2, "the human answer", None)
SAMPLES = [(0.9, "first", "s0"), (0.1, "nearest", "s1"), (1.5, "farthest", "s2"), (0.6, "other", "s3")]


def pick(chosen="human", rejected="farthest", share=0.5, min_gap=None, human=HUMAN, samples=SAMPLES, seed=0):
    return pick_pair(human, list(samples), chosen, rejected, share, min_gap, np.random.default_rng(seed))


def test_human_chosen_with_the_farthest_first_or_a_random_sample_rejected():
    assert pick() == (HUMAN, SAMPLES[2])
    assert pick(rejected="first") == (HUMAN, SAMPLES[0])
    drawn = {pick(rejected="random", seed=s)[1] for s in range(40)}
    assert drawn == set(SAMPLES)  # any sample, uniformly drawn by the seeded generator


def test_nearest_sample_is_chosen_and_the_rejected_side_comes_from_the_other_samples():
    assert pick(chosen="nearest_sample") == (SAMPLES[1], SAMPLES[2])
    assert pick(chosen="nearest_sample", rejected="first") == (SAMPLES[1], SAMPLES[0])
    drawn = {pick(chosen="nearest_sample", rejected="random", seed=s)[1] for s in range(40)}
    assert drawn == {SAMPLES[0], SAMPLES[2], SAMPLES[3]}  # never the chosen sample itself
    assert pick(chosen="nearest_sample", samples=SAMPLES[:1]) == "one_usable_sample"
    assert pick(chosen="nearest_sample", human=None) == (SAMPLES[1], SAMPLES[2])  # needs no human answer


def test_mixed_takes_the_human_answer_with_its_share():
    assert pick(chosen="mixed", share=1.0)[0] == HUMAN
    assert pick(chosen="mixed", share=0.0)[0] == SAMPLES[1]
    picks = [pick(chosen="mixed", share=0.3, seed=s)[0] is HUMAN for s in range(400)]
    assert np.mean(picks) == pytest.approx(0.3, abs=0.07)


def test_min_gap_drops_pairs_whose_rejected_side_is_not_far_enough_and_names_why():
    assert pick(rejected="first", min_gap=0.7) == (HUMAN, SAMPLES[0])  # gap 0.9 - 0.2 = 0.7
    assert pick(rejected="first", min_gap=0.71) == "small_gap"
    assert pick(chosen="nearest_sample", rejected="first", min_gap=0.0) == (SAMPLES[1], SAMPLES[0])
    assert pick(human=None) == "empty_chosen" and pick(samples=[]) == "no_usable_sample"
