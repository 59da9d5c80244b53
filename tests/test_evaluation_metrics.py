"""Every evaluation metric against values computed by hand on tiny inputs, and the ideal values when the
generated responses are the human ones."""

import math
import random
from collections import Counter

import numpy as np
import pytest

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import References
from polyalign.critic.encoders import NgramEncoder
from polyalign.evaluation import diversity, naturalness, summary
from polyalign.evaluation.suite import EvalRows, Settings, Side, bucket_values, per_feature_coverage, summarise
from polyalign.evaluation.utility import answer_units, lcs_length, rouge_l, score_utility, token_f1

# ------------------------------------------------------------------------------------------------- utility

def test_units_are_words_for_english_and_characters_for_chinese():
    assert answer_units("The cat, the HAT!", "en") == ["cat", "hat"]
    assert answer_units("我爱北京。", "zh") == ["我", "爱", "北", "京"]


def test_token_f1_by_hand_in_english_and_chinese():
    # pred {cat, sat, on, mat} vs ref {cat, sat}: P = 2/4, R = 1 -> F1 = 2/3
    assert token_f1(answer_units("The cat sat on the mat", "en"), answer_units("A cat sat", "en")) == pytest.approx(2 / 3)
    # 我爱北京 vs 我爱上海: two of four characters on each side
    assert token_f1(answer_units("我爱北京", "zh"), answer_units("我爱上海", "zh")) == pytest.approx(0.5)
    assert token_f1([], ["x"]) == 0.0 and token_f1([], []) == 1.0


def test_rouge_l_by_hand_in_english_and_chinese():
    # cat sat on mat vs cat on mat: LCS 3, P = 3/4, R = 1 -> F = 6/7
    assert rouge_l(answer_units("cat sat on mat", "en"), answer_units("cat on the mat", "en")) == pytest.approx(6 / 7)
    # 我爱北京天安门 vs 北京我爱: LCS 2, P = 2/7, R = 2/4 -> F = 4/11
    assert rouge_l(answer_units("我爱北京天安门", "zh"), answer_units("北京我爱", "zh")) == pytest.approx(4 / 11)


def test_bit_parallel_lcs_equals_the_dynamic_programme():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
        assert lcs_length(a, b) == table[-1][-1]


def test_exact_match_normalised_match_and_empty_answers_apart():
    scores = score_utility(["Paris", "", "", "london"], ["paris.", "", "Rome", "London"], ["en"] * 4)
    assert scores["em"][0] == 0 and scores["em_norm"][0] == 1 and scores["f1"][0] == 1
    # empty human answer: not scored at all (an abstention is not a perfect answer), counted by the flags
    assert math.isnan(scores["f1"][1]) and math.isnan(scores["em"][1])
    assert scores["empty_prediction"].tolist() == [False, True, True, False]
    assert scores["empty_reference"].tolist() == [False, True, False, False]
    assert scores["f1"][2] == 0 and scores["em_norm"][2] == 0  # an empty prediction of a real answer scores 0
    assert scores["em"][3] == 0 and scores["em_norm"][3] == 1


# ----------------------------------------------------------------------------------------------- diversity

