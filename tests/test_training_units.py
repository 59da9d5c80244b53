"""Pure pieces of training: the renderer and its loss mask, samplers, loss functions, the optimiser, the LR
schedule."""

import copy
import math

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from polyalign.modeling.model import create_scratch_model
from polyalign.modeling.prompts import IGNORE_INDEX, PromptRenderer
from polyalign.modeling.scoring import response_logits, sequence_logps
from polyalign.modeling.tokenizer import IM_END, train_tokenizer
from polyalign.params import ModelParams, OptimParams, SftParams
from polyalign.stages.evaluate import prompt_record
from polyalign.training.data import Collator
from polyalign.training.losses import per_example_loss, sft_loss
from polyalign.training.optim import make_optimizer, warmup_cosine
from polyalign.training.samplers import EpochBatchSampler, bucket_probabilities
from polyalign.training.sft import SFTModule

CORPUS = ["Hello there, how are you today?", "I am fine, thanks.", "What is AI?", "你好，今天天气怎么样？",
          "今天天气很好，我们去公园吧。", "机器学习是人工智能的一个分支。"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    """Trained on the corpus and every text of the test records: no character of theirs is unknown (an unknown
    character decodes to `<unk>`, and these tests compare decoded prompts with their text)."""
    texts = [t for r in RECORDS + EVAL_RECORDS
             for t in (r["question"], r["context"], r["human_answer"], *(h["text"] for h in r["dialogue_history"]))]
    return train_tokenizer(CORPUS + texts, vocab_size=800, min_frequency=1)


def record(answer, question, history=(), language="en", track="single", context=""):
    return {"language": language, "track": track, "family": "dialogue", "length_bin": "short",
            "question": question, "context": context, "human_answer": answer,
            "dialogue_history": [{"role": r, "text": t} for r, t in history]}


RECORDS = [
    record("I am fine, thanks.", "How are you today?"),
    record("我们去公园吧。", "今天做什么？", language="zh"),
    record("Paris.", "And the capital of France?", history=[("user", "Hi!"), ("assistant", "Hello there.")],
           track="multi", context="France is a country in Europe."),
    record("很好。", "天气怎么样？", history=[("user", "你好"), ("assistant", "你好！"), ("user", "在吗"),
                                           ("assistant", "在。")], language="zh", track="multi"),
]


@pytest.mark.parametrize("rec", RECORDS, ids=["en-single", "zh-single", "en-multi", "zh-multi"])
def test_only_the_response_and_end_of_turn_carry_loss(tokenizer, rec):
    renderer = PromptRenderer(tokenizer, "observable", max_prompt_tokens=200, max_tokens=256)
    ex = renderer.example(rec)
    prompt = renderer.prompt_ids(rec)
    n = len(prompt)
    assert ex["input_ids"][:n] == prompt and ex["labels"][:n] == [IGNORE_INDEX] * n
    response = tokenizer(rec["human_answer"], add_special_tokens=False)["input_ids"]
    assert ex["labels"][n:] == response + [tokenizer.convert_tokens_to_ids(IM_END)]
    assert ex["input_ids"][n:] == ex["labels"][n:]
    # history and question are in the unlabelled part only
    prompt_text = tokenizer.decode(prompt)
    for turn in rec["dialogue_history"]:
        assert turn["text"] in prompt_text
    assert tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == rec["human_answer"] + IM_END


LONG_HISTORY = [("user", f"turn {i} " * 6) if i % 2 == 0 else ("assistant", f"reply {i} " * 6) for i in range(10)]
EVAL_RECORDS = [
    *RECORDS,
    record("ok", "last question?", history=LONG_HISTORY, track="multi", context="France is in Europe. " * 3),
    record("好的。", "最后一个问题？", history=[("user", "你好" * 30), ("assistant", "在" * 30)], language="zh",
           track="multi"),
    record("fine", "What is AI? " * 40, context="Hello there, how are you today? " * 20),  # no history to drop: cut
]


@pytest.mark.parametrize("conditioning", ["none", "observable", "oracle_length"])
@pytest.mark.parametrize("max_prompt_tokens", [1000, 120])
def test_evaluation_prompts_are_the_training_prompts(tokenizer, conditioning, max_prompt_tokens):
    """What `evaluate` feeds the model (a record reduced to its prompt fields by `prompt_record`, then rendered)
    is token for token the prompt part of the SFT example of the full record, also when the prompt is cut."""
    renderer = PromptRenderer(tokenizer, conditioning, max_prompt_tokens=max_prompt_tokens, max_tokens=1200)
    cut = 0
    for i, full in enumerate(EVAL_RECORDS):
        full = {**full, "id": f"r{i}"}
        shown = prompt_record(full, conditioning)
        assert "human_answer" not in shown and ("length_bin" in shown) == (conditioning == "oracle_length")
        evaluation = renderer.prompt_ids(shown)
        training = renderer.example(full)
        assert evaluation == training["input_ids"][: training["n_prompt"]]
        assert tokenizer.decode(evaluation).endswith("<|im_start|>assistant\n")
        whole = renderer.prompt_text(full)
        if len(tokenizer(whole, add_special_tokens=False)["input_ids"]) > max_prompt_tokens:
            cut += 1
        else:  # an uncut prompt is the chat template's text, byte for byte
            assert tokenizer.decode(evaluation).encode() == whole.encode()
    # the last three records are cut at 120 tokens (history dropped; no history: the middle cut)
    assert cut == 0 if max_prompt_tokens == 1000 else cut >= 3


def test_conditioning_profiles(tokenizer):
    rec = RECORDS[2]
    texts = {c: PromptRenderer(tokenizer, c, 200, 256).prompt_text(rec) for c in ("none", "observable",
                                                                               "oracle_length")}
    assert "<|im_start|>system" not in texts["none"]
    assert "language=en; track=multi; family=dialogue" in texts["observable"] and "length=" not in texts["observable"]
    assert "length=short (oracle" in texts["oracle_length"]


def test_long_prompts_drop_oldest_history_first_and_fit_the_budget(tokenizer):
    history = [("user", f"turn {i} " * 5) if i % 2 == 0 else ("assistant", f"reply {i} " * 5) for i in range(12)]
    rec = record("ok", "last question?", history=history, track="multi")
    renderer = PromptRenderer(tokenizer, "observable", max_prompt_tokens=80, max_tokens=96)
    ids = renderer.prompt_ids(rec)
    text = tokenizer.decode(ids)
    assert len(ids) <= 80 and "last question?" in text and "turn 0 " not in text
    ex = renderer.example(record("word " * 200, "q?"))
    assert len(ex["input_ids"]) == 96 and ex["truncated"]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_balanced_sampler_draws_buckets_with_p_proportional_to_n_alpha(alpha):
    counts = [200, 50, 10]
    buckets = np.repeat(np.arange(3), counts)
    sampler = EpochBatchSampler(np.ones(len(buckets)), 8, mode="balanced", buckets=buckets, alpha=alpha, seed=3)
    drawn = []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        drawn += [buckets[i] for batch in sampler for i in batch]
    observed = np.bincount(drawn, minlength=3)
    expected = bucket_probabilities(counts, alpha) * len(drawn)
    assert chisquare(observed, expected).pvalue > 0.001
    if alpha == 0.0:
        assert np.allclose(observed / len(drawn), 1 / 3, atol=0.01)


def test_balanced_sampler_uses_the_members_of_a_bucket_evenly():
    buckets = np.array([0] * 5 + [1] * 95)
    sampler = EpochBatchSampler(np.ones(100), 10, mode="balanced", buckets=buckets, alpha=0.0, seed=0)
    uses = np.bincount([i for batch in sampler for i in batch], minlength=100)
    assert uses[:5].max() - uses[:5].min() <= 1 and uses[:5].sum() > 30  # ~half of 100 draws, 5 members


def test_samplers_are_deterministic_per_epoch_and_split_global_batches_across_ranks():
    lengths = np.random.default_rng(0).integers(5, 80, size=103)
    one = EpochBatchSampler(lengths, 8, seed=1, world_size=1)
    ranks = [EpochBatchSampler(lengths, 4, seed=1, world_size=2, rank=r) for r in (0, 1)]
    for s in (one, *ranks):
        s.set_epoch(2)
    single = list(one)
    split = list(zip(*[list(s) for s in ranks]))
    assert len(split) == len(single) == len(ranks[0]) == len(ranks[1])
    for whole, (a, b) in zip(single, split):  # the same examples per global step
        assert sorted(a + b) == sorted(whole) and abs(len(a) - len(b)) <= 1
    assert list(one) == single  # same epoch, same order
    one.set_epoch(3)
    assert list(one) != single


def test_length_grouping_keeps_padding_low():
    lengths = np.random.default_rng(0).integers(10, 200, size=2000)
    sampler = EpochBatchSampler(lengths, 16, seed=0, group_by_length=True)
    padded = sum(len(b) * lengths[b].max() for b in sampler)
    assert 1 - lengths.sum() / padded < 0.05
    assert sorted(i for b in sampler for i in b) == list(range(2000))


def test_resumed_sampler_skips_the_consumed_batches_of_that_epoch_only():
    sampler = EpochBatchSampler(np.arange(50), 4, seed=5)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.resume(epoch=1, consumed=3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full  # the skip applies once
    sampler.resume(epoch=0, consumed=3)
    assert list(sampler) == full  # a different epoch is not skipped


def test_per_example_loss_is_the_mean_token_cross_entropy_of_the_response():
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 2.0, 0.0])  # predicts token 1 at position 2
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2]])
    losses, n = per_example_loss(logits, labels)
    p1 = np.exp(2) / (np.exp(2) + 2)
    assert n.tolist() == [2]
    assert losses.item() == pytest.approx((-np.log(p1) - np.log(1 / 3)) / 2, rel=1e-6)


