"""The `prepare` stage: cleaning, dedup with split priority, group-protected deterministic splits, bad input."""

import json
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import FIXTURES, write_params
from polyalign.cli import app
from polyalign.data.clean import dedup_key, split_counts, stratified_split
from polyalign.params import SplitRatios, load_params
from polyalign.stages import prepare

runner = CliRunner()


def run_prepare(root, sources, *overrides, every_split=True):
    params = load_params(None, [f"data.sources={json.dumps(sources)}", "logging.progress=false", *overrides])
    report = prepare.run(params, root, require_every_split=every_split)
    rows = {s: pq.read_table(root / "data/prepared" / f"{s}.parquet").to_pylist() for s in prepare.SPLITS}
    return report, rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def record(question, answer, split, **extra):
    return {"question": question, "human_answer": answer, "split": split, "language": "en", "track": "single",
            "family": "qa", **extra}


def test_duplicate_is_kept_in_the_highest_priority_split(tmp_path):
    path = write_jsonl(tmp_path / "dups.jsonl", [
        record("What is 2+2?", "4", "train", id="a"),
        record("What is 2+2?", "4", "test", id="b"),
        record("What is 2+2?", "4", "val", id="c"),
        record("Capital of Peru?", "Lima", "train", id="d"),
        record("Capital of Peru?", "Lima", "val", id="e"),
        record("Capital  of Peru?\r\n", " Lima ", "train", id="f"),  # equal once normalised
    ])
    report, rows = run_prepare(tmp_path, [{"kind": "polyalign", "path": path}], every_split=False)
    ids = {s: [r["id"] for r in rows[s]] for s in rows}
    assert ids == {"train": [], "val": ["e"], "test": ["b"]}
    assert report["dropped"] == {"duplicate": 4}
    dropped = [json.loads(line) for line in (tmp_path / "reports/prepare_dropped.jsonl").read_text().splitlines()]
    assert sorted(d["id"] for d in dropped) == ["a", "c", "d", "f"]


def test_default_corpus_conversations_never_straddle_splits_and_no_duplicate_survives(tmp_path):
    report, rows = run_prepare(tmp_path, [{"kind": "chatterbot"}])
    splits_of_group, keys = defaultdict(set), set()
    for split, records in rows.items():
        for r in records:
            splits_of_group[r["group_id"]].add(split)
            key = dedup_key(r)
            assert key not in keys
            keys.add(key)
    assert all(len(s) == 1 for s in splits_of_group.values())
    assert sum(len(s) > 1 for s in [{r["group_id"] for r in rows[x]} for x in rows]) > 0  # multi-record groups exist
    assert report["records"] == sum(len(v) for v in rows.values())
    assert report["dropped"]["chatterbot_malformed_conversation"] == 1
    assert report["dropped"]["duplicate"] > 0
    assert report["sources"]["chatterbot"]["read"] == report["records"] + report["dropped_total"]
    assert set(report["languages"]) == {"en", "zh"} and set(report["tracks"]) == {"single", "multi"}


def test_splits_follow_the_split_seed_and_not_the_training_seed(tmp_path):
    src = [{"kind": "chatterbot", "languages": ["english"]}]
    ids = []
    for i, setting in enumerate(["data.split_seed=42", "seed=7", "data.split_seed=7"]):
        _, rows = run_prepare(tmp_path / str(i), src, setting)
        ids.append({s: [r["id"] for r in rows[s]] for s in rows})
    assert ids[0] == ids[1]  # a seed sweep trains and tests every seed on the same rows
    assert ids[0]["test"] != ids[2]["test"]
    total = sum(len(v) for v in ids[0].values())
    assert 0.7 < len(ids[0]["train"]) / total < 0.9  # ratios 0.8 / 0.1 / 0.1 over conversations


def test_labels_are_derived_when_absent(tmp_path):
    _, rows = run_prepare(tmp_path, [{"kind": "alpaca", "path": str(FIXTURES / "alpaca.json"), "split": "train"}],
                          every_split=False)
    by_q = {r["question"]: r for r in rows["train"]}
    healthy = by_q["Give three tips for staying healthy."]
    assert (healthy["language"], healthy["track"], healthy["family"], healthy["length_bin"]) == (
        "en", "single", "assistant", "short")
    assert healthy["n_tokens"] == 18
    assert by_q["用一句话介绍长城。"]["language"] == "zh"
    assert by_q["When did she rush in?"]["track"] == "multi"


