"""Batched generation, the pairs stage and HDPO/DPO training on a tiny bilingual project."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyalign.generation import generate
from polyalign.manifest import write_manifest
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.scoring import score_examples
from polyalign.training.preference import pair_examples
from sft_project import cli, copy_project


@pytest.fixture(scope="module")
def paired_project(paired_tiny):
    return paired_tiny  # shared by the session: every test that writes copies it first


def renderer_for(path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer, PromptRenderer(tokenizer, "observable", 64, 96)


def talkative_model(path, seed: int = 3, hidden_size: int = 32):
    """A freshly initialised model on the project's tokenizer: unlike the tiny SFT model (which ends its turn at
    once), it writes non-empty, varied responses, so padding and budget bugs show in the output."""
    from polyalign.modeling.model import create_scratch_model
    from polyalign.params import ModelParams

    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = ModelParams(hidden_size=hidden_size, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_position_embeddings=128)
    model = create_scratch_model(tokenizer, cfg, seed).eval()
    with torch.no_grad():  # large random weights: greedy decoding follows the context instead of repeating one token
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def test_batched_greedy_generation_equals_one_prompt_at_a_time(paired_project):
    path = paired_project / "models/sft/bucket"
    model = talkative_model(path)
    tokenizer, renderer = renderer_for(path)
    records = pq.read_table(paired_project / "data/buckets/val.parquet").to_pylist()[:12]
    prompts = [renderer.prompt_ids(r) for r in records]
    assert len({len(p) for p in prompts}) > 1  # different lengths in one batch: left padding matters
    budgets = [4 + (i % 3) * 4 for i in range(len(prompts))]  # and different budgets in one batch
    batched = generate(model, tokenizer, prompts, stop_ids=renderer.eot_ids, max_new_tokens=budgets,
                       temperature=0, batch_size=6, progress=False)
    single = [generate(model, tokenizer, [p], stop_ids=renderer.eot_ids, max_new_tokens=b, temperature=0,
                       batch_size=1, progress=False)[0] for p, b in zip(prompts, budgets)]
    assert batched == single
    ids = [s[0].ids for s in batched]
    assert all(ids) and len({tuple(x) for x in ids}) > len(ids) // 2  # non-empty and varied
    assert all(len(s[0].ids) <= b and s[0].truncated == (len(s[0].ids) == b) for s, b in zip(batched, budgets))
    sampled = generate(model, tokenizer, prompts[:3], stop_ids=renderer.eot_ids, max_new_tokens=12, num_samples=2,
                       batch_size=3, seed=1, progress=False)
    assert [len(s) for s in sampled] == [2, 2, 2]
    again = generate(model, tokenizer, prompts[:3], stop_ids=renderer.eot_ids, max_new_tokens=12, num_samples=2,
                     batch_size=3, seed=1, progress=False)
    assert sampled == again  # seeded


def test_a_sample_cut_by_its_budget_is_flagged_and_a_finished_one_is_not(paired_project):
    path = paired_project / "models/sft/bucket"
    tokenizer, renderer = renderer_for(path)
    records = pq.read_table(paired_project / "data/buckets/val.parquet").to_pylist()[:12]
    prompts = [renderer.prompt_ids(r) for r in records]
    model = talkative_model(path)
    first = generate(model, tokenizer, prompts[:1], stop_ids=renderer.eot_ids, max_new_tokens=3, temperature=0,
                     progress=False)[0][0].ids
    kinds = set()
    # the end-of-turn token, and a stop token the model writes as the 3rd token of the first prompt's answer (so
    # that some samples certainly end within the budget)
    for stop in (renderer.eot_ids, [first[2]]):
        short, long = (generate(model, tokenizer, prompts, stop_ids=stop, max_new_tokens=n, temperature=0,
                                progress=False) for n in (4, 48))
        for s, full in zip(short, long):
            ended_early = not full[0].truncated and len(full[0].ids) < 4  # the model chose to stop within 4
            assert s[0].truncated == (not ended_early)
            assert s[0].ids == full[0].ids[:4] and not set(s[0].ids) & set(stop)
            kinds.add(s[0].truncated)
    assert kinds == {True, False}  # both cases were exercised


def test_pairs_hold_human_chosen_sampled_rejected_distances_weights_and_reference_logps(paired_project):
    report = json.loads((paired_project / "reports/pairs.json").read_text())
    rows = pq.read_table(paired_project / "data/pairs/train.parquet").to_pylist()
    assert report["train_pairs"] == len(rows) and len(rows) + sum(report["train_dropped"].values()) >= 64
    buckets = pq.read_table(paired_project / "data/buckets/train.parquet").to_pylist()
    human = {r["id"]: r["human_answer"] for r in buckets}
    assert all(r["chosen"] == human[r["id"]] and r["rejected"] and r["rejected"] != r["chosen"] for r in rows)
    assert np.mean([r["weight"] for r in rows]) == pytest.approx(1.0)
    assert all(r["d_chosen"] >= 0 and r["d_rejected"] >= 0 for r in rows)
    # precomputed reference log-probs equal those of the reference model computed on the fly
    path = paired_project / "models/sft/bucket"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer, renderer = renderer_for(path)
    examples = [renderer.example({**r, "human_answer": r["chosen"]}) for r in rows[:10]]
    np.testing.assert_allclose(score_examples(model, examples, tokenizer.pad_token_id),
                               [r["ref_chosen_logp"] for r in rows[:10]], rtol=1e-5)


def test_sampled_rejected_sides_are_scored_as_generated_and_truncated_ones_do_not_end(paired_project):
    rows = pq.read_table(paired_project / "data/pairs/train.parquet").to_pylist()
    report = json.loads((paired_project / "reports/pairs.json").read_text())
    cut = [r for r in rows if r["rejected_truncated"]]
    assert cut and report["train_samples_truncated"] >= len(cut)
    path = paired_project / "models/sft/bucket"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer, renderer = renderer_for(path)
    for row in cut[:5] + [r for r in rows if not r["rejected_truncated"]][:5]:
        _, rejected = pair_examples(renderer, row)
        response = [t for t in rejected["labels"] if t != -100]
        ends = response[-len(renderer.eot_ids):] == renderer.eot_ids
        assert ends != row["rejected_truncated"]  # a cut sample never "ends its turn" in training
        assert response[:len(row["rejected_ids"])] == row["rejected_ids"]  # the sampled ids, no re-encoding
        ref = score_examples(model, [rejected], tokenizer.pad_token_id)[0]
        assert ref == pytest.approx(row["ref_rejected_logp"], rel=1e-5)
    assert report["val_critic_auroc_human_vs_sample"] is not None
    assert {"val_critic_auroc_human_vs_sample/en", "val_critic_auroc_human_vs_sample/zh"} <= set(report)


def test_on_policy_pairs_choose_the_nearest_sample_and_hdpo_anchors_on_the_human_answer(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    cli(["pairs", "--set", "pairs.chosen=nearest_sample", "--set", "pairs.k=3"], project)
    rows = pq.read_table(project / "data/pairs/train.parquet").to_pylist()
    assert rows and all(r["chosen_ids"] is not None and r["human_answer"] for r in rows)
    assert all(r["d_chosen"] <= r["d_rejected"] for r in rows)  # the nearest sample against the farthest other
    assert json.loads((project / "reports/pairs.json").read_text())["train_chosen_sampled"] == 1.0
    path = project / "models/sft/bucket"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer, renderer = renderer_for(path)
    for row in rows[:5]:  # the chosen sample is scored from the ids the model generated
        chosen, _ = pair_examples(renderer, row)
        assert [t for t in chosen["labels"] if t != -100][:len(row["chosen_ids"])] == row["chosen_ids"]
        ref = score_examples(model, [chosen], tokenizer.pad_token_id)[0]
        assert ref == pytest.approx(row["ref_chosen_logp"], rel=1e-5)
    cli(["hdpo", "--variant", "hdpo", "--set", "hdpo.optim.max_steps=2"], project)  # alpha > 0: the anchor's pass
    assert json.loads((project / "reports/hdpo/hdpo.json").read_text())["steps"] == 2


def test_pairs_can_drop_truncated_samples_and_count_them(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    cli(["pairs", "--set", "pairs.truncated=drop", "--set", "pairs.max_prompts=24"], project)
    report = json.loads((project / "reports/pairs.json").read_text())
    rows = pq.read_table(project / "data/pairs/train.parquet").to_pylist()
    assert report["train_dropped"]["truncated_sample"] > 0
    assert not any(r["rejected_truncated"] for r in rows)


def test_hdpo_refuses_reference_logps_computed_with_another_prompt_format_or_model(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    result = cli(["hdpo", "--set", "prompt.conditioning=none", "--set", "hdpo.optim.max_steps=1"], project, check=False)
    assert result.returncode == 2 and "conditioning: 'observable' -> 'none'" in result.stderr, result.stderr
    weights = project / "models/sft/bucket/model.safetensors"
    other = AutoModelForCausalLM.from_pretrained(project / "models/sft/bucket")
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    other.save_pretrained(weights.parent)
    write_manifest(weights.parent)  # a legitimately retrained SFT model: its checksums are in order
    result = cli(["hdpo", "--set", "hdpo.optim.max_steps=1"], project, check=False)
    assert result.returncode == 2 and "model_files changed" in result.stderr and "Traceback" not in result.stderr
    cli(["hdpo", "--set", "hdpo.optim.max_steps=1", "--set", "hdpo.variants.hdpo.reference=frozen"], project)  # no stored log-probs used


def test_a_critic_trained_with_prompts_works_in_pairs_and_scores_with_them(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    cli(["fit-critic", "--set", "critic.use_prompt=true"], project)
    cli(["pairs", "--set", "pairs.max_prompts=16"], project)
    rows = pq.read_table(project / "data/pairs/train.parquet").to_pylist()
    from polyalign.critic.model import Critic

    critic = Critic.load(project / "models/critic")
    assert critic.uses_prompt
    np.testing.assert_allclose(critic.score_responses([r["rejected"] for r in rows], rows),
                               [r["d_rejected"] for r in rows], rtol=1e-6)


def test_stages_that_run_a_model_use_the_accelerator_the_trainer_settings_select(paired_project, tmp_path):
    from polyalign.errors import UserError
    from polyalign.modeling.model import inference_device

    assert inference_device("cpu").type == "cpu"
    assert inference_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            inference_device("gpu")
        project = copy_project(paired_project, tmp_path / "p")
        result = cli(["pairs", "--set", "trainer.accelerator=gpu"], project, check=False)
        assert result.returncode == 2 and "no CUDA GPU" in result.stderr


def test_lora_disabled_adapter_equals_the_base_model(paired_project):
    from polyalign.params import LoraParams
    from polyalign.training.sft import lora_wrap

    path = paired_project / "models/sft/bucket"
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    wrapped = lora_wrap(AutoModelForCausalLM.from_pretrained(path), LoraParams(enabled=True)).eval()
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        assert not torch.allclose(wrapped(ids).logits, base(ids).logits)
        with wrapped.disable_adapter():
            assert torch.allclose(wrapped(ids).logits, base(ids).logits, atol=1e-6)


@pytest.mark.parametrize("variant", ["hdpo", "dpo"])
def test_short_preference_run_learns_the_pairs_and_exports_plain_transformers(paired_project, tmp_path, variant):
    project = copy_project(paired_project, tmp_path / "p")
    cli(["hdpo", "--variant", variant, "--beta", "0.2"], project)
    report = json.loads((project / f"reports/hdpo/{variant}.json").read_text())
    assert report["train_reward_accuracy_last_10pct"] > 0.5 and report["beta"] == 0.2
    assert report["val_reward_accuracy_per_bucket"]
    # diagnostics per validation: the log-probs against their reference values (displacement shows here)
    val = pq.read_table(project / "data/pairs/val.parquet").to_pylist()
    assert report["val_ref_logps_chosen"] == pytest.approx(np.mean([r["ref_chosen_logp"] for r in val]), rel=1e-5)
    assert len(report["val_history"]) >= 2 and report["val_history"][-1]["logps_chosen"] == pytest.approx(
        report["val_logps_chosen"])
    assert report["val_logps_chosen"] != pytest.approx(report["val_ref_logps_chosen"])  # the policy moved
    before = AutoModelForCausalLM.from_pretrained(project / "models/sft/bucket").state_dict()
    after = AutoModelForCausalLM.from_pretrained(project / f"models/hdpo/{variant}").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_select_val_bng_exports_the_validation_with_the_most_human_like_samples(paired_project, tmp_path):
    from polyalign.evaluation.validation import naturalness_probe
    from polyalign.params import load_params

    project = copy_project(paired_project, tmp_path / "p")
    cli(["hdpo", "--variant", "dpo", "--set", "hdpo.select=val_bng"], project)  # 2 epochs: 2 validations
    report = json.loads((project / "reports/hdpo/dpo.json").read_text())
    history = report["val_history"]
    assert len(history) >= 2 and all(np.isfinite(h["bng_macro"]) and h["response_length"] > 0 for h in history)
    best = min(history, key=lambda h: h["bng_macro"])
    assert (report["select"], report["selected_step"]) == ("val_bng", best["step"])
    # the exported weights are that validation's: the same probe on them gives the same number
    params = load_params(project / "params.yaml")
    tokenizer, _ = renderer_for(project / "models/hdpo/dpo")
    renderer = PromptRenderer.from_params(tokenizer, params.prompt)
    probe = naturalness_probe(params, project, params.hdpo.val_prompts, project / "models/sft/bucket", tokenizer,
                              renderer, "hdpo.val_prompts")
    exported = AutoModelForCausalLM.from_pretrained(project / "models/hdpo/dpo").eval()
    assert probe(exported)["bng_macro"] == pytest.approx(report["selected_score"], rel=1e-9)


def test_frozen_reference_trains_like_precomputed(paired_project, tmp_path):
    a = copy_project(paired_project, tmp_path / "a")
    b = copy_project(paired_project, tmp_path / "b")
    cli(["hdpo", "--variant", "dpo", "--set", "hdpo.optim.max_steps=4"], a)
    cli(["hdpo", "--variant", "dpo", "--set", "hdpo.optim.max_steps=4", "--set", "hdpo.variants.dpo.reference=frozen"], b)
    ca = (a / "reports/hdpo/dpo/train.csv").read_text().splitlines()[1:]
    cb = (b / "reports/hdpo/dpo/train.csv").read_text().splitlines()[1:]
    np.testing.assert_allclose([float(x.split(",")[1]) for x in ca], [float(x.split(",")[1]) for x in cb],
                               rtol=1e-4)


def test_kto_trains_alike_with_a_precomputed_or_a_frozen_reference_point(paired_project, tmp_path):
    a = copy_project(paired_project, tmp_path / "a")
    b = copy_project(paired_project, tmp_path / "b")
    kto = ["hdpo", "--variant", "dpo", "--set", "hdpo.variants.dpo.loss=kto", "--set", "hdpo.optim.max_steps=4"]
    cli(kto, a)  # the mismatched pairs' reference log-probs scored by the start model before training
    cli([*kto, "--set", "hdpo.variants.dpo.reference=frozen"], b)  # ... or by a frozen copy at every step
    losses = [[float(row.split(",")[1]) for row in (p / "reports/hdpo/dpo/train.csv").read_text().splitlines()[1:]]
              for p in (a, b)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    # at the first step the policy is its reference: every log-ratio and the reference point are 0, and each side
    # loses 1 - sigma(0) = 1/2
    assert losses[0][0] == pytest.approx(0.5, abs=1e-5)
    assert json.loads((a / "reports/hdpo/dpo.json").read_text())["loss"] == "kto"


def test_a_reference_free_variant_needs_no_reference_model_or_log_probs(paired_project, tmp_path):
    from polyalign.params import load_params
    from polyalign.stages.hdpo import resolved_variant
    from polyalign.training.preference import PreferenceModule

    project = copy_project(paired_project, tmp_path / "p")
    for split in ("train", "val"):
        path = project / f"data/pairs/{split}.parquet"
        pq.write_table(pq.read_table(path).drop_columns(["ref_chosen_logp", "ref_rejected_logp"]), path)
    (project / "data/pairs/fingerprint.json").unlink()
    result = cli(["hdpo", "--variant", "dpo", "--set", "hdpo.optim.max_steps=1"], project, check=False)
    assert result.returncode == 2 and "lacks columns ['ref_chosen_logp', 'ref_rejected_logp']" in result.stderr
    cli(["hdpo", "--variant", "hdpo_simpo", "--set", "hdpo.optim.max_steps=4"], project)
    report = json.loads((project / "reports/hdpo/hdpo_simpo.json").read_text())
    assert (report["loss"], report["reference"], report["simpo_gamma"]) == ("simpo", "none", 1.0)
    assert report["val_ref_logps_chosen"] is None and report["val_logps_chosen"] < 0
    assert 0 <= report["val_reward_accuracy"] <= 1 and report["val_reward_accuracy_per_bucket"]
    before = AutoModelForCausalLM.from_pretrained(project / "models/sft/bucket").state_dict()
    after = AutoModelForCausalLM.from_pretrained(project / "models/hdpo/hdpo_simpo").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    params = load_params(project / "params.yaml")
    module = PreferenceModule(str(project / "models/sft/bucket"), params.hdpo, resolved_variant(params, "hdpo_simpo"),
                              ["b"], total_steps=1)
    module.configure_model()
    assert module.reference is None and module.reference_logps({}) == {}


def test_a_variant_from_global_sft_starts_there_and_uses_it_as_its_reference(paired_project, tmp_path):
    a = copy_project(paired_project, tmp_path / "a")
    other = AutoModelForCausalLM.from_pretrained(a / "models/sft/bucket")
    with torch.no_grad():  # a global-SFT model that differs from the model the pairs were sampled and scored with
        for p in other.parameters():
            p.add_(0.02 * torch.randn_like(p))
    other.save_pretrained(a / "models/sft/global")
    AutoTokenizer.from_pretrained(a / "models/sft/bucket").save_pretrained(a / "models/sft/global")
    write_manifest(a / "models/sft/global")
    b = copy_project(a, tmp_path / "b")
    steps = ["--variant", "dpo_global", "--set", "hdpo.optim.max_steps=4"]
    run = cli(["hdpo", *steps], a)
    assert "reference log-probs recomputed with sft@global" in run.stderr
    cli(["hdpo", *steps, "--set", "hdpo.variants.dpo_global.reference=frozen"], b)  # a copy of sft@global in memory
    losses = [[float(row.split(",")[1]) for row in (p / "reports/hdpo/dpo_global/train.csv").read_text().splitlines()[1:]]
              for p in (a, b)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    assert losses[0][0] == pytest.approx(np.log(2), abs=1e-4)  # policy = reference at the first step: it starts there


@pytest.mark.parametrize(("setup", "args", "message"), [
    ("drop_column", ["hdpo"], "lacks columns ['d_rejected']"),
    (None, ["hdpo", "--beta", "0"], "hdpo.variants.hdpo.beta = 0"),
    ("no_sft", ["hdpo"], "the SFT model"),
    ("no_sft", ["pairs"], "not found in"),
    (None, ["hdpo", "--variant", "nope", "--hdpo-gamma", "1"], "no variant 'nope'"),
    (None, ["hdpo", "--variant", "dpo", "--set", "hdpo.variants.dpo.init=sft@nope"], "names no variant of sft"),
    ("no_sft", ["hdpo", "--variant", "dpo_global"], "sft --variant global"),
    ("no_val", ["hdpo", "--set", "hdpo.optim.max_steps=1"], "or set hdpo.val_prompts: 0"),
])
def test_bad_preference_input_exits_2(paired_project, tmp_path, setup, args, message):
    project = copy_project(paired_project, tmp_path / "p")
    if setup == "drop_column":
        path = project / "data/pairs/train.parquet"
        table = pq.read_table(path)
        pq.write_table(table.drop(["d_rejected"]), path)
    if setup == "no_sft":
        import shutil

        shutil.rmtree(project / "models/sft/bucket")
    if setup == "no_val":
        (project / "data/buckets/val.parquet").unlink()
    result = cli(args, project, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_users_own_preference_file_replaces_sampling(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    rows = [{"question": f"Question {i}?", "chosen": "A careful, human answer.", "rejected": "no",
             "language": "en", "track": "single", "family": "qa", "length_bin": "short"} for i in range(30)]
    path = project / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli(["pairs", "--set", f"pairs.preference_file={path}"], project)
    report = json.loads((project / "reports/pairs.json").read_text())
    assert report["source"] == "file" and report["train_pairs"] + report["val_pairs"] == 30
    train = pq.read_table(project / "data/pairs/train.parquet").to_pylist()
    assert {r["chosen"] for r in train} == {"A careful, human answer."} and train[0]["bucket_id"] == "en|single|qa|short"
    assert "ref_chosen_logp" in train[0]
    bad = project / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "chosen": 3}) + "\n")
    result = cli(["pairs", "--set", f"pairs.preference_file={bad}"], project, check=False)
    assert result.returncode == 2 and "bad.jsonl:1: field 'chosen': Input should be a valid string" in result.stderr


def test_lora_reference_trains_and_merges(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    cli(["hdpo", "--variant", "hdpo", "--set", "hdpo.variants.hdpo.reference=lora", "--set",
         "hdpo.optim.lora.enabled=true",
         "--set", "hdpo.optim.max_steps=6", "--set", "hdpo.optim.lr=0.01"], project)
    out = project / "models/hdpo/hdpo"
    assert not (out / "adapter_config.json").exists()
    before = AutoModelForCausalLM.from_pretrained(project / "models/sft/bucket").state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("proj" in k for k in changed)
    assert json.loads((project / "reports/hdpo/hdpo.json").read_text())["reference"] == "lora"


def test_best_of_k_keeps_exactly_the_sample_nearest_to_human_support(paired_project):
    """`sampled_pairs` returns, per prompt, the one of its k samples with the smallest critic distance: checked
    against the same seeded samples drawn and scored again independently."""
    from collections import Counter

    from polyalign.critic.model import Critic
    from polyalign.modeling.tokenizer import decode_response
    from polyalign.params import load_params
    from polyalign.stages.pairs import draw_samples, sampled_pairs

    params = load_params(paired_project / "params.yaml")
    params = params.model_copy(update={"pairs": params.pairs.model_copy(update={"k": 4})})
    path = paired_project / "models/sft/bucket"
    model = talkative_model(path)
    tokenizer, renderer = renderer_for(path)
    critic = Critic.load(paired_project / "models/critic")
    records = pq.read_table(paired_project / "data/buckets/train.parquet").to_pylist()[:10]
    budgets = [12] * len(records)
    flat = draw_samples(records, path, model, tokenizer, renderer, params, budgets, 7)
    _, best = sampled_pairs(records, flat, critic, params, 7, Counter(), {})

    again = generate(model, tokenizer, [renderer.prompt_ids(r) for r in records], stop_ids=renderer.eot_ids,
                     max_new_tokens=budgets, temperature=1.0, top_p=0.95, num_samples=4, batch_size=32, seed=7,
                     progress=False)
    expected = {}
    for record, samples in zip(records, again):
        texts = [decode_response(tokenizer, s.ids, s.truncated) for s in samples]
        d = critic.score_responses(texts, [record] * len(texts))
        usable = [i for i, t in enumerate(texts) if t and t != record["human_answer"].strip()]
        if usable:
            nearest = min(usable, key=lambda i: d[i])
            expected[record["id"]] = (list(samples[nearest].ids), float(d[nearest]), float(min(d[usable])))
    assert len(expected) >= 8 and {b["id"] for b in best} == set(expected)
    for row in best:
        ids, d, lowest = expected[row["id"]]
        assert list(row["sample_ids"]) == ids and row["d_sample"] == pytest.approx(lowest, abs=1e-6)
        assert row["d_sample"] == pytest.approx(d, abs=1e-6)


def test_rejection_sampling_sft_starts_from_sft_bucket_and_trains_on_human_answers_plus_nearest_samples(
        paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    best = pq.read_table(project / "data/pairs/best_of_k.parquet")
    assert best.num_rows > 0 and set(best.column_names) >= {"sample", "sample_ids", "d_sample", "human_answer"}
    train = pq.read_table(project / "data/buckets/train.parquet").num_rows
    cli(["sft", "--variant", "rs", "--set", "sft.variants.rs.lr=1e-9"], project)  # (almost) no step at all
    report = json.loads((project / "reports/sft/rs.json").read_text())
    assert (report["init"], report["data"]) == ("sft@bucket", "best_of_k")
    assert report["train_examples"] == train + best.num_rows and report["train_sampled_examples"] == best.num_rows
    start = AutoModelForCausalLM.from_pretrained(project / "models/sft/bucket").state_dict()
    rs = AutoModelForCausalLM.from_pretrained(project / "models/sft/rs").state_dict()
    base = AutoModelForCausalLM.from_pretrained(project / "models/base").state_dict()
    assert all(torch.allclose(start[k], rs[k], atol=1e-5) for k in start)  # it started from sft@bucket
    assert any(not torch.allclose(base[k], rs[k], atol=1e-3) for k in base)
    (project / "data/pairs/best_of_k.parquet").unlink()
    result = cli(["sft", "--variant", "rs"], project, check=False)
    assert result.returncode == 2 and "best_of_k.parquet not found" in result.stderr