def test_response_logits_score_only_from_the_first_response_position_and_equal_the_full_forward(tokenizer):
    renderer = PromptRenderer(tokenizer, "observable", max_prompt_tokens=100, max_tokens=128)
    rows = [renderer.example(r) for r in EVAL_RECORDS]
    batch = Collator(tokenizer.pad_token_id, {"b": 0})([{**r, "bucket_id": "b", "bucket_weight": 1.0} for r in rows])
    shape = ModelParams(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    model = create_scratch_model(tokenizer, shape, seed=0).eval()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        logits, cut = response_logits(model, ids, mask, labels)
        full = model(input_ids=ids, attention_mask=mask).logits
    shortest_prompt = min(r["labels"].index(next(t for t in r["labels"] if t != IGNORE_INDEX)) for r in rows)
    assert logits.shape[1] == cut.shape[1] == ids.shape[1] - shortest_prompt + 1 < ids.shape[1]
    torch.testing.assert_close(sequence_logps(logits, cut), sequence_logps(full, labels))
    torch.testing.assert_close(sequence_logps(logits, cut)[0], torch.tensor([-hand_response_nll(model, r) * sum(
        t != IGNORE_INDEX for t in r["labels"]) for r in rows]), rtol=1e-5, atol=1e-4)


def test_weighted_sft_loss_needs_a_constant_normaliser():
    with pytest.raises(ValueError):
        sft_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0]))


