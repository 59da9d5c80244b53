"""The English adapters of the paper's corpora (ELI5, MS MARCO, SQuAD v2, Natural Questions, CoQA, DailyDialog,
MultiWOZ 2.2), each read from a hand-written fixture in the dataset's own row layout through the real
`datasets.load_dataset` path. Dolly, the worked example, is in test_hf_sources.py."""

import json
from collections import Counter

import pytest

from hf_helpers import read, records
from polyalign.data.clean import to_record
from polyalign.data.sources.hf import adapter, group_key
from polyalign.params import DataParams


def by_id(recs: list[dict]) -> dict[str, dict]:
    out = {r["id"]: r for r in recs}
    assert len(out) == len(recs), "ids must be unique"
    return out


def labels(rec: dict) -> tuple:
    return rec["language"], rec["track"], rec["family"], rec["style_bucket"]


def history(rec: dict) -> list[tuple[str, str]]:
    return [(t["role"], t["text"]) for t in rec["dialogue_history"]]


def meta(rec: dict) -> dict:
    return json.loads(rec["meta"])


def official_splits(recs: list[dict]) -> dict[str, str]:
    """Our split by the source's split name, checking every record of a source split agrees."""
    out: dict[str, set[str]] = {}
    for r in recs:
        out.setdefault(meta(r)["official_split"], set()).add(r["split"])
    assert all(len(v) == 1 for v in out.values()), out
    return {k: v.pop() for k, v in out.items()}


def train_pool_splits(dataset: str, seeds=range(40)) -> list[dict[str, str]]:
    """For a source without a test split: the split of each official-train record for a range of seeds. Train
    rows are shared out between train and test only, by group."""
    per_seed = []
    for seed in seeds:
        recs, _ = records(dataset, seed=seed)
        train = [r for r in recs if meta(r)["official_split"] == "train"]
        assert {r["split"] for r in train} <= {"train", "test"}
        groups: dict[str, set[str]] = {}
        for r in train:
            groups.setdefault(r["group_id"], set()).add(r["split"])
        assert all(len(s) == 1 for s in groups.values()), groups
        assert {r["split"] for r in recs if meta(r)["official_split"] == "validation"} == {"val"}
        per_seed.append({r["id"]: r["split"] for r in train})
    return per_seed


def test_the_english_adapters_carry_the_papers_labels_hub_ids_and_licences():
    expected = {
        "eli5": ("rexarski/eli5_category", None, "single", "qa", "longform_qa", "question",
                 "see the dataset card (Reddit content)"),
        "ms_marco": ("microsoft/ms_marco", "v1.1", "single", "qa", "qa_search", "question",
                     "MS MARCO terms (non-commercial research)"),
        "squad_v2": ("rajpurkar/squad_v2", "squad_v2", "single", "qa", "qa_search", "article", "CC BY-SA 4.0"),
        "natural_questions": ("google-research-datasets/natural_questions", "default", "single", "qa", "qa_search",
                              "question", "CC BY-SA 3.0"),
        "coqa": ("stanfordnlp/coqa", None, "multi", "qa", "qa_search", "story",
                 "CC BY-SA 4.0 / MSR-LA / Apache-2.0 by source"),
        "daily_dialog": ("li2017dailydialog/daily_dialog", None, "multi", "dialogue", "open_chat", "dialogue",
                         "CC BY-NC-SA 4.0"),
        "multiwoz22": ("pfb30/multi_woz_v22", "v2.2", "multi", "dialogue", "task_dialogue", "dialogue", "MIT"),
    }
    for name, (hub_id, config, track, family, style, group, licence) in expected.items():
        spec = adapter(name)
        assert (spec.name, spec.language) == (name, "en")
        assert (spec.hub_id, spec.config, spec.track, spec.family, spec.style, spec.group, spec.licence) == (
            hub_id, config, track, family, style, group, licence), name
    # script-only hub repos are read from the hub's parquet conversion
    assert {n for n in expected if adapter(n).revision} == {"eli5", "daily_dialog", "multiwoz22"}


# ---------------------------------------------------------------- ELI5-Category

