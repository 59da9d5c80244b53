"""Every evaluation metric against values computed by hand on tiny inputs, and the ideal values when the
generated responses are the human ones."""

import math
import random
import warnings
from collections import Counter

import numpy as np
import pytest

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import References
from polyalign.critic.encoders import NgramEncoder
from polyalign.evaluation import diversity, naturalness, report, summary
from polyalign.evaluation.metrics import bucket_metrics
from polyalign.evaluation.suite import (
    EvalRows,
    Side,
    bucket_values,
    c2st_rows,
    per_feature_coverage,
    summarise,
)
from polyalign.evaluation.utility import answer_units, lcs_length, rouge_l, score_utility, token_f1
from polyalign.params import load_params

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
    with warnings.catch_warnings():  # one response against one answer: scipy's p-value divides by zero, D does not
        warnings.simplefilter("error")
        assert naturalness.ks_statistic([3.0], [5.0]) == 1.0
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
    per_prompt = naturalness.c2st_correct(one[:40], chinese[:40])
    assert set(per_prompt.tolist()) <= {0.0, 0.5, 1.0} and per_prompt.mean() == naturalness.c2st(one[:40], chinese[:40])


def test_wrong_language_share_judges_each_response_by_its_prompt_language():
    texts = ["你好，朋友", "hello 朋友们好", "我很好 ok", "fine, thanks", "fine 谢", "...", "bonjour"]
    languages = ["zh", "zh", "zh", "en", "en", "zh", "fr"]
    # CJK share of letters: 1, 4/9 (< 0.5: wrong), 3/5, 0, 1/5 (> 0.1: wrong), no letters, not judged
    assert naturalness.wrong_language_share(texts, languages) == pytest.approx(2 / 7)
    assert math.isnan(naturalness.wrong_language_share([], []))


def test_replacement_share_counts_responses_with_broken_bytes():
    assert naturalness.replacement_share(["fine", "bro\ufffdken", "\ufffd\ufffd", "ok"]) == 0.5
    assert math.isnan(naturalness.replacement_share([]))


def test_tdm_is_one_for_identical_dynamics_and_decays_with_a_shift():
    rng = np.random.default_rng(0)
    human = rng.normal(size=(50, 3))
    assert naturalness.tdm(human, human.copy()) == 1.0
    shifted = human + np.array([0.5, 0.0, 0.0])
    expected = (math.exp(-0.5 / max(human[:, 0].std(), 0.05)) + 2) / 3
    assert naturalness.tdm(shifted, human) == pytest.approx(expected)
    # by hand: human column stds 1, 0 and 0 (floored at 0.05); W1 of the columns 2, 0.05 and 0
    human = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    generated = np.array([[1.0, 0.0, 0.0], [5.0, 0.1, 0.0]])
    assert naturalness.tdm(generated, human) == pytest.approx((math.exp(-2) + math.exp(-1) + 1) / 3)


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


def test_replicates_of_all_resamples_aggregate_like_each_resample_alone():
    rng = np.random.default_rng(0)
    counts = {"en|single|qa|short": 30, "en|single|qa|long": 10, "zh|multi|dialogue|short": 5}
    series = {b: {"f1": rng.uniform(size=40)} for b in counts}
    series["zh|multi|dialogue|short"]["f1"][::3] = np.nan  # an undefined value leaves that bucket out
    together = summary.aggregate_replicates(series, counts, ["f1"], 40)
    for r in range(40):
        alone = summary.aggregate({b: {"f1": v["f1"][r]} for b, v in series.items()}, counts, ["f1"])
        for group in summary.GROUPS:
            assert together[group]["f1"][r] == pytest.approx(alone[group]["f1"], nan_ok=True)
    assert np.isnan(together["en/multi"]["f1"]).all()  # a slice without buckets


def test_resamples_are_half_samples_inside_buckets_without_repeats_and_repeat_for_the_same_seed():
    rows = {"b": np.array([0, 2, 4, 6, 8]), "a": np.array([1, 3]), "c": np.array([5])}
    first, again = summary.subsample_indices(rows, 50, 7), summary.subsample_indices(rows, 50, 7)
    assert all(np.array_equal(first[k], again[k]) for k in rows)
    assert first["b"].shape == (50, 2) and first["a"].shape == (50, 1) and first["c"].shape == (50, 1)
    assert set(np.unique(first["b"])) == {0, 2, 4, 6, 8}
    assert all(len(set(r)) == len(r) for r in first["b"])
    # rescaling: a mean over 2 of 5 rows varies by (1/2 - 1/5) sigma^2, over all 5 by sigma^2 / 5
    assert summary.subsample_scale(5) == pytest.approx(math.sqrt(2 / 3)) and summary.subsample_scale(4) == 1.0
    assert summary.subsample_scale(1) == 0.0 and summary.rescale(3.0, 1.0, 0.5) == 2.0


