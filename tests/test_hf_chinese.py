"""The Chinese adapters (COIG-CQIA, HC3-Chinese, OASST2, CMRC 2018, DRCD, DuReader) on hand-written fixtures in
each dataset's published row layout, read through the real `datasets.load_dataset` path, and CMRC 2018 on its
real trial file."""

import json
from collections import Counter, defaultdict

import pytest

from conftest import shared_file
from hf_helpers import HF_FIXTURES, read, records
from polyalign.data.record import Problem
from polyalign.data.sources import read_source
from polyalign.data.sources.hf import adapter, group_key
from polyalign.params import HfSource

SEEDS = range(6)


def labels(rec: dict) -> tuple:
    return rec["language"], rec["track"], rec["family"], rec["style_bucket"]


def by_id(recs: list[dict]) -> dict[str, dict]:
    out = {r["id"]: r for r in recs}
    assert len(out) == len(recs), "record ids are unique"
    return out


def assert_groups_share_a_split(recs: list[dict]) -> None:
    splits = defaultdict(set)
    for r in recs:
        splits[r["group_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits.values()), dict(splits)


def test_the_six_adapters_are_registered_with_their_labels_hub_ids_and_licences():
    expected = {
        "coig_cqia": ("m-a-p/COIG-CQIA", "single", "assistant", "assistant_like", "instruction",
                      "CC BY-NC-SA 4.0 (see the dataset card)"),
        "hc3_zh": ("Hello-SimpleAI/HC3-Chinese", "single", "qa", "longform_qa", "question", "CC BY-SA 4.0"),
        "oasst2": ("OpenAssistant/oasst2", "multi", "dialogue", "open_chat", "tree", "Apache-2.0"),
        "cmrc2018": ("hfl/cmrc2018", "single", "qa", "qa_search", "paragraph", "CC BY-SA 4.0"),
        "drcd": ("voidful/DRCD", "single", "qa", "qa_search", "paragraph", "CC BY-SA 3.0"),
        "dureader": ("PaddlePaddle/dureader_robust", "single", "qa", "qa_search", "paragraph", "Apache-2.0"),
    }
    for name, (hub_id, track, family, style, group, licence) in expected.items():
        spec = adapter(name)
        assert (spec.hub_id, spec.language, spec.track, spec.family, spec.style, spec.group, spec.licence) == (
            hub_id, "zh", track, family, style, group, licence)
    coig = adapter("coig_cqia").config
    assert isinstance(coig, tuple) and len(coig) == 13 and {"ruozhiba", "zhihu", "xhs", "wiki"} <= set(coig)
    assert adapter("hc3_zh").config == "all"
    assert [adapter(n).json_field for n in ("cmrc2018", "drcd", "dureader")] == ["data"] * 3


# --- COIG-CQIA -----------------------------------------------------------------------------------------------

def test_coig_cqia_keeps_human_written_and_verified_rows_only():
    recs, dropped = records("coig_cqia")
    assert dropped == Counter({"not_human_written": 1, "not_human_verified": 1, "empty_answer": 1})
    assert [r["id"] for r in recs] == ["coig_cqia/train[0]", "coig_cqia/train[1]", "coig_cqia/train[2]"]
    first, second = recs[0], recs[1]
    assert first["question"] == "用一句话解释什么是光合作用。" and first["context"] == ""
    assert first["human_answer"] == "光合作用是绿色植物利用阳光把二氧化碳和水转化为有机物并释放氧气的过程。"
    assert (second["question"], second["context"]) == ("把下面的文言文翻译成现代汉语。", "学而时习之，不亦说乎？")
    assert second["human_answer"] == "学习了知识并且按时温习，不也是很愉快的吗？"
    assert {labels(r) for r in recs} == {("zh", "single", "assistant", "assistant_like")}
    assert {r["dataset"] for r in recs} == {"coig_cqia"} and all(r["dialogue_history"] == [] for r in recs)
    meta = json.loads(second["meta"])
    assert meta["domain"] == ["古文"] and meta["task_type"] == {"major": ["翻译"], "minor": ["文言文翻译"]}
    assert first["group_id"] == group_key("用一句话解释什么是光合作用。")


def test_coig_cqia_is_train_only_so_rows_go_to_any_split_with_one_instruction_in_one_split():
    seen = set()
    for seed in SEEDS:
        recs, _ = records("coig_cqia", seed=seed)
        same = [r for r in recs if r["question"] == "把下面的文言文翻译成现代汉语。"]
        assert len(same) == 2 and same[0]["group_id"] == same[1]["group_id"]
        assert_groups_share_a_split(recs)
        seen |= {r["split"] for r in recs}
    assert seen <= {"train", "val", "test"} and "train" in seen


# --- HC3-Chinese ---------------------------------------------------------------------------------------------

HC3 = {"path": str(HF_FIXTURES / "hc3_zh")}


def test_hc3_zh_gives_one_example_per_human_answer_and_never_the_chatgpt_ones():
    recs, dropped = records("hc3_zh", **HC3)
    assert dropped == Counter({"no_human_answer": 1, "empty_answer": 1})
    assert [r["id"] for r in recs] == ["hc3_zh/train[0]#0", "hc3_zh/train[0]#1", "hc3_zh/train[1]#0"]
    assert [r["human_answer"] for r in recs] == [
        "长期熬夜会打乱生物钟，导致免疫力下降、记忆力减退。", "熬夜伤肝，建议尽量在十一点前睡觉。",
        "市盈率是股价除以每股收益，用来衡量股票贵不贵。"]
    assert [r["question"] for r in recs[:2]] == ["我有一个问题，长期熬夜对身体有什么影响？"] * 2
    assert not any("ChatGPT" in r["human_answer"] or "可能会对身体" in r["human_answer"] for r in recs)
    assert {labels(r) for r in recs} == {("zh", "single", "qa", "longform_qa")}
    assert [json.loads(r["meta"])["source_id"] for r in recs] == ["0", "0", "1"]
    assert recs[0]["group_id"] == recs[1]["group_id"] == group_key("我有一个问题，长期熬夜对身体有什么影响？")


def test_hc3_zh_answers_to_one_question_share_a_split():
    seen = set()
    for seed in SEEDS:
        recs, _ = records("hc3_zh", seed=seed, **HC3)
        assert recs[0]["split"] == recs[1]["split"]
        assert_groups_share_a_split(recs)
        seen |= {r["split"] for r in recs}
    assert seen <= {"train", "val", "test"}


# --- OASST2 --------------------------------------------------------------------------------------------------

BOOK_TREE = "6ab24d72-0181-4594-a9cd-deaf170242fb"


def test_oasst2_keeps_reviewed_chinese_replies_whose_whole_ancestry_is_usable():
    recs, dropped = records("oasst2")
    # a2 deleted; a5 English; a6 unreviewed; a4 under the deleted a2, a7 with its parent missing, a8 replying
    # to an English root, a10 under two prompters in a row: broken ancestry. Prompter messages are not counted.
    assert dropped == Counter({"broken_ancestry": 4, "deleted": 1, "not_chinese": 1, "not_reviewed": 1})
    recs = by_id(recs)
    assert set(recs) == {"c8e83833-ecbc-44fe-b6db-735228c25a1c", "e5c1f7a9-3b2d-4c8e-8f6a-0d9b7e1c2a35",
                         "b2d4f6a8-0c2e-4a4b-96d8-1f3b5d7f9a0e"}
    first = recs["c8e83833-ecbc-44fe-b6db-735228c25a1c"]
    assert first["question"] == "我想学习中文书法，应该从哪里开始？" and first["dialogue_history"] == []
    assert first["human_answer"] == "建议先从楷书入门，准备好笔墨纸砚，选一本颜真卿或欧阳询的字帖，每天临摹。"
    deep = recs["e5c1f7a9-3b2d-4c8e-8f6a-0d9b7e1c2a35"]
    assert deep["question"] == "那每天应该练习多长时间比较合适？"
    assert deep["human_answer"] == "初学者每天练习三十分钟到一小时就够了，关键是坚持。"
    assert deep["dialogue_history"] == [
        {"role": "user", "text": "我想学习中文书法，应该从哪里开始？"},
        {"role": "assistant", "text": "建议先从楷书入门，准备好笔墨纸砚，选一本颜真卿或欧阳询的字帖，每天临摹。"}]
    assert {labels(r) for r in recs.values()} == {("zh", "multi", "dialogue", "open_chat")}
    assert json.loads(deep["meta"])["message_tree_id"] == BOOK_TREE and json.loads(deep["meta"])["rank"] == 0
    assert first["group_id"] == deep["group_id"] == group_key(BOOK_TREE)
    assert first["context"] == ""


def test_oasst2_keeps_the_validation_split_and_shares_train_trees_out_between_train_and_test():
    seen = set()
    for seed in SEEDS:
        recs, _ = records("oasst2", seed=seed)
        recs = by_id(recs)
        assert recs["b2d4f6a8-0c2e-4a4b-96d8-1f3b5d7f9a0e"]["split"] == "val"
        train_rows = [r for r in recs.values() if json.loads(r["meta"])["official_split"] == "train"]
        assert len(train_rows) == 2 and train_rows[0]["split"] == train_rows[1]["split"]  # one tree
        seen |= {r["split"] for r in train_rows}
    assert seen <= {"train", "test"}


def test_oasst2_reads_the_whole_split_before_mapping_so_row_order_does_not_matter(tmp_path):
    lines = (HF_FIXTURES / "oasst2/train.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    examples, dropped = read("oasst2", path=str(tmp_path))
    assert dropped == Counter({"broken_ancestry": 4, "deleted": 1, "not_chinese": 1, "not_reviewed": 1})
    assert sorted(e.id for e in examples) == ["c8e83833-ecbc-44fe-b6db-735228c25a1c",
                                              "e5c1f7a9-3b2d-4c8e-8f6a-0d9b7e1c2a35"]


# --- CMRC 2018, DRCD, DuReader -------------------------------------------------------------------------------

def test_cmrc2018_maps_flat_rows_with_the_first_answer_and_keeps_the_official_splits():
    recs, dropped = records("cmrc2018")
    assert dropped == Counter({"no_answer": 1})
    recs = by_id(recs)
    assert list(recs) == ["TRAIN_101_QUERY_0", "TRAIN_101_QUERY_1", "TRAIN_102_QUERY_0", "DEV_201_QUERY_0",
                          "DEV_202_QUERY_0", "TRIAL_301_QUERY_0"]
    first = recs["TRAIN_101_QUERY_0"]
    assert first["question"] == "青石镇始建于哪个年间？" and first["human_answer"] == "明朝洪武年间"
    assert first["context"].startswith("青石镇位于江南丘陵地带") and first["dialogue_history"] == []
    assert recs["DEV_201_QUERY_0"]["human_answer"] == "火山口湖"  # the first of three annotators' answers
    assert {labels(r) for r in recs.values()} == {("zh", "single", "qa", "qa_search")}
    assert {i: r["split"] for i, r in recs.items()} == {
        "TRAIN_101_QUERY_0": "train", "TRAIN_101_QUERY_1": "train", "TRAIN_102_QUERY_0": "train",
        "DEV_201_QUERY_0": "val", "DEV_202_QUERY_0": "val", "TRIAL_301_QUERY_0": "test"}
    assert first["group_id"] == recs["TRAIN_101_QUERY_1"]["group_id"] == group_key(
        "青石镇位于江南丘陵地带，始建于明朝洪武年间，以出产青石板闻名。镇上有一座三孔石桥，名为望月桥，建于清朝乾隆年间。")


def test_drcd_flattens_the_nested_squad_layout_of_its_hub_copy():
    recs, dropped = records("drcd")
    assert dropped == Counter({"no_answer": 1})
    recs = by_id(recs)
    assert {i: r["split"] for i, r in recs.items()} == {
        "1001-1-1": "train", "1001-1-2": "train", "1001-2-1": "train", "1002-1-1": "train",
        "2001-1-1": "val", "3001-1-1": "test"}
    one = recs["1001-1-2"]
    assert (one["question"], one["human_answer"]) == ("日月潭的湖面以哪座島為界？", "拉魯島")
    assert one["context"].startswith("日月潭位於臺灣南投縣魚池鄉") and json.loads(one["meta"])["title"] == "日月潭"
    assert recs["1001-2-1"]["context"].startswith("日月潭周邊有邵族部落")
    assert recs["1001-1-1"]["group_id"] == one["group_id"] != recs["1001-2-1"]["group_id"]
    assert {labels(r) for r in recs.values()} == {("zh", "single", "qa", "qa_search")}


def test_drcd_reads_an_original_squad_format_json_file_given_as_data_files():
    options = {"path": None, "data_files": {"train": str(HF_FIXTURES / "drcd/original.json")}}
    examples, dropped = read("drcd", **options)
    assert dropped == Counter({"no_answer": 1})
    assert [(e.id, e.origin) for e in examples] == [
        ("4001-1-1", "hf:drcd/train[0]#0"), ("4001-1-2", "hf:drcd/train[0]#1"), ("4002-1-1", "hf:drcd/train[1]#0")]
    assert (examples[0].question, examples[0].human_answer) == ("阿里山森林鐵路於哪一年通車？", "一九一二年")
    assert examples[1].human_answer == "運送木材" and examples[2].context.startswith("臺北一零一大樓高五百零八公尺")
    for seed in SEEDS:  # train only: any split, one paragraph's questions together
        recs, _ = records("drcd", seed=seed, **options)
        assert len(recs) == 3 and recs[0]["split"] == recs[1]["split"]
        assert {r["split"] for r in recs} <= {"train", "val", "test"}


def test_dureader_maps_flat_rows_and_drops_the_unanswered_test_questions():
    recs, dropped = records("dureader")
    assert dropped == Counter({"no_answer": 2})
    recs = by_id(recs)
    assert {i: r["split"] for i, r in recs.items()} == {
        "6d0b6c5a3f2e4d1c9b8a7f6e5d4c3b2a": "train", "0a1b2c3d4e5f60718293a4b5c6d7e8f9": "train",
        "f9e8d7c6b5a4938271605f4e3d2c1b0a": "train", "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f": "val"}
    one = recs["1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f"]
    assert (one["question"], one["human_answer"]) == ("身份证过期了去哪里办", "户籍所在地或居住地的派出所")
    assert one["context"] == "身份证过期后可以到户籍所在地或居住地的派出所办理换领，一般需要携带旧证和户口本。"
    assert recs["6d0b6c5a3f2e4d1c9b8a7f6e5d4c3b2a"]["group_id"] == recs["0a1b2c3d4e5f60718293a4b5c6d7e8f9"]["group_id"]
    assert {labels(r) for r in recs.values()} == {("zh", "single", "qa", "qa_search")}


def test_a_row_in_neither_squad_layout_is_an_input_error_naming_the_row(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"title": "无题", "text": "没有问题也没有段落"}\n', encoding="utf-8")
    items = list(read_source(HfSource(kind="hf", dataset="cmrc2018", path=str(tmp_path)), tmp_path))
    assert len(items) == 1 and isinstance(items[0], Problem) and not items[0].always_skip
    assert items[0].reason == "invalid_row" and "hf:cmrc2018/train[0]" in items[0].describe()


@pytest.mark.parametrize("seed", [0, 1])
def test_cmrc2018_on_its_real_trial_file(seed):
    path = shared_file("cmrc2018/cmrc2018_trial.json")
    recs, dropped = records("cmrc2018", seed=seed, path=None, data_files={"train": str(path)})
    assert dropped == Counter()  # every question has an answer; nothing dropped for its layout
    assert len(recs) == 1002 and len(by_id(recs)) == 1002
    assert {labels(r) for r in recs} == {("zh", "single", "qa", "qa_search")}
    assert all(r["human_answer"] and r["context"] for r in recs)
    # two questions of the trial file are blank in the source; prepare keeps them for their context
    assert {r["id"] for r in recs if not r["question"]} == {"TRIAL_20_QUERY_0", "TRIAL_776_QUERY_4"}
    first = by_id(recs)["TRIAL_800_QUERY_0"]
    assert (first["question"], first["human_answer"]) == ("生命数耗完即算为什么？", "踢爆")
    assert json.loads(first["meta"])["title"] == "泡泡战士"
    assert len({r["group_id"] for r in recs}) == 256  # one paragraph per document in the trial set
    assert_groups_share_a_split(recs)
    assert {r["split"] for r in recs} == {"train", "val", "test"}  # train only: shared out by paragraph