def test_distinct_n_by_hand():
    texts = [["a", "b", "a", "b"]]
    assert diversity.distinct_n(texts, 1) == 0.5  # {a, b} of 4
    assert diversity.distinct_n(texts, 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert math.isnan(diversity.distinct_n([["a"]], 2))


def test_self_bleu_by_hand():
    # "a b c d" against "a b c e": precisions 3/4, 2/3, 1/2 and a smoothed 0.1/1; equal lengths, no penalty
    expected = (0.75 * (2 / 3) * 0.5 * 0.1) ** 0.25
    assert diversity.self_bleu([list("abcd"), list("abce")]) == pytest.approx(expected)
    # brevity penalty: "a b" against "a b c d" gives exp(1 - 4/2) times its precisions 1, 1, 0.1/1, 0.1/1
    short = (1 * 1 * 0.1 * 0.1) ** 0.25 * math.exp(1 - 2)
    hyp = [Counter(diversity.ngrams(list("ab"), n + 1)) for n in range(4)]
    clip = [dict.fromkeys(diversity.ngrams(list("abcd"), n + 1), 1) for n in range(4)]
    assert diversity.sentence_bleu(hyp, 2, clip, 4) == pytest.approx(short)
    assert diversity.self_bleu([list("abcd")] * 3) == pytest.approx(1.0)  # copies of one another
    assert math.isnan(diversity.self_bleu([list("abcd"), []]))


def test_self_bleu_clipping_against_all_others_equals_a_direct_computation():
    rng = random.Random(1)
    texts = [[rng.choice("abc") for _ in range(rng.randint(1, 9))] for _ in range(12)]
    direct = []
    for i, hyp in enumerate(texts):
        refs = [t for j, t in enumerate(texts) if j != i]
        counts = [Counter(diversity.ngrams(hyp, n + 1)) for n in range(4)]
        clip = [{g: max(Counter(diversity.ngrams(r, n + 1))[g] for r in refs) for g in counts[n]} for n in range(4)]
        ref_len = min((len(r) for r in refs), key=lambda x: (abs(x - len(hyp)), x))
        direct.append(diversity.sentence_bleu(counts, len(hyp), clip, ref_len))
    assert diversity.self_bleu(texts) == pytest.approx(np.mean(direct))


# -------------------------------------------------------------------------------------------- naturalness

def test_wasserstein_and_ks_by_hand():
    assert naturalness.wasserstein_1([0, 1, 3], [5, 6, 8]) == pytest.approx(5.0)
    assert naturalness.ks_statistic([1, 2, 3], [2, 3, 4]) == pytest.approx(1 / 3)
    A, B = np.array([[0.0, 1], [1, 2], [3, 9]]), np.array([[5.0, 1], [6, 2], [8, 9]])
    assert naturalness.column_wasserstein(A, B).tolist() == pytest.approx([5.0, 0.0])
    C = np.array([[1.0, 0], [2, 4]])  # unequal sizes go through scipy
    assert naturalness.column_wasserstein(A, C).tolist() == pytest.approx(
        [naturalness.wasserstein_1(A[:, 0], C[:, 0]), naturalness.wasserstein_1(A[:, 1], C[:, 1])])


def test_bng_ignores_a_constant_feature_and_caps_an_outlier_feature():
    human = np.array([[0, 5, 0], [1, 5, 1], [2, 5, 0], [3, 5, 1]], dtype=float)
    generated = np.array([[1, 9, 100], [2, 9, 100], [3, 9, 100], [4, 9, 100]], dtype=float)
    # f0: W1 1 / std sqrt(1.25); f1 constant among humans: ignored; f2: W1 99.5 / std 0.5 = 199 -> capped at 3
    assert naturalness.bng(generated, human, cap=3.0) == pytest.approx((1 / math.sqrt(1.25) + 3.0) / 2)
    assert naturalness.bng(human, human) == 0.0


def test_hcr_per_feature_and_joint_by_hand():
    inside = naturalness.inside_band(np.array([[1, 5], [3, 0], [2, 2]]), np.array([0, 1]), np.array([2, 4]))
    assert inside.tolist() == [[True, False], [False, False], [True, True]]
    assert naturalness.hcr(inside, np.array([0, 1])) == {"hcr_mean": 0.5, "hcr_joint": pytest.approx(1 / 3)}
    assert naturalness.hcr(inside, np.array([0]))["hcr_joint"] == pytest.approx(2 / 3)
    full = np.zeros((3, len(FEATURE_NAMES)), dtype=bool)
    full[:, :2] = inside
    per_feature = per_feature_coverage(full)
    assert per_feature["n_tokens"] == pytest.approx(2 / 3) and per_feature["n_chars"] == pytest.approx(1 / 3)
    assert per_feature["unit_entropy"] == 0.0


def _sentences(rng: random.Random, words: list[str], n: int) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def test_c2st_is_chance_on_one_distribution_and_perfect_on_different_ones():
    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "runs", "sleeps", "on", "mat", "under", "table", "quickly", "slowly", "red", "blue"]
    one, two = _sentences(rng, words, 200), _sentences(rng, words, 200)
    assert abs(naturalness.c2st(one, two) - 0.5) < 0.1
    chinese = ["".join(rng.choice("我你他是的了在有人这中大为上个国") for _ in range(rng.randint(4, 12)))
               for _ in range(200)]
    assert naturalness.c2st(one, chinese) >= 0.95
    assert naturalness.c2st(one, one) == 0.5  # both sides of a prompt share a fold: identical sets are a coin flip


def test_tdm_is_one_for_identical_dynamics_and_decays_with_a_shift():
    rng = np.random.default_rng(0)
    human = rng.normal(size=(50, 3))
    assert naturalness.tdm(human, human.copy()) == 1.0
    shifted = human + np.array([0.5, 0.0, 0.0])
    expected = (math.exp(-0.5 / max(human[:, 0].std(), 0.05)) + 2) / 3
    assert naturalness.tdm(shifted, human) == pytest.approx(expected)
    assert 0 < naturalness.tdm(human + 100, human) < 1e-6 + 1


