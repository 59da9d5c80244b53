"""The `hf` source kind: loading through datasets.load_dataset from local files, the split policy, presets and
the error for an unreachable hub dataset. Per-dataset adapters: test_hf_english.py, test_hf_chinese.py."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from conftest import write_params
from hf_helpers import HF_FIXTURES, read, records
from polyalign.data.clean import hashed_split
from polyalign.data.record import Problem
from polyalign.data.sources import read_source
from polyalign.data.sources.hf import official_split, split_policy
from polyalign.errors import UserError
from polyalign.params import HF_DATASETS, PRESETS, DataParams, HfSource, SplitRatios, load_params
from polyalign.stages import prepare
from sft_project import cli


def test_official_split_names_and_the_policy_for_missing_splits():
    assert [official_split(n) for n in ("train", "validation", "validation1", "dev", "test", "train_eli5")] == [
        "train", "val", "val", "val", "test", "train"]
    assert split_policy({"train", "val", "test"}) == {"train": ("train", None), "val": ("val", None),
                                                      "test": ("test", None)}
    assert split_policy({"train", "val"}) == {"train": (None, ("train", "test")), "val": ("val", None)}
    assert split_policy({"train"}) == {"train": (None, ("train", "val", "test"))}


def test_hashed_split_inside_a_pool_keeps_the_ratios_between_its_members():
    ratios = SplitRatios()
    picks = Counter(hashed_split(0, f"g{i}", ratios, ("train", "test")) for i in range(20000))
    assert set(picks) == {"train", "test"}
    assert picks["test"] / 20000 == pytest.approx(0.1 / 0.9, abs=0.01)
    assert hashed_split(3, "story-1", ratios, ("train", "test")) == hashed_split(3, "story-1", ratios, ("train", "test"))


def test_dolly_maps_instruction_context_and_response_and_splits_by_instruction():
    recs, dropped = records("dolly")
    assert dropped == Counter({"empty_answer": 1})
    assert len(recs) == 4
    first = recs[0]
    assert first["question"] == "When did Virgin Australia start operating?"
    assert first["context"].startswith("Virgin Australia, the trading name")
    assert (first["language"], first["track"], first["family"], first["style_bucket"]) == (
        "en", "single", "assistant", "assistant_like")
    assert first["dataset"] == "dolly" and '"category": "closed_qa"' in first["meta"]
    # the same instruction twice: one group, one split
    same = [r for r in recs if r["question"].startswith("Which is a species")]
    assert len(same) == 2 and same[0]["split"] == same[1]["split"] and same[0]["group_id"] == same[1]["group_id"]


def test_every_named_adapter_is_registered_with_the_papers_labels():
    from polyalign.data.sources.hf import adapter

    for name in HF_DATASETS:
        spec = adapter(name)
        assert spec.language in ("en", "zh") and spec.track in ("single", "multi")
        assert spec.family in ("assistant", "qa", "dialogue") and spec.style and spec.hub_id and spec.licence
    assert set(PRESETS["paper-all"]) == set(HF_DATASETS)
    assert {adapter(n).language for n in PRESETS["paper-en"]} == {"en"}
    assert {adapter(n).language for n in PRESETS["paper-zh"]} == {"zh"}


def test_presets_replace_the_sources_with_the_papers_corpora():
    assert [s.kind for s in DataParams().effective_sources()] == ["chatterbot"]
    zh = DataParams(preset="paper-zh").effective_sources()
    assert [s.dataset for s in zh] == list(PRESETS["paper-zh"]) and {s.kind for s in zh} == {"hf"}
    assert len(DataParams(preset="paper-all").effective_sources()) == 14


def test_data_files_and_max_rows(tmp_path):
    examples, _ = read("dolly", path=None, data_files={"train": str(HF_FIXTURES / "dolly/train.jsonl")}, max_rows=2)
    assert len(examples) == 2


def test_an_unreachable_hub_dataset_is_a_clear_error_naming_the_dataset_and_the_cause(tmp_path):
    write_params(tmp_path, data={"preset": "paper-zh"})
    result = cli(["prepare"], tmp_path, check=False, HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "hf:coig_cqia" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert not (tmp_path / "data/prepared").exists()
    result = cli(["prepare", "--preset", "paper-en"], tmp_path, check=False, HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and "hf:dolly" in result.stderr
    assert load_params(tmp_path / "params.yaml", ["data.preset=paper-all"]).data.preset == "paper-all"


def test_prepare_reads_several_corpora_and_counts_their_drops_by_source_and_reason(tmp_path):
    sources = [{"kind": "hf", "dataset": name, "path": str(HF_FIXTURES / name)}
               for name in ("squad_v2", "oasst2", "daily_dialog")]
    params = load_params(None, [f"data.sources={json.dumps(sources)}", "logging.progress=false"])
    report = prepare.run(params, tmp_path)
    by_source = report["sources"]
    assert set(by_source) == {"squad_v2", "oasst2", "daily_dialog"} and {s["kind"] for s in by_source.values()} == {"hf"}
    assert by_source["squad_v2"]["dropped"].get("empty_answer", 0) >= 1  # unanswerable: kept by the adapter, dropped here
    assert {"deleted", "not_chinese", "broken_ancestry"} <= set(by_source["oasst2"]["dropped"])
    rows = [r for s in prepare.SPLITS for r in pq.read_table(tmp_path / "data/prepared" / f"{s}.parquet").to_pylist()]
    assert {r["dataset"] for r in rows} == {"squad_v2", "oasst2", "daily_dialog"}
    dialog = [r for r in rows if r["dataset"] == "daily_dialog"]
    assert {r["split"] for r in dialog} == {"train", "val", "test"}  # DailyDialog's official splits, kept
    assert all(json.loads(r["meta"])["official_split"] in ("train", "validation", "test") for r in dialog)


def test_a_local_folder_that_is_not_a_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("{not json\n", encoding="utf-8")
    write_params(tmp_path, data={"sources": [{"kind": "hf", "dataset": "dolly", "path": "."}]})
    result = cli(["prepare"], tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "hf:dolly" in result.stderr and "local files could not be read" in result.stderr


def test_hf_rows_are_checked_like_file_rows_naming_the_row_and_field(tmp_path):
    """A list where text belongs (or a nested field of the wrong type) is an input error, not a crash."""
    dolly = tmp_path / "dolly.jsonl"
    dolly.write_text("".join(json.dumps({"instruction": f"Question {i}?", "response": ["one", "two"]}) + "\n"
                             for i in range(2)))
    items = list(read_source(HfSource(kind="hf", dataset="dolly", data_files={"train": str(dolly)}), tmp_path))
    assert all(isinstance(i, Problem) and not i.always_skip for i in items) and len(items) == 2
    assert items[0].describe() == "hf:dolly/train[0]: field 'response': Input should be a valid string " \
                                  '(got ["one", "two"])'
    eli5 = tmp_path / "eli5.jsonl"
    eli5.write_text(json.dumps({"q_id": "q1", "title": "Why?", "answers": {"text": [["a"]], "score": [1]}}) + "\n")
    (problem,) = read_source(HfSource(kind="hf", dataset="eli5", data_files={"train": str(eli5)}), tmp_path)
    assert (problem.reason, problem.field) == ("invalid_field", "answers[0].text")


def test_prepare_stops_on_a_bad_hf_row_or_counts_it_with_skip(tmp_path):
    rows = [{"instruction": f"Question {i}?", "response": f"Answer {i}.", "context": ""} for i in range(12)]
    rows[4]["context"] = 7  # a number where text belongs
    (tmp_path / "dolly.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = json.dumps([{"kind": "hf", "dataset": "dolly", "data_files": {"train": "dolly.jsonl"}}])
    params = load_params(None, [f"data.sources={sources}", "logging.progress=false"])
    with pytest.raises(UserError, match=r"hf:dolly/train\[4\]: field 'context': Input should be a valid string"):
        prepare.run(params, tmp_path)
    params = load_params(None, [f"data.sources={sources}", "logging.progress=false", "data.on_invalid=skip"])
    report = prepare.run(params, tmp_path)
    assert report["records"] == 11 and report["dropped"] == {"invalid_field": 1}


def test_every_hf_adapter_checks_its_rows_with_a_row_model():
    from polyalign.data.sources.hf import HfRow, adapter

    for name in HF_DATASETS:
        assert issubclass(adapter(name).row_model, HfRow), name


def test_hf_data_files_that_are_folders_or_outside_the_project(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="data source hf:dolly: folder is a folder, not a file"):
        list(read_source(HfSource(kind="hf", dataset="dolly", data_files={"train": "folder"}), tmp_path))
    examples, _ = read("dolly", root=tmp_path, path=None,
                       data_files={"train": str(HF_FIXTURES / "dolly/train.jsonl")})
    assert examples and "is outside the project" in capsys.readouterr().err