def test_eli5_keeps_the_best_scored_answer_and_drops_unanswered_posts():
    recs, dropped = records("eli5")
    assert dropped == Counter({"no_answer": 1})
    recs = by_id(recs)
    assert sorted(recs) == ["eli5/test[0]", "eli5/train[0]", "eli5/train[2]", "eli5/train[3]",
                            "eli5/validation1[0]", "eli5/validation2[0]"]
    first = recs["eli5/train[0]"]
    assert first["question"] == "Why does bread go stale faster in the fridge than on the counter?"
    # scores 4, 12, 12: the highest, the first of the tie
    assert first["human_answer"] == ("Starch molecules line back up into crystals (retrogradation) and that "
                                     "happens fastest just above freezing, so the fridge speeds it up.")
    assert first["context"] == "" and first["dialogue_history"] == []
    assert labels(first) == ("en", "single", "qa", "longform_qa")
    assert first["dataset"] == "eli5" and first["group_id"] == group_key("a1b2c3")
    assert {k: meta(first)[k] for k in ("q_id", "score", "n_answers")} == {"q_id": "a1b2c3", "score": 12,
                                                                            "n_answers": 3}
    # the post's body is the context; a deleted body is none
    assert recs["eli5/train[2]"]["context"] == ("I noticed it happens with the same parts of songs every time. "
                                                "Is it the same thing as being cold?")
    assert recs["eli5/train[3]"]["context"] == ""
    # a negative score still loses to a positive one
    assert recs["eli5/validation2[0]"]["human_answer"].startswith("Scouts dance")
    assert meta(recs["eli5/validation2[0]"])["score"] == 3


def test_eli5_keeps_its_four_official_splits():
    recs, _ = records("eli5")
    assert official_splits(recs) == {"train": "train", "validation1": "val", "validation2": "val", "test": "test"}


# ---------------------------------------------------------------- MS MARCO v1.1

def test_ms_marco_prefers_the_well_formed_answer_and_uses_the_selected_passages_as_context():
    recs, dropped = records("ms_marco")
    assert dropped == Counter({"no_answer": 2})  # "No Answer Present." and an empty answer list
    recs = by_id(recs)
    assert sorted(recs) == ["ms_marco/test[0]", "ms_marco/train[0]", "ms_marco/train[1]", "ms_marco/validation[0]"]
    tang = recs["ms_marco/train[0]"]
    assert tang["question"] == "what is a yellow tang"
    assert tang["human_answer"] == ("A yellow tang is a bright yellow saltwater reef fish of the surgeonfish "
                                    "family.")
    assert tang["context"] == ("The yellow tang is a saltwater fish of the family Acanthuridae, bright yellow in "
                               "colour.")
    assert labels(tang) == ("en", "single", "qa", "qa_search") and tang["group_id"] == group_key("19699")
    assert {k: meta(tang)[k] for k in ("query_id", "query_type", "answer_source")} == {
        "query_id": 19699, "query_type": "DESCRIPTION", "answer_source": "well_formed"}
    egg = recs["ms_marco/train[1]"]
    assert egg["human_answer"] == "9 to 12 minutes" and meta(egg)["answer_source"] == "answers"
    assert egg["context"] == ("For a hard-boiled egg, simmer for 9 to 12 minutes.\n\n"
                              "Larger eggs need the upper end of the range.")
    assert official_splits(list(recs.values())) == {"train": "train", "validation": "val", "test": "test"}


# ---------------------------------------------------------------- SQuAD v2

def test_squad_v2_takes_the_first_answer_and_the_row_id():
    recs, dropped = records("squad_v2")
    assert dropped == Counter({"empty_answer": 2})  # the unanswerable questions, by default
    recs = by_id(recs)
    assert sorted(recs) == ["56ddde6b9a695914005b9628", "5733be284776f41900661182", "5733be284776f41900661184"]
    glacier = recs["5733be284776f41900661182"]
    assert (glacier["question"], glacier["human_answer"]) == ("What do glaciers form from?", "accumulation of snow")
    assert glacier["context"].startswith("A glacier is a persistent body of dense ice")
    assert labels(glacier) == ("en", "single", "qa", "qa_search") and glacier["group_id"] == group_key("Glacier")
    tea = recs["56ddde6b9a695914005b9628"]
    assert tea["human_answer"] == "matcha, powdered green tea" and tea["split"] == "val"


def test_squad_v2_keeps_unanswerable_questions_with_an_empty_answer_for_prepare_to_decide():
    examples, dropped = read("squad_v2")
    assert dropped == Counter()
    unanswerable = {ex.id: ex for ex in examples if ex.human_answer == ""}
    assert sorted(unanswerable) == ["5733be284776f41900661183", "5ad39d53604f3c001a3fe8d1"]
    assert all(ex.meta["unanswerable"] is True for ex in unanswerable.values())
    assert not any("unanswerable" in ex.meta for ex in examples if ex.human_answer)
    kept = to_record(unanswerable["5733be284776f41900661183"], DataParams(drop_empty_answers=False))
    assert kept["human_answer"] == "" and kept["question"] == "How fast do glaciers melt in summer?"
    assert kept["group_id"] == group_key("Glacier") and kept["split"] in ("train", "test")


