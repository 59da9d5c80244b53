"""`prepare` and `bucketize` on real data nobody here wrote (../shared/data); skipped where it is absent."""

import json
from collections import Counter

import pyarrow.parquet as pq

from conftest import shared_file
from polyalign.params import load_params
from polyalign.stages import bucketize, prepare


def prepare_source(root, source, *overrides):
    params = load_params(None, [f"data.sources={json.dumps([source])}", "logging.progress=false", *overrides])
    report = prepare.run(params, root, require_every_split=False)  # some real files hold one official split
    rows = [r for s in prepare.SPLITS for r in pq.read_table(root / f"data/prepared/{s}.parquet").to_pylist()]
    return params, report, rows


def test_polyalign_sample_reproduces_the_authors_length_bins_and_bucket_ids(tmp_path):
    path = shared_file("polyalign-sample/dist_sft_val.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    _, report, rows = prepare_source(tmp_path, {"kind": "alpaca", "path": str(path), "split": "val"},
                                     "data.drop_empty_answers=false")
    # nothing is lost: duplicates (if any) are counted, every other row is here
    assert report["records"] + report["dropped"].get("duplicate", 0) == len(raw)
    assert report["dropped_total"] == report["dropped"].get("duplicate", 0)
    metas = [json.loads(r["meta"]) for r in rows]
    same_bin = sum(r["length_bin"] == m["source_length_bin"] for r, m in zip(rows, metas)) / len(rows)
    ours = [f"{r['language']}|{r['track']}|{r['family']}|{r['length_bin']}" for r in rows]
    same_bucket = sum(b == m["source_bucket_id"] for b, m in zip(ours, metas)) / len(rows)
    assert same_bin >= 0.95, same_bin
    assert same_bucket == same_bin  # language, track and family always agree; only length edge cases differ
    assert {r["split"] for r in rows} == {"val"}


def test_kdconv_film_dev_is_all_chinese_multi_turn_and_nothing_is_lost(tmp_path):
    path = shared_file("kdconv/film_dev.json")
    conversations = json.loads(path.read_text(encoding="utf-8"))
    expected_targets = sum(len(c["messages"]) // 2 for c in conversations)
    _, report, rows = prepare_source(tmp_path, {"kind": "kdconv", "path": str(path)})
    assert report["sources"]["film_dev"]["read"] == expected_targets
    assert report["records"] + report["dropped_total"] == expected_targets
    assert set(report["dropped"]) <= {"duplicate", "empty_answer"}
    assert {r["language"] for r in rows} == {"zh"} and {r["track"] for r in rows} == {"multi"}
    assert {r["family"] for r in rows} == {"dialogue"}
    assert max(len(r["dialogue_history"]) for r in rows) >= 10


def test_cmrc2018_trial_is_all_chinese_single_turn_qa_and_nothing_is_lost(tmp_path):
    path = shared_file("cmrc2018/cmrc2018_trial.json")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    expected = sum(len(p["qas"]) for article in data for p in article["paragraphs"])
    _, report, rows = prepare_source(tmp_path, {"kind": "squad", "path": str(path)})
    assert report["sources"]["cmrc2018_trial"]["read"] == expected
    assert report["records"] + report["dropped_total"] == expected
    assert {r["language"] for r in rows} == {"zh"} and {r["track"] for r in rows} == {"single"}
    assert {r["family"] for r in rows} == {"qa"} and all(r["context"] for r in rows)
    # one article never straddles splits
    splits = Counter()
    for group in {r["group_id"] for r in rows}:
        splits[len({r["split"] for r in rows if r["group_id"] == group})] += 1
    assert set(splits) == {1}


def test_bucketize_on_all_three_real_sources(tmp_path):
    sources = [
        {"kind": "alpaca", "path": str(shared_file("polyalign-sample/dist_sft_val.json"))},
        {"kind": "kdconv", "path": str(shared_file("kdconv/film_dev.json"))},
        {"kind": "squad", "path": str(shared_file("cmrc2018/cmrc2018_trial.json"))},
    ]
    params = load_params(None, [f"data.sources={json.dumps(sources)}", "logging.progress=false"])
    prepare.run(params, tmp_path)
    report = bucketize.run(params, tmp_path)
    refs = json.loads((tmp_path / "data/buckets/references.json").read_text())
    languages = {key.split("|")[0] for key in refs["buckets"]}
    assert {"en", "zh"} <= languages
    assert report["records_zh"] > 1000 and report["records_en"] > 1000
    # human val responses sit mostly inside their bucket's support band on most features
    assert report["support_distance_val"] < 0.5


def test_real_mixed_corpus_covers_every_slice_and_no_leftover_bucket_outweighs_a_full_one(tmp_path):
    sources = [
        {"kind": "alpaca", "path": str(shared_file("polyalign-sample/dist_sft_val.json"))},
        {"kind": "kdconv", "path": str(shared_file("kdconv/film_dev.json"))},
        {"kind": "squad", "path": str(shared_file("cmrc2018/cmrc2018_trial.json"))},
    ]
    params = load_params(None, [f"data.sources={json.dumps(sources)}", "logging.progress=false"])
    report = prepare.run(params, tmp_path)
    assert report["uncovered_slices"] == {}
    assert all(min(per_split.values()) > 0 for per_split in report["slices"].values())
    bucketize.run(params, tmp_path)
    train = pq.read_table(tmp_path / "data/buckets/train.parquet").to_pandas()
    min_size = params.buckets.min_bucket_size
    sizes = train.groupby("balance_bucket").size()
    assert sizes.min() >= min_size
    assert train["bucket_weight"].max() <= len(train) / (len(sizes) * min_size)
