"""Each source adapter on a small fixture of its real format."""

import json

import pytest
from pydantic import TypeAdapter

from conftest import FIXTURES
from polyalign.data.record import Example, Problem
from polyalign.data.sources import read_source
from polyalign.data.sources.chatterbot import CATEGORY_FAMILY, corpus_dir
from polyalign.errors import UserError
from polyalign.params import Source, load_params
from polyalign.stages import prepare


def read(root=FIXTURES, **cfg):
    items = list(read_source(TypeAdapter(Source).validate_python(cfg), root))
    return [i for i in items if isinstance(i, Example)], [i for i in items if isinstance(i, Problem)]


def test_alpaca_keeps_the_papers_bucket_fields_and_builds_history():
    examples, problems = read(kind="alpaca", path="alpaca.json")
    assert not problems and len(examples) == 4
    first, second, third, chinese = examples
    assert (first.track, first.family, first.style_bucket) == ("multi", "qa", "qa_search")
    assert first.question == "Who rushed into the house?" and first.context.startswith("FERN Mullins")
    assert first.meta["source_bucket_id"] == "en|multi|qa|short" and first.meta["dist_sft_weight"] == 0.7
    assert first.meta["system"] == "You are a helpful assistant."
    assert second.history == [("user", "Who rushed into the house?"), ("assistant", "FERN Mullins")]
    assert second.group_id == first.group_id  # one conversation about one passage
    assert third.track is None and third.family == "assistant"  # no labels: prepare derives the track
    assert chinese.question == "用一句话介绍长城。" and chinese.context == ""


def test_polyalign_jsonl_keeps_splits_labels_and_extra_fields():
    examples, problems = read(kind="polyalign", path="polyalign.jsonl")
    assert not problems and [e.id for e in examples] == ["dd-1-1", "dd-1-3", "cq-7"]
    assert [e.split for e in examples] == ["train", "train", "test"]
    assert examples[1].history == [("user", "Hi, how are you doing today?"),
                                   ("assistant", "Pretty good, thanks. And you?")]
    assert examples[0].group_id == examples[1].group_id
    assert examples[2].language is None and examples[2].meta["extra_field"] == "kept in meta"
    assert examples[0].meta["source_length_bin"] == "short"


def test_messages_reads_openai_and_sharegpt_and_targets_every_assistant_turn():
    examples, problems = read(kind="messages", path="messages.jsonl")
    assert not problems
    by_conv = {}
    for e in examples:
        by_conv.setdefault(e.group_id, []).append(e)
    single, sharegpt, jokes = by_conv.values()
    assert [(e.question, e.human_answer, e.track) for e in single] == [("What's the capital of France?", "Paris.", "single")]
    assert single[0].meta["system"] == "Be brief."
    assert [e.human_answer for e in sharegpt] == ["可以读读《活着》，很感人。", "余华。"]
    assert sharegpt[1].history == [("user", "你好，推荐一本书吧。"), ("assistant", "可以读读《活着》，很感人。")]
    assert all(e.track == "multi" for e in sharegpt + jokes) and jokes[0].family == "dialogue"
    last_only, _ = read(kind="messages", path="messages.jsonl", targets="last")
    assert [e.human_answer for e in last_only if e.group_id == sharegpt[0].group_id] == ["余华。"]


def test_squad_v2_keeps_unanswerable_with_empty_answer_and_groups_by_article():
    examples, problems = read(kind="squad", path="squad.json", split="val")
    assert not problems and len(examples) == 4
    assert examples[0].human_answer == "France" and examples[0].context.startswith("The Normans")
    assert examples[1].human_answer == "The Normans" and examples[1].meta["n_answers"] == 2
    assert examples[2].human_answer == "" and examples[2].meta["unanswerable"] is True
    assert {e.track for e in examples} == {"single"} and {e.family for e in examples} == {"qa"}
    assert {e.split for e in examples} == {"val"}
    assert len({e.group_id for e in examples[:3]}) == 1 and examples[3].group_id != examples[0].group_id