def hand_response_nll(model, example) -> float:
    """Mean token NLL of one example's labelled tokens, from its own unpadded forward pass, in Python floats."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0].double().tolist()
    total, n = 0.0, 0
    for t, label in enumerate(example["labels"]):
        if label == IGNORE_INDEX:
            continue
        row = logits[t - 1]  # position t - 1 predicts token t
        top = max(row)
        total += top + math.log(sum(math.exp(v - top) for v in row)) - row[label]
        n += 1
    return total / n


@pytest.mark.parametrize("balance", ["loss_weight", "none"])
def test_sft_module_normalises_the_batch_loss_by_its_own_rule(tokenizer, balance):
    """SFTModule's training loss, run by Lightning on a full batch and on a short last batch: loss_weight divides
    sum_i w_i * l_i by the nominal batch size (a constant, so a short batch or a light batch weighs less), the
    other modes take the batch mean. Checked against per-example NLLs computed by hand."""
    renderer = PromptRenderer(tokenizer, "observable", max_prompt_tokens=100, max_tokens=128)
    rows = [{**renderer.example(r), "bucket_weight": w, "bucket_id": "b"}
            for r, w in zip(EVAL_RECORDS, [0.5, 2.0, 1.0, 3.0, 0.25, 1.5])]
    batches = [rows[:4], rows[4:]]  # nominal batch size 4; the last batch has 2
    collate = Collator(tokenizer.pad_token_id, {"b": 0})
    shape = ModelParams(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                        attention_dropout=0.0)  # the hand-computed NLLs below see no dropout
    model = create_scratch_model(tokenizer, shape, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sft = SftParams(batch_size=4, optim=OptimParams(lr=1e-30))  # steps too small to move float32 weights
    module = SFTModule("unused", sft, balance, ["b"], total_steps=2, optim=sft.optim)
    module.model = model
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    loader = torch.utils.data.DataLoader([collate(b) for b in batches], batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    # both steps saw the same model (only weights at exactly 0 can move, by ~1e-30)
    assert max((before[k] - v).abs().max().item() for k, v in model.state_dict().items()) < 1e-20

    expected = []
    for batch in batches:
        nll = [hand_response_nll(model, row) for row in batch]
        if balance == "loss_weight":
            expected.append(sum(r["bucket_weight"] * x for r, x in zip(batch, nll)) / 4)
        else:
            expected.append(sum(nll) / len(nll))
    assert [loss for _, loss in module.history["train"]] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_loss_weight_gives_every_bucket_the_same_total_weight_per_epoch(batch_size):
    counts = [120, 30, 6]
    buckets = np.repeat(np.arange(3), counts)
    weights = len(buckets) / (3 * np.asarray(counts))[buckets]  # w_b = N / (K n_b), mean 1
    sampler = EpochBatchSampler(np.ones(len(buckets)), batch_size, mode="shuffle", seed=0)
    coefficient = np.zeros(len(buckets))
    for batch in sampler:
        per_example = torch.ones(len(batch), requires_grad=True)
        sft_loss(per_example, torch.tensor(weights[batch], dtype=torch.float32), normaliser=batch_size).backward()
        coefficient[batch] += per_example.grad.numpy()
    per_bucket = np.bincount(buckets, weights=coefficient) * batch_size
    assert np.allclose(per_bucket, per_bucket[0], rtol=1e-5)
    assert per_bucket[0] == pytest.approx(len(buckets) / 3, rel=1e-5)


def test_warmup_then_cosine_decay():
    f = warmup_cosine(total_steps=100, warmup_ratio=0.1, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)


def test_the_optimiser_skips_decay_on_biases_and_norms_and_steps_like_plain_adamw_on_cpu():
    """On CPU the fused kernel runs (faster); its steps match torch's one-tensor-at-a-time AdamW."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    twin = copy.deepcopy(module)
    optim = OptimParams(lr=0.01, weight_decay=0.1, warmup_ratio=0.0, min_lr_ratio=1.0)
    optimizer = make_optimizer(module, optim, total_steps=10)["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [(3, 4)] and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3 and decay["fused"]
    plain = torch.optim.AdamW([{"params": [twin[0].weight], "weight_decay": 0.1},
                               {"params": [twin[0].bias, *twin[1].parameters()], "weight_decay": 0.0}], lr=0.01,
                              foreach=False)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, opt in ((module, optimizer), (twin, plain)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for ours, theirs in zip(module.parameters(), twin.parameters()):
        assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("precision, fused", [("32-true", True), ("bf16-mixed", False)])
def test_fused_adamw_only_where_lightning_clips_gradients_with_it(precision, fused):
    """Lightning's mixed precision refuses gradient clipping with an optimizer that unscales its own gradients
    (fused AdamW), so there the optimiser stays torch's default and a clipped run trains."""

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).square().mean()

        def configure_optimizers(self):
            return make_optimizer(self, OptimParams(lr=0.01), total_steps=3)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 4)), batch_size=4)
    module = Tiny()
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=3, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    assert trainer.global_step == 3
    assert all(bool(group["fused"]) is fused for group in trainer.optimizers[0].param_groups)