def test_turn_dynamics_by_hand():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]])
    dyn = naturalness.turn_dynamics(["good morning friend", ""], ["good morning", "hi"], vectors,
                                    np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert dyn[0].tolist() == pytest.approx([math.log(4 / 3), 2 / 3, 1.0])
    assert dyn[1].tolist() == pytest.approx([math.log(1 / 2), 0.0, 0.0])


@pytest.mark.skipif(not naturalness.mauve_available(), reason="the optional `mauve` extra is not installed")
def test_mauve_is_one_for_identical_feature_sets():
    X = np.random.default_rng(0).normal(size=(60, 5))
    assert naturalness.mauve_score(X, X.copy()) == pytest.approx(1.0)
    assert naturalness.mauve_score(X, X + 5) < 0.2


# ---------------------------------------------------------------------------------------------- summaries

def test_groups_weight_buckets_by_size_macro_counts_each_once_and_slices_split_language_and_track():
    per_bucket = {"en|single|qa|short": {"f1": 0.2}, "en|single|qa|long": {"f1": 0.8},
                  "zh|multi|dialogue|short": {"f1": float("nan")}}
    counts = {"en|single|qa|short": 30, "en|single|qa|long": 10, "zh|multi|dialogue|short": 5}
    groups = summary.aggregate(per_bucket, counts, ["f1"])
    assert groups["overall"]["f1"] == pytest.approx((0.2 * 30 + 0.8 * 10) / 40)  # NaN bucket left out
    assert groups["macro"]["f1"] == pytest.approx(0.5)
    assert groups["en/single"]["n"] == 40 and groups["zh/multi"]["n"] == 5 and math.isnan(groups["zh/multi"]["f1"])
    assert groups["en/multi"]["n"] == 0 and math.isnan(groups["en/multi"]["f1"])


def test_bootstrap_resamples_stay_inside_buckets_and_repeat_for_the_same_seed():
    rows = {"b": np.array([0, 2, 4]), "a": np.array([1, 3])}
    first, again = summary.bootstrap_indices(rows, 50, 7), summary.bootstrap_indices(rows, 50, 7)
    assert all(np.array_equal(first[k], again[k]) for k in rows)
    assert first["b"].shape == (50, 3) and set(np.unique(first["b"])) <= {0, 2, 4}


def test_bias_corrected_interval_moves_with_a_biased_bootstrap():
    replicates = np.linspace(1.0, 2.0, 1001)
    assert summary.interval(replicates, 0.95) == pytest.approx((1.025, 1.975))
    low, high = summary.interval(replicates, 0.95, estimate=1.2)  # the estimate sits low in its replicates
    assert low < 1.025 and high < 1.975
    assert summary.interval([3.0] * 10, 0.95, estimate=3.0) == (3.0, 3.0)


def test_frontier_and_aggregate_score():
    assert summary.pareto_front([(0.5, 0.5), (0.6, 0.4), (0.4, 0.4), (float("nan"), 1.0)]) == [True, True, False,
                                                                                                False]
    assert summary.nuf_score(0.0, 1.0) == pytest.approx(1.0)
    assert summary.nuf_score(math.log(2), 0.5) == pytest.approx(0.5)  # exp(-ln 2) = 0.5, harmonic mean 0.5


# ------------------------------------------------------------------------------------ identical = the ideal

ANSWERS = [
    ("en|single|qa|short", "en", "The capital of France is Paris."),
    ("en|single|qa|short", "en", "It is about 40 km long, give or take."),
    ("en|single|qa|short", "en", "Yes! Absolutely, I would say so."),
    ("en|multi|dialogue|short", "en", "Sure, let's meet at noon then?"),
    ("en|multi|dialogue|short", "en", "I am not sure. Maybe tomorrow works better for me."),
    ("zh|single|qa|short", "zh", "巴黎是法国的首都。"),
    ("zh|single|qa|short", "zh", "大约四十公里，差不多吧！"),
    ("zh|multi|dialogue|short", "zh", "好的，我们中午见？"),
]


def _test_rows(copies: int = 4):
    records = []
    for k in range(copies):
        for i, (bucket, language, answer) in enumerate(ANSWERS):
            records.append({"id": f"{k}-{i}", "bucket_id": bucket, "language": language,
                            "question": f"question {i} 问题", "human_answer": answer + " ok" * k})
    texts = [r["human_answer"] for r in records]
    refs = References.build(compute_features(texts), [r["bucket_id"] for r in records], FEATURE_NAMES,
                            min_bucket_size=2)
    encoder = NgramEncoder((1, 3), 2000, 8).fit(texts + [r["question"] for r in records])
    return records, EvalRows(records, refs, encoder, ["n_tokens", "punct_per_token"]), encoder


def test_identical_human_and_generated_sets_give_every_ideal_value():
    records, test, encoder = _test_rows()
    human = Side.build([r["human_answer"] for r in records], test, encoder)
    generated = Side.build([r["human_answer"] for r in records], test, encoder)
    scores = score_utility(generated.texts, human.texts, test.languages)
    scores.update(nll_sum=np.ones(len(records)), nll_tokens=np.ones(len(records)),
                  critic_distance=np.zeros(len(records)))
    settings = Settings(c2st_min_n=4)  # MAUVE of identical sets: test_mauve_is_one_for_identical_feature_sets
    for bucket, rows in test.rows.items():
        v = bucket_values(test, bucket, rows, generated, human, scores, settings, full=True)
        assert v["bng"] == 0 and v["hcr_joint_gap"] == 0 and v["length_w1"] == 0 and v["length_ks"] == 0
        assert v["c2st"] == 0.5 and v["f1"] == 1 and v["rouge_l"] == 1 and v["em"] == 1
        assert v["tdm"] == 1.0 if "multi" in bucket else math.isnan(v["tdm"])
    result = summarise(test, generated, human, scores, settings, resamples=20, level=0.95)
    assert result["groups"]["macro"]["bng"] == 0 and result["intervals"]["macro"]["bng"] == [0.0, 0.0]
