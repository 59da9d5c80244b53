"""`pairs.preference_file`: the user's own pairs are read and checked as the data sources' rows are (issue 12):
the same row validation, the same messages naming file, line and field."""

import json

import pytest

from polyalign.errors import UserError
from polyalign.stages.pairs import read_preference_file

ROW = {"question": "What is the capital of France?", "chosen": "Paris.", "rejected": "London.", "language": "en",
       "track": "single", "family": "qa", "length_bin": "short"}


def write(path, *rows):
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path.name


def test_rows_become_pairs_with_their_bucket_and_defaults(tmp_path):
    history = [{"role": "user", "text": "Hi"}, {"role": "assistant", "text": "Hello."}]
    name = write(tmp_path / "mine.jsonl", ROW, b"", {**ROW, "id": "p2", "dialogue_history": history,
                                                      "track": "multi", "note": "ignored"})
    first, second = read_preference_file(name, tmp_path)
    assert first["id"] == "mine/1" and first["context"] == "" and first["dialogue_history"] == []
    assert first["bucket_id"] == "en|single|qa|short"
    assert second["id"] == "p2" and second["dialogue_history"] == history and "note" not in second
    assert second["bucket_id"] == "en|multi|qa|short"


@pytest.mark.parametrize(("row", "message"), [
    ({**ROW, "language": "fr"}, "mine.jsonl:2: field 'language': Input should be 'en' or 'zh' (got \"fr\")"),
    ({**ROW, "chosen": ["Paris."]}, "mine.jsonl:2: field 'chosen': Input should be a valid string (got [\"Paris.\"])"),
    ({**ROW, "context": {"text": "x"}}, "mine.jsonl:2: field 'context': Input should be a valid string"),
    ({**ROW, "dialogue_history": [{"role": "bot", "text": "x"}]},
     "mine.jsonl:2: field 'dialogue_history[0].role': Input should be 'user' or 'assistant'"),
    ({k: v for k, v in ROW.items() if k != "rejected"}, "mine.jsonl:2: field 'rejected': Field required"),
    (b'{"question": "caf\xe9"}', "mine.jsonl:2: not UTF-8 text (byte 0xe9 at column 18)"),
    (b'{"question": "a",', "mine.jsonl:2: not valid JSON at column 18: Expecting property name"),
    (b"[" * 100_000, "mine.jsonl:2: not valid JSON: nested too deeply to read"),
], ids=["language_fr", "list_for_text", "object_for_text", "unknown_role", "missing_field", "not_utf8",
        "broken_json", "nested_too_deeply"])
def test_a_bad_row_stops_the_run_naming_file_line_and_field(tmp_path, row, message):
    name = write(tmp_path / "mine.jsonl", ROW, row)
    with pytest.raises(UserError) as err:
        read_preference_file(name, tmp_path)
    assert message in str(err.value)


def test_a_folder_or_a_missing_file_is_named_as_such(tmp_path):
    (tmp_path / "pairs").mkdir()
    with pytest.raises(UserError, match="pairs.preference_file: pairs is a folder, not a file"):
        read_preference_file("pairs", tmp_path)
    with pytest.raises(UserError, match="pairs.preference_file file not found: nope.jsonl"):
        read_preference_file("nope.jsonl", tmp_path)


def test_a_file_outside_the_project_is_read_with_a_warning(tmp_path, capsys):
    (tmp_path / "project").mkdir()
    write(tmp_path / "mine.jsonl", ROW)
    assert len(read_preference_file(str(tmp_path / "mine.jsonl"), tmp_path / "project")) == 1
    assert "outside the project" in capsys.readouterr().err