def test_empty_answers_are_dropped_and_counted_unless_kept(tmp_path):
    src = [{"kind": "squad", "path": str(FIXTURES / "squad.json"), "split": "test"}]
    report, rows = run_prepare(tmp_path / "a", src, every_split=False)
    assert report["dropped"] == {"empty_answer": 1} and len(rows["test"]) == 3
    report, rows = run_prepare(tmp_path / "b", src, "data.drop_empty_answers=false", every_split=False)
    assert report["dropped_total"] == 0 and "" in [r["human_answer"] for r in rows["test"]]


# ------------------------------------------------------------------------------- slices in every split


def conversations(slice_sizes, **extra):
    """Polyalign rows: for each (language, track) the given number of two-record conversations."""
    rows = []
    for (language, track), n in slice_sizes.items():
        for g in range(n):
            for turn in range(2):
                history = [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}] * (track == "multi")
                rows.append({"question": f"{language} {track} conversation {g} turn {turn}?",
                             "human_answer": f"answer {g}.{turn}", "language": language, "track": track,
                             "family": "dialogue", "group_id": f"{language}-{track}-{g}",
                             "dialogue_history": history, **extra})
    return rows


def slice_splits(rows):
    out = defaultdict(set)
    for split, records in rows.items():
        for r in records:
            out[f"{r['language']}/{r['track']}"].add(split)
    return out


def test_default_corpus_has_every_slice_in_every_split_and_reports_the_counts(tmp_path):
    report, rows = run_prepare(tmp_path, [{"kind": "chatterbot"}])
    assert set(report["slices"]) == {"en/single", "en/multi", "zh/single", "zh/multi"}
    for name, per_split in report["slices"].items():
        assert per_split == {s: sum(f"{r['language']}/{r['track']}" == name for r in rows[s]) for s in rows}
        assert all(per_split[s] > 0 for s in prepare.SPLITS), (name, per_split)
    assert report["uncovered_slices"] == {}
    assert report["slice_groups"]["zh/multi"]["test"] >= 1


def test_a_slice_with_three_conversations_reaches_each_split_and_a_smaller_one_is_named(tmp_path, capsys):
    path = write_jsonl(tmp_path / "conv.jsonl", conversations({("en", "single"): 40, ("zh", "multi"): 3,
                                                               ("en", "multi"): 2}))
    for seed in (0, 1, 2):
        report, rows = run_prepare(tmp_path / str(seed), [{"kind": "polyalign", "path": path}],
                                   f"data.split_seed={seed}")
        assert slice_splits(rows)["zh/multi"] == {"train", "val", "test"}
        assert report["slice_groups"]["zh/multi"] == {"train": 1, "val": 1, "test": 1}
        assert report["slice_groups"]["en/single"] == {"train": 32, "val": 4, "test": 4}
        assert report["uncovered_slices"] == {"en/multi": ["val", "test"]}  # 2 conversations: both in train
        groups = defaultdict(set)
        for split, records in rows.items():
            for r in records:
                groups[r["group_id"]].add(split)
        assert all(len(s) == 1 for s in groups.values())
    captured = capsys.readouterr()
    assert "uncovered slices: en/multi (no val/test)" in (captured.out + captured.err).replace("\n", " ")


def test_official_splits_are_kept_and_only_hashed_records_are_stratified(tmp_path):
    hashed = write_jsonl(tmp_path / "hashed.jsonl", conversations({("zh", "multi"): 3}))
    official = write_jsonl(tmp_path / "official.jsonl", conversations({("en", "single"): 5}, split="train"))
    report, rows = run_prepare(tmp_path, [{"kind": "polyalign", "path": hashed},
                                          {"kind": "polyalign", "path": official}])
    assert slice_splits(rows) == {"zh/multi": {"train", "val", "test"}, "en/single": {"train"}}
    assert report["uncovered_slices"] == {"en/single": ["val", "test"]}


