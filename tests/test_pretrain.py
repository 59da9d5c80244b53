"""`init`'s language-model pretraining of the scratch model on the train split's texts."""

import json
import math

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

from polyalign.params import load_params
from polyalign.stages import init as init_stage
from polyalign.stages.init import training_texts
from polyalign.training.pretrain import (
    has_native_bf16,
    heldout_bits_per_char,
    packed_blocks,
    resolve_precision,
)
from sft_project import copy_project, write_tiny_params


def test_packed_blocks_join_rows_with_the_separator_and_drop_the_incomplete_tail():
    blocks = packed_blocks([[1, 2], [3], [4, 5, 6]], separator=0, block_size=3)
    assert blocks.tolist() == [[1, 2, 0], [3, 0, 4], [5, 6, 0]]
    assert packed_blocks([[1, 2], [3]], separator=0, block_size=2).tolist() == [[1, 2], [0, 3]]


def test_an_explicit_pretraining_precision_is_kept_and_auto_follows_the_hardware():
    cpu = torch.device("cpu")
    assert resolve_precision("32-true", cpu) == "32-true"
    assert resolve_precision("bf16-mixed", cpu) == "bf16-mixed"  # the user's choice, even where it is emulated
    assert resolve_precision("auto", cpu) in ("bf16-mixed", "32-true")
    assert (resolve_precision("auto", cpu) == "bf16-mixed") == has_native_bf16(cpu)
    assert resolve_precision("auto", torch.device("meta")) == "32-true"


def test_pretraining_reads_only_train_texts_lowers_the_lm_loss_and_is_reported(paired_tiny, tmp_path):
    root = copy_project(paired_tiny, tmp_path / "p")
    write_tiny_params(root, model={"pretrain_epochs": 0})
    plain = init_stage.run(load_params(root / "params.yaml"), root)
    untrained = AutoModelForCausalLM.from_pretrained(root / "models/base").state_dict()
    write_tiny_params(root, model={"pretrain_epochs": 3, "pretrain_lr": 0.01, "pretrain_block_size": 32})
    params = load_params(root / "params.yaml")
    report = init_stage.run(params, root)
    assert "pretrain_loss" not in plain
    # a uniform guess costs ln(vocabulary) per token; three epochs over the texts must beat it clearly
    assert report["pretrain_loss"] < math.log(report["vocab_size"]) - 1.5
    assert report["pretrain_steps"] > 0 and report["pretrain_tokens"] > 0
    assert json.loads((root / "reports/init.json").read_text())["pretrain_loss"] == report["pretrain_loss"]
    # `auto` (the default) pretrains in bf16 only where this CPU has bf16 in hardware, and says which it used
    assert params.model.pretrain_precision == "auto"
    assert report["pretrain_precision"] == ("bf16-mixed" if has_native_bf16(torch.device("cpu")) else "32-true")
    trained = AutoModelForCausalLM.from_pretrained(root / "models/base").state_dict()
    assert all(not torch.equal(untrained[k], trained[k]) for k in trained if k.endswith("proj.weight"))
    train = pq.read_table(root / "data/buckets/train.parquet").to_pylist()
    train_texts = {t for r in train for t in (r["question"], r["context"], r["human_answer"],
                                              *(h["text"] for h in r["dialogue_history"]))}
    assert set(training_texts(params, root, with_profiles=False)) <= train_texts
    assert report["pretrain_texts"] == len(set(training_texts(params, root, with_profiles=False)))
    # the val texts' bits per character, read after training: lower than the untrained model's
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(root / "models/base")
    val = training_texts(params, root, "val", with_profiles=False)
    untrained_model = AutoModelForCausalLM.from_pretrained(root / "models/base")
    untrained_model.load_state_dict(untrained)
    before = heldout_bits_per_char(untrained_model, tokenizer, val, 32, 4)
    assert 0 < report["pretrain_val_bits_per_char"] < before - 1


def test_heldout_bits_per_char_is_the_language_model_loss_of_the_joined_texts(paired_tiny):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(paired_tiny / "models/sft/bucket")
    model = AutoModelForCausalLM.from_pretrained(paired_tiny / "models/sft/bucket").eval()
    texts = ["你好，今天怎么样？", "Fine, thanks.", "Fine, thanks."]  # a repeated text counts once
    sep = tokenizer.pad_token_id
    ids = [sep] + [t for text in ("Fine, thanks.", "你好，今天怎么样？")
                   for t in (*tokenizer(text, add_special_tokens=False)["input_ids"], sep)]
    with torch.no_grad():  # one window: the model's own mean loss over every token after the first
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    expected = float(loss) * (len(ids) - 1) / math.log(2) / (len("Fine, thanks.") + len("你好，今天怎么样？"))
    assert math.isclose(heldout_bits_per_char(model, tokenizer, texts, block_size=512, batch_size=2), expected,
                        rel_tol=1e-5)
    # a model that guesses uniformly costs log2(V) bits per prediction: any window size predicts each token once
    with torch.no_grad():
        model.lm_head.weight.zero_()
    uniform = (len(ids) - 1) * math.log2(model.config.vocab_size) / (len("Fine, thanks.") + len("你好，今天怎么样？"))
    for block_size in (3, 4, 512):
        assert math.isclose(heldout_bits_per_char(model, tokenizer, texts, block_size, batch_size=3), uniform,
                            rel_tol=1e-5)