def test_interval_is_centred_on_its_estimate_and_clipped_to_the_metric_range():
    replicates = np.linspace(1.0, 2.0, 1001)
    assert summary.interval(replicates, 0.95) == pytest.approx((1.025, 1.975))
    # replicates inflated above the estimate (a distance on fewer rows): shifted down by median - estimate
    assert summary.interval(replicates, 0.95, estimate=1.4) == pytest.approx((0.925, 1.875))
    assert summary.interval(replicates, 0.95, estimate=0.2, bounds=(0, 1)) == pytest.approx((0.0, 0.675))
    assert summary.interval([3.0] * 10, 0.95, estimate=3.0) == (3.0, 3.0)


@pytest.mark.parametrize("shift", [1.0, 0.3])
def test_wasserstein_intervals_cover_the_true_distance_at_bucket_sizes(shift):
    """N(0, 1) against N(shift, 1): W1 = shift. Over many draws, the 95% interval from rescaled half-samples
    covers it 90-99% of the time at n = 30-200 and always contains its estimate. (Resampling with replacement
    with bias-corrected percentiles covered W1 = 0.3 only 73-88% of the time.)"""
    rng = np.random.default_rng(0)
    for n in (30, 75, 200):
        idx = summary.subsample_indices({"b": np.arange(n)}, 300, seed=n)["b"]
        hits = 0
        for _ in range(400):
            human, generated = rng.normal(0, 1, n), rng.normal(shift, 1, n)
            estimate = naturalness.wasserstein_1(human, generated)
            halves = naturalness.column_wasserstein(human[idx].T, generated[idx].T)
            low, high = summary.interval(summary.rescale(halves, estimate, summary.subsample_scale(n)), 0.95,
                                         estimate)
            assert low <= estimate <= high
            hits += low <= shift <= high
        assert 0.90 <= hits / 400 <= 0.99, (n, hits / 400)


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
    # MAUVE of identical sets: test_mauve_is_one_for_identical_feature_sets
    params = load_params(None, ["evaluate.c2st_min_n=4", "evaluate.bootstrap_resamples=20"])
    scores["c2st_correct"] = c2st_rows(test, generated, human, params.evaluate, params.seed)
    for bucket, rows in test.rows.items():
        v = bucket_values(test, bucket, rows, generated, human, scores, params, full=True)
        assert v["bng"] == 0 and v["hcr_joint_gap"] == 0 and v["length_w1"] == 0 and v["length_ks"] == 0
        assert v["c2st"] == 0.5 and v["c2st_gap"] == 0 and v["f1"] == 1 and v["rouge_l"] == 1 and v["em"] == 1
        assert v["replacement_char_share"] == 0 and math.isnan(v["truncated_share"])  # no flags given: unknown
        assert v["tdm"] == 1.0 if "multi" in bucket else math.isnan(v["tdm"])
    result = summarise(test, generated, human, scores, params)
    assert result["groups"]["macro"]["bng"] == 0 and result["intervals"]["macro"]["bng"] == [0.0, 0.0]


def _method(records, test, encoder, texts, truncated=None, resamples=200):
    """One method's real `summarise` output on the tiny test rows (the generated texts given)."""
    human = Side.build([r["human_answer"] for r in records], test, encoder)
    generated = Side.build(texts, test, encoder)
    scores = score_utility(generated.texts, human.texts, test.languages)
    rng = np.random.default_rng(len(texts[0]))
    scores.update(nll_sum=rng.uniform(1, 3, len(records)), nll_tokens=np.full(len(records), 2.0),
                  critic_distance=rng.uniform(0, 1, len(records)))
    if truncated is not None:
        scores["truncated"] = truncated
    params = load_params(None, ["evaluate.c2st_min_n=8", f"evaluate.bootstrap_resamples={resamples}",
                                "evaluate.confidence=0.95"])
    return summarise(test, generated, human, scores, params)


def _other_answers(records):
    """Plausible but wrong responses: the same answer of the next copy (another number of trailing "ok"), two in
    three with an extra word, so their distribution differs from the human one."""
    return [records[(i + 8) % len(records)]["human_answer"] + (" indeed" if i % 3 else "")
            for i in range(len(records))]