def test_squad_v2_has_no_test_split_so_train_articles_are_shared_out_between_train_and_test():
    per_seed = train_pool_splits("squad_v2")
    assert {split for splits in per_seed for split in splits.values()} == {"train", "test"}


# ---------------------------------------------------------------- Natural Questions

def test_natural_questions_answers_with_the_text_of_the_first_annotated_long_answer():
    recs, dropped = records("natural_questions")
    assert dropped == Counter({"no_long_answer": 2})
    recs = by_id(recs)
    assert sorted(recs) == ["-3290814144789249484", "5655493461695504401"]
    seal = recs["5655493461695504401"]
    assert seal["question"] == "where are harbour seals found"
    assert seal["human_answer"] == ("The harbour seal is a true seal found along temperate and Arctic marine "
                                    "coastlines of the Northern Hemisphere .")
    assert seal["context"] == "" and labels(seal) == ("en", "single", "qa", "qa_search")
    assert seal["group_id"] == group_key("where are harbour seals found")
    assert meta(seal)["title"] == "Harbour seal" and seal["split"] in ("train", "test")
    # five annotators: the first two found no long answer, the third chose the paragraph, the fourth the table
    tallest = recs["-3290814144789249484"]
    assert tallest["human_answer"] == "Jeddah Light is the tallest lighthouse in the world ."
    assert tallest["split"] == "val"


def test_natural_questions_leaves_out_html_tokens_and_accepts_a_list_of_annotations():
    tokens = ["<Table>", "<Tr>", "<Td>", "Jeddah", "Light", "</Td>", "<Td>", "133", "m", "</Td>", "</Tr>",
              "</Table>"]
    row = {"id": "17", "document": {"title": "Lighthouses", "tokens": [
        {"token": t, "is_html": t.startswith("<")} for t in tokens]},
        "question": {"text": "how tall is jeddah light", "tokens": ["how", "tall", "is", "jeddah", "light"]},
        "annotations": [{"id": "1", "long_answer": {"start_token": -1, "end_token": -1, "candidate_index": -1}},
                        {"id": "2", "long_answer": {"start_token": 0, "end_token": 12, "candidate_index": 0}}]}
    [example] = list(adapter("natural_questions").map_rows([("nq[0]", row)]))
    assert (example.question, example.human_answer, example.id) == ("how tall is jeddah light", "Jeddah Light 133 m", "17")
    row["annotations"] = row["annotations"][:1]
    [problem] = list(adapter("natural_questions").map_rows([("nq[0]", row)]))
    assert problem.reason == "no_long_answer" and problem.always_skip


def test_natural_questions_train_rows_are_shared_out_between_train_and_test():
    train_pool_splits("natural_questions", seeds=range(5))


# ---------------------------------------------------------------- CoQA

def test_coqa_makes_one_multi_turn_example_per_question_with_the_story_as_context():
    recs, dropped = records("coqa")
    assert dropped == Counter({"empty_answer": 1})
    recs = by_id(recs)
    assert sorted(recs) == ["coqa/train[0]#0", "coqa/train[0]#1", "coqa/train[0]#2", "coqa/train[1]#0",
                            "coqa/validation[0]#0", "coqa/validation[0]#1"]
    story = recs["coqa/train[0]#0"]["context"]
    assert story.startswith("Once upon a time, in a barn near a farm house")
    third = recs["coqa/train[0]#2"]
    assert (third["question"], third["human_answer"], third["context"]) == ("Did she live alone?", "no", story)
    assert history(third) == [("user", "What color was Cotton?"), ("assistant", "white"),
                              ("user", "Where did she live?"), ("assistant", "in a barn")]
    assert meta(third)["source"] == "mctest" and meta(third)["turn"] == 2
    # the first turn has no history but belongs to the multi-turn track all the same
    first = recs["coqa/train[0]#0"]
    assert first["dialogue_history"] == [] and labels(first) == ("en", "multi", "qa", "qa_search")
    assert {r["group_id"] for r in recs.values() if r["id"].startswith("coqa/train[0]")} == {group_key(story)}
    assert recs["coqa/validation[0]#1"]["split"] == "val"
    assert history(recs["coqa/validation[0]#1"]) == [("user", "What was gone?"), ("assistant", "the little boat")]


def test_coqa_stories_stay_together_in_train_or_test():
    per_seed = train_pool_splits("coqa")
    assert {split for splits in per_seed for split in splits.values()} == {"train", "test"}


