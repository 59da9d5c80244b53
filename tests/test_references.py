"""References from the train split only, backoff, the support-band distance and balancing weights."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from polyalign.buckets.references import BalanceBuckets, References, backoff_chain
from polyalign.params import load_params
from polyalign.stages import bucketize, prepare


def test_support_distance_by_hand():
    # one bucket, two features; feature 1 is constant and must be ignored
    X = np.array([[float(v), 5.0] for v in range(11)])  # 0..10
    refs = References.build(X, ["en|single|qa|short"] * 11, ["a", "b"], min_bucket_size=1)
    ref = refs.buckets["en|single|qa|short"]
    assert (ref.stats["low"][0], ref.stats["high"][0]) == (1.0, 9.0)  # q10, q90
    assert list(ref.active) == [True, False]
    # scale = max(high - low, std, eps) = max(8, 3.162) = 8
    d = refs.distance(np.array([[5.0, 100.0], [13.0, 5.0], [-1.0, 5.0]]), ["en|single|qa|short"] * 3)
    assert d == pytest.approx([0.0, 4 / 8, 2 / 8])


def test_scale_falls_back_to_std_and_epsilon():
    X = np.array([[0.0]] * 95 + [[10.0]] * 5)  # q10 = q90 = 0 but not constant
    refs = References.build(X, ["b|x|y|z"] * 100, ["a"], min_bucket_size=1, epsilon=1e-6)
    ref = refs.buckets["b|x|y|z"]
    assert ref.stats["scale"][0] == pytest.approx(X.std())
    assert refs.distance(np.array([[10.0]]), ["b|x|y|z"])[0] == pytest.approx(10 / X.std())


def test_small_buckets_back_off_to_parents_and_unknown_buckets_resolve():
    ids = ["en|single|qa|short"] * 40 + ["en|single|qa|long"] * 3 + ["zh|multi|dialogue|short"] * 2
    refs = References.build(np.random.default_rng(0).normal(size=(45, 3)), ids, ["a", "b", "c"], min_bucket_size=30)
    assert refs.resolve("en|single|qa|short") == "en|single|qa|short"
    assert refs.resolve("en|single|qa|long") == "en|single|qa|*"
    assert refs.resolve("zh|multi|dialogue|short") == "*|*|*|*"  # no zh parent is big enough
    assert refs.resolve("en|multi|assistant|xlong") == "en|*|*|*"  # never seen in train
    assert backoff_chain("en|single|qa|long") == [
        "en|single|qa|long", "en|single|qa|*", "en|single|*|*", "en|*|*|*", "*|*|*|*"]


def test_balance_buckets_merge_small_ones_and_weights_have_mean_one():
    ids = ["a|s|q|short"] * 60 + ["a|s|q|long"] * 5 + ["a|s|d|short"] * 30 + ["b|m|d|short"] * 2
    balance = BalanceBuckets(ids, min_size=10)
    assert balance.resolve("a|s|q|long") == "a|s|q|short+long"  # the adjacent length bin of its family
    # a language of 2 records: nothing shares a part with it, so it joins the smaller group of its length bin
    assert balance.counts == {"a|s|d|short + b|m|d|short": 32, "a|s|q|short+long": 65}
    weights = np.array([balance.weight(b) for b in ids])
    assert weights.mean() == pytest.approx(1.0)
    # equal total mass per balance bucket
    masses = {b: sum(balance.weight(i) for i in ids if balance.resolve(i) == b) for b in balance.counts}
    assert len({round(m, 9) for m in masses.values()}) == 1


def test_two_leftover_records_never_weigh_more_than_a_full_bucket():
    # the case: 2 records of en|multi|dialogue|long whose siblings are large enough on their own
    ids = (["en|multi|dialogue|short"] * 100 + ["en|multi|dialogue|medium"] * 40 + ["en|multi|dialogue|long"] * 2
           + ["en|multi|qa|short"] * 50 + ["en|single|qa|short"] * 200 + ["zh|single|qa|short"] * 80)
    min_size = 30
    balance = BalanceBuckets(ids, min_size=min_size)
    assert min(balance.counts.values()) >= min_size
    full_bucket_weight = len(ids) / (len(balance.counts) * min_size)  # a group of exactly min_size records
    weights = [balance.weight(b) for b in ids]
    assert max(weights) <= full_bucket_weight
    assert balance.resolve("en|multi|dialogue|long") == "en|multi|dialogue|medium+long"
    assert balance.weight("en|multi|dialogue|long") == balance.weight("en|multi|dialogue|medium") < 3
    assert balance.merges() == [
        {"bucket": "en|multi|dialogue|long", "train": 2, "balance": "en|multi|dialogue|medium+long",
         "group_train": 42},
        {"bucket": "en|multi|dialogue|medium", "train": 40, "balance": "en|multi|dialogue|medium+long",
         "group_train": 42}]
    # unseen buckets go to their nearest group: the nearest length bin, else the nearest family, track, language
    assert balance.resolve("en|multi|dialogue|xlong") == "en|multi|dialogue|medium+long"
    assert balance.resolve("en|multi|assistant|short") == "en|multi|qa|short"  # of two equally near: the smaller
    assert balance.resolve("zh|multi|dialogue|long") == "zh|single|qa|short"
    assert balance.weight("fr|single|qa|short") > 0


def test_a_train_split_smaller_than_min_size_is_one_group():
    balance = BalanceBuckets(["a|s|q|short"] * 3 + ["b|m|d|long"] * 2, min_size=10)
    assert balance.counts == {"a|s|q|short + b|m|d|long": 5}
    assert balance.weight("a|s|q|short") == balance.weight("c|s|q|xlong") == 1.0


def test_references_use_the_train_split_only(tmp_path):
    params = load_params(None, ["data.sources=[{kind: chatterbot, languages: [chinese]}]", "logging.progress=false"])
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    refs_before = (tmp_path / "data/buckets/references.json").read_text()
    train_before = pq.read_table(tmp_path / "data/buckets/train.parquet")

    # change only the test split: drop half of it and rewrite every answer
    test_path = tmp_path / "data/prepared/test.parquet"
    test = pq.read_table(test_path)
    test = test.slice(0, test.num_rows // 2)
    answers = [a + "！这是一个被改写的非常非常长的回答。" * 5 for a in test["human_answer"].to_pylist()]
    test = test.set_column(test.schema.get_field_index("human_answer"), "human_answer",
                           __import__("pyarrow").array(answers))
    pq.write_table(test, test_path)
    report = bucketize.run(params, tmp_path)

    assert (tmp_path / "data/buckets/references.json").read_text() == refs_before
    assert pq.read_table(tmp_path / "data/buckets/train.parquet").equals(train_before)
    assert report["records_test"] == test.num_rows
    assert report["support_distance_test"] > report["support_distance_train"]  # rewritten answers stand out


def test_bucketize_outputs_on_the_default_corpus(tmp_path):
    params = load_params(None, ["logging.progress=false"])
    prepare.run(params, tmp_path)
    report = bucketize.run(params, tmp_path)
    train = pq.read_table(tmp_path / "data/buckets/train.parquet").to_pandas()
    assert (train["bucket_id"] == train["language"] + "|" + train["track"] + "|" + train["family"] + "|"
            + train["length_bin"]).all()
    assert train["bucket_weight"].mean() == pytest.approx(1.0)
    assert (train["f_n_tokens"] == train["n_tokens"]).all()
    refs = json.loads((tmp_path / "data/buckets/references.json").read_text())
    first = next(iter(refs["buckets"].values()))
    assert set(first["features"]["n_tokens"]) >= {"mean", "std", "min", "max", "q10", "q25", "q50", "q75", "q90",
                                                  "low", "high", "constant"}
    buckets = set(train["bucket_id"])
    assert {b.split("|")[0] for b in buckets} == {"en", "zh"} and {b.split("|")[1] for b in buckets} == {"single",
                                                                                                         "multi"}
    md = (tmp_path / "reports/buckets.md").read_text()
    assert all(f"`{b}`" in md for b in buckets)
    assert (tmp_path / "reports/plots/buckets.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "reports/plots/buckets.csv").read_text().startswith("bucket,train,val,test\n")
    assert all(isinstance(v, (int, float)) for v in report.values())  # flat, for dvc metrics
    # every balance group has min_bucket_size training records, so no weight exceeds a full bucket's
    sizes = train.groupby("balance_bucket").size()
    assert sizes.min() == report["smallest_balance_group"] >= params.buckets.min_bucket_size
    assert train["bucket_weight"].max() <= len(train) / (len(sizes) * params.buckets.min_bucket_size)
    assert report["merged_buckets"] > 0 and "## Merged balance groups" in md