def test_kdconv_targets_every_second_message_with_knowledge_in_meta():
    examples, problems = read(kind="kdconv", path="kdconv.json")
    assert not problems
    assert [e.human_answer for e in examples] == ["看过，是陈凯歌导演的电影。", "张国荣和张丰毅。", "非常感人，葛优演得很好。"]
    assert examples[1].question == "主演是谁呢？" and len(examples[1].history) == 2
    assert examples[1].meta["knowledge"][0]["attrvalue"] == "张国荣"
    assert [e.track for e in examples] == ["multi", "multi", "single"]
    assert {e.language for e in examples} == {"zh"} and {e.family for e in examples} == {"dialogue"}


def test_chatterbot_reads_english_and_both_chinese_scripts_with_mapped_families():
    examples, _ = read(kind="chatterbot")
    assert {e.language for e in examples} == {"en", "zh"}
    assert {e.meta["corpus_language"] for e in examples} == {"english", "chinese", "traditionalchinese"}
    assert {e.family for e in examples} == {"assistant", "qa", "dialogue"}
    assert all(e.family == CATEGORY_FAMILY[e.meta["category"]] for e in examples)
    assert {e.track for e in examples} == {"single", "multi"}
    multi = [e for e in examples if e.track == "multi" and e.history]
    assert multi and all(len(e.history) % 2 == 0 for e in multi)


def test_chatterbot_malformed_entries_are_skipped_and_counted():
    _, problems = read(kind="chatterbot", languages=["english"], categories=["trivia"])
    # english/trivia.yml holds one conversation that is a plain string instead of a list
    assert [p.reason for p in problems] == ["chatterbot_malformed_conversation"]
    assert problems[0].always_skip and "trivia.yml" in problems[0].origin


def test_chatterbot_category_names_are_checked():
    with pytest.raises(UserError, match="no category"):
        read(kind="chatterbot", categories=["weather"])


def test_every_packaged_category_has_a_documented_family():
    for lang in ("english", "chinese", "traditionalchinese"):
        assert {p.stem for p in (corpus_dir() / lang).glob("*.yml")} <= set(CATEGORY_FAMILY)


def test_broken_rows_become_problems_naming_file_line_and_field():
    examples, problems = read(kind="alpaca", path="broken.jsonl")
    assert [e.human_answer for e in examples] == ["Hi!", "Blue."]
    bad_json, bad_type = problems
    assert bad_json.reason == "invalid_json" and bad_json.origin.endswith("broken.jsonl:2")
    assert bad_type.reason == "invalid_field" and bad_type.origin.endswith("broken.jsonl:3")
    assert bad_type.field == "output" and "valid string" in bad_type.message


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found: nope.json"):
        read(kind="squad", path="nope.json")


def test_whole_file_json_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"output": "a"},\n  {"output": }\n]')
    with pytest.raises(UserError, match=r"bad.json:3:\d+: not valid JSON"):
        read(kind="alpaca", path=str(path))


def test_fixture_files_are_valid_json():
    for path in FIXTURES.glob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------- bad input (issue 12)


def write_jsonl(path, rows):
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def test_messages_merges_consecutive_messages_of_one_speaker_and_loses_none(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                      {"role": "assistant", "content": "How can I help?"}]},
        {"messages": [{"role": "user", "content": "One."}, {"role": "user", "content": "Two?"},
                      {"role": "assistant", "content": "Three."}, {"role": "user", "content": "Four?"},
                      {"role": "assistant", "content": "Five."}]},
    ])
    examples, problems = read(tmp_path, kind="messages", path="chat.jsonl")
    assert not problems
    first, *rest = examples
    assert (first.human_answer, first.track, first.history) == ("Hello.\n\nHow can I help?", "single", [])
    assert first.meta["merged_messages"] == 1
    assert [(e.question, e.human_answer) for e in rest] == [("One.\n\nTwo?", "Three."), ("Four?", "Five.")]
    assert rest[1].history == [("user", "One.\n\nTwo?"), ("assistant", "Three.")]  # histories alternate
    assert all(e.track == "multi" for e in rest) and rest[0].meta["merged_messages"] == 1