def test_stratified_split_respects_pools_majority_slices_and_is_deterministic():
    def rec(group, language, track):
        return {"group_id": group, "language": language, "track": track, "split": None}

    # six groups of one train-only hf split (pool train/test): 2 records zh/multi + 1 zh/single each
    records = [rec(f"g{g}", "zh", t) for g in range(6) for t in ("multi", "multi", "single")]
    records += [rec(f"u{g}", "en", "single") for g in range(10)]  # no pool: kept as they are
    pools = [("train", "test")] * 18 + [None] * 10
    ratios = SplitRatios()
    stratified_split(records, pools, 3, ratios)
    splits = [r["split"] for r in records[:18]]
    assert set(splits) == {"train", "test"} and all(r["split"] is None for r in records[18:])
    assert all(len(set(splits[i:i + 3])) == 1 for i in range(0, 18, 3))  # a group stays together
    assert splits.count("test") == 3  # one of 6 groups (0.1 / 0.9 of 6 rounds to 1): one zh/multi stratum
    again = [dict(r, split=None) for r in records]
    stratified_split(again, pools, 3, ratios)
    assert [r["split"] for r in again] == [r["split"] for r in records]
    assert split_counts(2, ratios, ("train", "val", "test")) == {"train": 2, "val": 0, "test": 0}
    assert split_counts(3, ratios, ("train", "val", "test")) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(33, ratios, ("train", "val", "test")) == {"train": 27, "val": 3, "test": 3}


# --------------------------------------------------------------------------------------------- bad input


def invoke(args):
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output
    return result


def outputs(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "params.yaml")


@pytest.mark.parametrize(("source", "message"), [
    ({"kind": "alpaca", "path": str(FIXTURES / "broken.jsonl")}, "broken.jsonl:2: not valid JSON"),
    ({"kind": "alpaca", "path": str(FIXTURES / "broken.jsonl"), "language": "en"}, "broken.jsonl:2"),
    ({"kind": "squad", "path": "missing.json"}, "file not found: missing.json"),
])
def test_bad_input_stops_with_status_2_naming_the_place_and_writes_nothing(in_tmp, source, message):
    write_params(in_tmp, data={"sources": [source]}, logging={"progress": False})
    result = invoke(["prepare"])
    assert result.exit_code == 2 and message in result.output
    assert outputs(in_tmp) == []


def test_wrong_field_type_names_the_field(in_tmp):
    path = write_jsonl(in_tmp / "typed.jsonl", [{"instruction": "Count.", "output": ["1", "2"]}])
    write_params(in_tmp, data={"sources": [{"kind": "alpaca", "path": path}]})
    result = invoke(["prepare"])
    assert result.exit_code == 2
    assert "typed.jsonl:1: field 'output': Input should be a valid string" in result.output
    assert outputs(in_tmp) == ["typed.jsonl"]


def val_and_test(root):
    """A source of one val and one test record, for a test whose own rows fill train only."""
    write_jsonl(root / "val_and_test.jsonl", [record("Capital of Chile?", "Santiago", "val", id="v"),
                                              record("Capital of Ghana?", "Accra", "test", id="t")])
    return {"kind": "polyalign", "path": "val_and_test.jsonl"}


def test_skip_counts_bad_rows_by_reason(in_tmp):
    write_params(in_tmp, data={"sources": [{"kind": "alpaca", "path": str(FIXTURES / "broken.jsonl"),
                                             "split": "train"}, val_and_test(in_tmp)]})
    result = invoke(["prepare", "--on-invalid", "skip"])
    assert result.exit_code == 0, result.output
    report = json.loads((in_tmp / "reports/prepare.json").read_text())
    assert report["records"] == 4 and report["dropped"] == {"invalid_field": 1, "invalid_json": 1}
    dropped = [json.loads(x) for x in (in_tmp / "reports/prepare_dropped.jsonl").read_text().splitlines()]
    assert {(d["reason"], d["origin"].rsplit("/", 1)[-1], d["field"]) for d in dropped} == {
        ("invalid_json", "broken.jsonl:2", None), ("invalid_field", "broken.jsonl:3", "output")}


def test_a_failed_run_keeps_the_previous_complete_outputs(in_tmp):
    write_params(in_tmp, data={"sources": [{"kind": "alpaca", "path": str(FIXTURES / "alpaca.json")},
                                           val_and_test(in_tmp)]})
    assert invoke(["prepare"]).exit_code == 0
    before = {p: (in_tmp / p).read_bytes() for p in outputs(in_tmp)}
    write_params(in_tmp, data={"sources": [{"kind": "alpaca", "path": str(FIXTURES / "broken.jsonl")}]})
    assert invoke(["prepare"]).exit_code == 2
    assert {p: (in_tmp / p).read_bytes() for p in outputs(in_tmp)} == before
    assert not [p for p in in_tmp.rglob(".*.tmp")]


