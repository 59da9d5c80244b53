"""Per-bucket generation budgets: derived from the training answers' lengths in model tokens, backed off for small
buckets, capped by max_new_tokens and by the model's context."""

import math

import pytest

from polyalign.generation import SamplingFilter, bucket_budgets, budget_of, nucleus, prompt_budgets
from polyalign.params import GenerationParams


class WordTokenizer:
    """One token per space-separated word: lengths the test can count by hand."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(range(len(t.split()))) for t in texts]}


def test_a_bucket_budget_is_factor_times_its_q90_length_and_small_buckets_back_off():
    long = [float(n) for n in range(100, 300, 10)]  # 20 answers: q90 = 270 + 0.1 * 10 = 271 (linear)
    short = [float(n) for n in range(1, 21)]  # 20 answers: q90 = 18.1
    lengths = long + short + [500, 600]
    buckets = ["en|single|qa|xlong"] * 20 + ["en|single|qa|short"] * 20 + ["en|single|qa|long"] * 2
    table = bucket_budgets(lengths, buckets, factor=1.5)
    assert table["en|single|qa|xlong"] == math.ceil(1.5 * 271)
    assert table["en|single|qa|short"] == math.ceil(1.5 * 18.1)
    assert "en|single|qa|long" not in table  # 2 answers: too few for a quantile of its own
    parent = table["en|single|qa|*"]
    assert budget_of(table, "en|single|qa|long", 1) == parent
    assert budget_of(table, "zh|multi|dialogue|short", 1) == table["*|*|*|*"]  # never seen: the global budget


def test_prompt_budgets_fixed_bucket_capped_and_within_the_context():
    answers = ["w " * 10] * 12 + ["w " * 100] * 12
    buckets = ["en|single|qa|short"] * 12 + ["en|single|qa|xlong"] * 12
    asked = ["en|single|qa|short", "en|single|qa|xlong", "en|single|qa|xlong"]
    tok = WordTokenizer()
    assert prompt_budgets(GenerationParams(budget="fixed", max_new_tokens=7), tok, answers, buckets, asked,
                          [5, 5, 5], None) == [7, 7, 7]
    assert prompt_budgets(GenerationParams(), tok, answers, buckets, asked, [5, 5, 5], None) == [15, 150, 150]
    assert prompt_budgets(GenerationParams(max_new_tokens=64), tok, answers, buckets, asked, [5, 5, 5],
                          None) == [15, 64, 64]
    assert prompt_budgets(GenerationParams(), tok, answers, buckets, asked, [5, 5, 100], 128) == [15, 123, 28]


def test_fixed_budget_needs_a_number_of_tokens():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationParams(budget="fixed", max_new_tokens=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_sampling_filter_keeps_exactly_the_tokens_hugging_faces_warpers_keep(dtype):
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    rows = 0
    for scale in (0.3, 3.0, 8.0):  # flat to peaked: nuclei from thousands of tokens down to one
        for temperature, top_k, top_p in ((1.0, 0, 0.95), (0.7, 0, 0.5), (1.3, 50, 0.9), (1.0, 0, 0.999)):
            scores = (torch.randn(16, 4096, generator=g) * scale).to(getattr(torch, dtype))
            expected = scores.clone()
            if temperature != 1.0:
                expected = TemperatureLogitsWarper(temperature)(None, expected)
            if top_k:
                expected = TopKLogitsWarper(top_k)(None, expected)
            expected = TopPLogitsWarper(top_p)(None, expected)
            ours = SamplingFilter(temperature, top_k, top_p)(None, scores.clone())
            # the same kept values in every row; which of several *equal* scores at the nucleus' edge stays is
            # arbitrary in both (bfloat16 has many such ties), so the tokens themselves must match in float32 only
            assert torch.equal(ours.sort(dim=-1).values, expected.sort(dim=-1).values)
            if dtype == "float32":
                assert torch.equal(ours, expected)
            rows += len(scores)
    assert rows == 192


def test_the_nucleus_keeps_as_many_of_several_equal_scores_at_its_edge_as_the_sort_does():
    import torch

    # four equal tokens, top_p 0.5: sorted, the first two reach the cumulative 0.5 and go, two stay
    kept = nucleus(torch.zeros(2, 4), 0.5) > -math.inf
    assert kept.sum(dim=-1).tolist() == [2, 2]
    # a clear favourite and a tied tail: the favourite, then one tied token to pass 0.9
    scores = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    probs = scores.softmax(-1)[0]
    assert probs[3] < 0.9 < probs[3] + probs[0]
    assert (nucleus(scores, 0.9) > -math.inf).sum().item() == 2