def test_every_interval_of_a_real_summary_contains_its_estimate_and_c2st_has_one():
    records, test, encoder = _test_rows(copies=6)
    truncated = np.arange(len(records)) % 3 == 0
    result = _method(records, test, encoder, _other_answers(records), truncated)
    checked = 0
    for group, intervals in result["intervals"].items():
        for metric, (low, high) in intervals.items():
            estimate = result["groups"][group][metric]
            if not math.isnan(estimate):
                assert low <= estimate <= high, (group, metric, estimate, low, high)
                checked += 1
    for bucket, values in result["buckets"].items():
        assert set(values["intervals"]) == {m.name for m in bucket_metrics(bootstrap_only=True)}
        for metric, (low, high) in values["intervals"].items():
            if not math.isnan(values[metric]):
                assert low <= values[metric] <= high, (bucket, metric, values[metric], low, high)
                checked += 1
    assert checked > 100
    low, high = result["intervals"]["overall"]["c2st"]
    assert low < result["groups"]["overall"]["c2st"] < high  # a real interval, not a point
    # truncated flags every third row: per bucket the share of its rows that were flagged
    for bucket, rows in test.rows.items():
        assert result["buckets"][bucket]["truncated_share"] == pytest.approx(truncated[rows].mean())


def test_replacement_characters_are_counted_per_bucket():
    records, test, encoder = _test_rows(copies=2)
    texts = [r["human_answer"] + ("\ufffd" if i % 2 else "") for i, r in enumerate(records)]
    result = _method(records, test, encoder, texts, resamples=0)
    for bucket, rows in test.rows.items():
        assert result["buckets"][bucket]["replacement_char_share"] == pytest.approx((rows % 2).mean())
    assert result["groups"]["overall"]["replacement_char_share"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------- report

def _report_input(methods: dict[str, dict]) -> tuple[dict, list[dict]]:
    """human.json and <method>.json contents around real `summarise` outputs, as the evaluate stage writes them."""
    first = next(iter(methods.values()))
    human = {"n": 48, "buckets": {b: {"n": v["n"]} for b, v in first["buckets"].items()}, "groups": {"overall": {}}}
    results = [{"method": name, "order": k, "oracle": False, "conditioning": "observable", "seed": 0, "n": 48,
                "decoding": {"temperature": 1.0, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.0,
                             "max_new_tokens": 32},
                "counts": {"empty_predictions": 0}, "generated_tokens": 100, "cache": "miss", "mauve": "off",
                "timing_s": {"generation": 1.0, "nll": 1.0, "metrics": 1.0}, **summary_}
               for k, (name, summary_) in enumerate(methods.items())]
    return human, results


def test_report_ranks_c2st_by_distance_from_one_half_and_warns_when_responses_are_not_text():
    records, test, encoder = _test_rows(copies=6)
    close = _method(records, test, encoder, _other_answers(records))
    broken = _method(records, test, encoder, ["\ufffd\ufffd" + a[::-1] for a in _other_answers(records)],
                     truncated=np.ones(len(records), dtype=bool))
    # C2ST of 0.3 is as far from chance as 0.7: `close` (0.55) must beat a method at 0.3 although 0.3 < 0.55
    below = {**close, "groups": {g: {**v, "c2st": 0.3, "c2st_gap": 0.2} for g, v in close["groups"].items()},
             "intervals": {}}
    close = {**close, "groups": {g: {**v, "c2st": 0.55, "c2st_gap": 0.05} for g, v in close["groups"].items()},
             "intervals": {}}
    human, results = _report_input({"close": close, "below": below})
    text = report.markdown(human, results, [])
    assert "WARNING" not in text
    best_c2st = next(line for line in text.splitlines() if line.startswith("| C2ST distance from 0.5 |"))
    cells = [c.strip() for c in best_c2st.split("|")]
    assert cells[3:7] == ["0.050", "close", "0.200", "below"]
    human, results = _report_input({"close": close, "broken": broken})
    text = report.markdown(human, results, [])
    assert text.splitlines()[2].startswith("> **WARNING") and "broken: " in text and "U+FFFD" in text
    assert "close:" not in text.splitlines()[2]
    bucket_rows = [line.split(" | ") for line in text.splitlines() if "| broken |" in line and "\\|multi\\|" in line]
    assert bucket_rows and all(row[-2] == row[1] for row in bucket_rows)  # every response truncated: count = n


def test_frontier_starts_at_zero_and_draws_the_intervals():
    records, test, encoder = _test_rows(copies=6)
    _, results = _report_input({"a": _method(records, test, encoder, _other_answers(records))})
    fig = report.frontier_figure(results)
    ax = fig.axes[0]
    assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0
    x_bars, y_bars = ax.containers[0].lines[2]  # the error bars of the one point
    (x_low, _), (x_high, _) = x_bars.get_segments()[0]
    assert x_low < report.frontier_points(results)[0][0] < x_high
    assert len(y_bars.get_segments()) == 1
    report.plt.close(fig)