def test_a_line_that_is_not_utf8_is_a_problem_naming_line_and_column(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"output": "fine"}, b'{"output": "caf\xe9"}', {"output": "also fine"}])
    examples, problems = read(tmp_path, kind="alpaca", path="x.jsonl")
    assert [e.human_answer for e in examples] == ["fine", "also fine"]  # the lines after it are still read
    (problem,) = problems
    assert problem.reason == "invalid_utf8" and problem.origin.endswith("x.jsonl:2")
    assert problem.message == "not UTF-8 text (byte 0xe9 at column 16)"


def test_a_broken_jsonl_line_names_the_column_in_that_line(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [b'{"output": "a", "input": "b"'])
    _, (problem,) = read(tmp_path, kind="alpaca", path="x.jsonl")
    # json used to see the line's newline and report column 1 of a line 2
    assert problem.message == "not valid JSON at column 29: Expecting ',' delimiter"


def test_a_utf8_byte_order_mark_is_not_an_error(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"output": "a"}).encode() + b"\n")
    (tmp_path / "x.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"output": "b"}]).encode())
    assert [e.human_answer for e in read(tmp_path, kind="alpaca", path="x.jsonl")[0]] == ["a"]
    assert [e.human_answer for e in read(tmp_path, kind="alpaca", path="x.json")[0]] == ["b"]


def test_a_json_file_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "x.json").write_bytes(b'[\n  {"output": "a"},\n  {"output": "\xff"}\n]')
    with pytest.raises(UserError, match=r"x.json:3: not UTF-8 text \(byte 0xff at byte 15 of the line\)"):
        read(tmp_path, kind="alpaca", path="x.json")


def test_json_nested_too_deeply_is_a_user_error_naming_the_file(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match=r"deep.json: not valid JSON: nested too deeply"):
        read(tmp_path, kind="squad", path="deep.json")
    write_jsonl(tmp_path / "deep.jsonl", [("[" * 100_000 + "]" * 100_000).encode(), {"output": "ok"}])
    examples, (problem,) = read(tmp_path, kind="alpaca", path="deep.jsonl")
    assert problem.origin.endswith("deep.jsonl:1") and "nested too deeply" in problem.message
    assert [e.human_answer for e in examples] == ["ok"]


def test_a_folder_given_as_a_file_is_named_a_folder(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(UserError, match="data source: raw is a folder, not a file"):
        read(tmp_path, kind="alpaca", path="raw")


def test_a_file_outside_the_project_is_read_with_a_warning_that_dvc_does_not_track_it(tmp_path, capsys):
    project, outside = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    outside.mkdir()
    write_jsonl(project / "in.jsonl", [{"output": "a"}])
    write_jsonl(outside / "out.jsonl", [{"output": "b"}])
    assert len(read(project, kind="alpaca", path="in.jsonl")[0]) == 1
    assert "warning" not in capsys.readouterr().err
    assert len(read(project, kind="alpaca", path=str(outside / "out.jsonl"))[0]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: data source:" in err and "out.jsonl is outside the project" in err
    assert "DVC does not track it" in err
    assert len(read(project, kind="alpaca", path="../elsewhere/out.jsonl")[0]) == 1
    assert "outside the project" in capsys.readouterr().err


def test_prepare_stops_on_a_line_that_is_not_utf8_or_counts_it_with_skip(tmp_path):
    rows = [{"instruction": f"Question number {i}?", "output": f"Answer {i}."} for i in range(12)]
    write_jsonl(tmp_path / "x.jsonl", [*rows[:3], b'{"output": "\xff"}', *rows[3:]])
    sources = json.dumps([{"kind": "alpaca", "path": "x.jsonl", "language": "en"}])
    params = load_params(None, [f"data.sources={sources}", "logging.progress=false"])
    with pytest.raises(UserError, match=r"x.jsonl:4: not UTF-8 text \(byte 0xff at column 13\)"):
        prepare.run(params, tmp_path)
    assert not (tmp_path / "data/prepared").exists()
    params = load_params(None, [f"data.sources={sources}", "logging.progress=false", "data.on_invalid=skip"])
    report = prepare.run(params, tmp_path)
    assert report["records"] == 12 and report["dropped"] == {"invalid_utf8": 1}