def one_line(text):
    return " ".join(text.split())


@pytest.mark.parametrize(("slices", "split", "overrides", "expected"), [
    ({("en", "single"): 10}, None, ["--set", "data.split_ratios={train: 0.9, val: 0.0, test: 0.1}"],
     ["the val split is empty", "records: train 18, val 0, test 2",
      "data.split_ratios: train 0.9, val 0, test 0.1", "data.split_ratios gives val 0"]),
    ({("en", "single"): 2}, None, [],  # the stratified split needs 3 conversations per slice for 3 splits
     ["the val and test splits are empty", "records: train 4, val 0, test 0",
      "data.split_ratios: train 0.8, val 0.1, test 0.1", "only 2 conversations/documents have no official split"]),
    ({("zh", "multi"): 5}, "train", [],
     ["the val and test splits are empty", "records: train 10, val 0, test 0", "official split",
      "add a source with `split: val`"]),
])
def test_an_empty_split_is_refused_by_prepare_naming_ratios_and_counts(in_tmp, slices, split, overrides, expected):
    rows = conversations(slices, **({"split": split} if split else {}))
    write_jsonl(in_tmp / "conv.jsonl", rows)
    write_params(in_tmp, data={"sources": [{"kind": "polyalign", "path": "conv.jsonl"}]}, logging={"progress": False})
    result = invoke(["prepare", *overrides])
    assert result.exit_code == 2, result.output
    assert all(e in one_line(result.output) for e in expected), result.output
    assert outputs(in_tmp) == ["conv.jsonl"]


def test_a_refused_empty_split_leaves_the_previous_outputs(in_tmp):
    write_jsonl(in_tmp / "conv.jsonl", conversations({("en", "single"): 10}))
    write_params(in_tmp, data={"sources": [{"kind": "polyalign", "path": "conv.jsonl"}]}, logging={"progress": False})
    assert invoke(["prepare"]).exit_code == 0
    before = {p: (in_tmp / p).read_bytes() for p in outputs(in_tmp)}
    assert invoke(["prepare", "--set", "data.split_ratios={train: 0.9, val: 0.1, test: 0.0}"]).exit_code == 2
    assert {p: (in_tmp / p).read_bytes() for p in outputs(in_tmp)} == before


def test_bucketize_refuses_a_prepared_split_emptied_by_hand(in_tmp):
    write_jsonl(in_tmp / "conv.jsonl", conversations({("en", "single"): 10}))
    write_params(in_tmp, data={"sources": [{"kind": "polyalign", "path": "conv.jsonl"}]}, logging={"progress": False})
    assert invoke(["prepare"]).exit_code == 0
    val = in_tmp / "data/prepared/val.parquet"
    pq.write_table(pq.read_table(val).slice(0, 0), val)
    result = invoke(["bucketize"])
    assert result.exit_code == 2
    assert "the val split is empty" in one_line(result.output) and "val.parquet" in result.output
    assert not (in_tmp / "data/buckets").exists()


def test_outputs_do_not_depend_on_where_the_project_or_its_packages_live(tmp_path):
    """Origins in prepare_dropped.jsonl are relative to the project root (or, for the packaged chatterbot
    corpus, to site-packages): two copies of a project in different places write the same bytes."""
    written = []
    for root in (tmp_path / "a", tmp_path / "deeper" / "place" / "b"):
        root.mkdir(parents=True)
        write_jsonl(root / "rows.jsonl", [record("Hi?", "Hello.", "train"), "not an object",
                                          record("Why?", "", "val")])
        sources = "[{kind: polyalign, path: rows.jsonl}, {kind: chatterbot, languages: [english], categories: [trivia]}]"
        params = load_params(None, [f"data.sources={sources}", "data.on_invalid=skip", "logging.progress=false"])
        prepare.run(params, root)
        written.append({p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                        if p.is_file() and p.name != "rows.jsonl"})
        dropped = (root / "reports/prepare_dropped.jsonl").read_text(encoding="utf-8")
        assert str(root) not in dropped and "site-packages" not in dropped
        origins = {json.loads(line)["origin"] for line in dropped.splitlines() if "origin" in line}
        assert {"rows.jsonl:2", "rows.jsonl:3"} <= origins  # an invalid row, an empty answer
        assert any(o.startswith("chatterbot_corpus/data/english/trivia.yml: conversations[") for o in origins)
    assert written[0] == written[1]