# ---------------------------------------------------------------- DailyDialog

def test_daily_dialog_answers_every_second_utterance_with_the_earlier_ones_as_history():
    recs, dropped = records("daily_dialog")
    assert dropped == Counter()
    recs = by_id(recs)
    # a 5-utterance dialogue: targets 1 and 3 (the user has the last word); a 1-utterance one: none
    assert sorted(recs) == ["daily_dialog/test[0]#1", "daily_dialog/train[0]#1", "daily_dialog/train[0]#3",
                            "daily_dialog/train[1]#1", "daily_dialog/validation[0]#1", "daily_dialog/validation[0]#3"]
    second = recs["daily_dialog/train[0]#3"]
    assert second["question"] == "What do you mean ? It will help us to relax ."
    assert second["human_answer"] == "Do you really think so ? I don't . Let's go to the gym instead ."
    assert history(second) == [("user", "Say , Jim , how about going for a few beers after dinner ?"),
                               ("assistant", "You know that is tempting but is really not good for our fitness .")]
    assert second["context"] == "" and labels(second) == ("en", "multi", "dialogue", "open_chat")
    assert meta(second)["turn"] == 3 and meta(second)["act"] == 2 and meta(second)["emotion"] == 0
    first = recs["daily_dialog/train[0]#1"]
    assert first["dialogue_history"] == [] and first["track"] == "multi"
    assert first["group_id"] == second["group_id"] != recs["daily_dialog/train[1]#1"]["group_id"]
    assert meta(recs["daily_dialog/train[1]#1"])["emotion"] == 6
    assert official_splits(list(recs.values())) == {"train": "train", "validation": "val", "test": "test"}


# ---------------------------------------------------------------- MultiWOZ 2.2

def test_multiwoz_answers_each_user_turn_with_the_system_turn_after_it():
    recs, dropped = records("multiwoz22")
    assert dropped == Counter()
    recs = by_id(recs)
    assert sorted(recs) == ["MUL0484.json/1", "PMUL0117.json/1", "PMUL4398.json/1", "PMUL4398.json/3",
                            "PMUL4398.json/5", "SNG0073.json/1"]  # SNG0073's last user turn has no reply
    last = recs["PMUL4398.json/5"]
    assert last["question"] == "No thanks, I also need a hotel with free parking."
    assert last["human_answer"] == "The Acorn Guest House has free parking. Anything else?"
    assert history(last) == [
        ("user", "i need a place to dine in the centre of town."),
        ("assistant", "I have 69 restaurants in the centre. Do you have a cuisine in mind?"),
        ("user", "something cheap and italian, please."),
        ("assistant", "Pizza Hut City Centre is cheap and italian. Shall I book a table?")]
    assert labels(last) == ("en", "multi", "dialogue", "task_dialogue") and last["context"] == ""
    assert {k: meta(last)[k] for k in ("dialogue_id", "services")} == {"dialogue_id": "PMUL4398.json",
                                                                      "services": ["restaurant", "hotel"]}
    assert {r["group_id"] for r in recs.values() if r["id"].startswith("PMUL4398")} == {group_key("PMUL4398.json")}
    assert recs["PMUL4398.json/1"]["dialogue_history"] == [] and recs["PMUL4398.json/1"]["track"] == "multi"
    assert official_splits(list(recs.values())) == {"train": "train", "validation": "val", "test": "test"}


def test_multiwoz_speaker_names_and_a_system_turn_without_a_user_turn_before_it():
    row = {"dialogue_id": "SNG01.json", "services": ["hotel"],
           "turns": [{"turn_id": "0", "speaker": "SYSTEM", "utterance": "Welcome."},
                     {"turn_id": "1", "speaker": "USER", "utterance": "A hotel, please."},
                     {"turn_id": "2", "speaker": "SYSTEM", "utterance": "Which area?"}]}
    [example] = list(adapter("multiwoz22").map_rows([("woz[0]", row)]))
    assert (example.id, example.question, example.human_answer) == ("SNG01.json/2", "A hotel, please.", "Which area?")
    assert example.history == [("assistant", "Welcome.")]


@pytest.mark.parametrize("dataset", ["eli5", "ms_marco", "squad_v2", "natural_questions", "coqa", "daily_dialog",
                                     "multiwoz22"])
def test_max_rows_and_a_chosen_split(dataset):
    examples, _ = read(dataset, splits=["train"], max_rows=1)
    assert examples and {ex.meta["official_split"] for ex in examples} == {"train"}
    assert len({ex.origin.split("#")[0] for ex in examples}) == 1