def test_select_keeps_the_weights_of_the_validation_with_the_lowest_val_bng():
    """A planted sequence of validations: the weights kept are those of the best one, not the last."""
    from polyalign.training.selection import Selection

    model = torch.nn.Linear(2, 1)
    selection = Selection("val_bng")
    for step, bng in [(10, 0.9), (20, 0.5), (30, math.nan), (40, 0.7)]:
        with torch.no_grad():
            model.weight.fill_(step)  # weights that name their step
        selection.consider(step, {"loss": 1.0 / step, "bng_macro": bng}, model)
    assert selection.best["step"] == 20 and selection.best["score"] == 0.5
    assert selection.apply(model, last_step=40) == {"select": "val_bng", "selected_step": 20, "selected_score": 0.5}
    assert torch.all(model.weight == 20)  # the exported weights are the selected validation's
    selection = Selection("val_loss")
    for step in (10, 20, 30):
        selection.consider(step, {"loss": 1.0 / step, "bng_macro": 0.1}, model)
    assert selection.best["step"] == 30  # the lowest val loss
    last = Selection("last")
    last.consider(10, {"loss": 0.1, "bng_macro": 0.1}, model)
    assert last.best is None and last.apply(model, last_step=50) == {"select": "last", "selected_step": 50}


def test_the_probe_leaves_the_training_runs_random_stream_as_it_was():
    from polyalign.training.selection import probe_naturalness

    model = torch.nn.Linear(2, 1).train()

    def probe(m):
        assert not m.training
        torch.manual_seed(123)  # what sampling does
        return {"bng_macro": float(torch.rand(()))}

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    probed = probe_naturalness(model, probe)
    assert torch.equal(torch.rand(3), expected) and model.training
    assert math.isnan(probed["length_w1_macro"]) and 0 <= probed["bng_macro"] < 1
    assert all(math.isnan(v) for v in probe_naturalness(model, None).values())
