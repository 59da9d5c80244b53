"""Precision and memory settings on CPU: the dtype models load in (`model.dtype`), the attention kernel, gradient
checkpointing, and reference log-probs computed in the training precision (`trainer.precision`)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyalign.modeling.model import Loading, folder_dtype, load_model_dir
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.scoring import compute_dtype, training_precision
from polyalign.params import load_params
from polyalign.training.preference import PairCollator, PreferenceModule, encode_pair, reference_logps
from polyalign.training.sft import SFTModule
from sft_project import cli, copy_project, read_curve

BF16 = ["--set", "trainer.precision=bf16-mixed"]


def test_compute_dtype_follows_lightnings_precision_names():
    assert compute_dtype("32-true", "float32") == "float32"
    assert compute_dtype("32-true", "bfloat16") == "bfloat16"  # a model loaded in bf16 computes in bf16
    assert compute_dtype("bf16-mixed", "float32") == "bfloat16"
    assert compute_dtype("bf16-true", "float32") == "bfloat16"
    assert compute_dtype("16-mixed", "float32") == "float16"


def test_training_precision_autocasts_mixed_and_copies_true(paired_tiny):
    model, _ = load_model_dir(paired_tiny / "models/sft/bucket")
    ids = torch.tensor([[5, 6, 7, 8]])
    with training_precision(model, "32-true") as m:
        assert m is model and m(input_ids=ids).logits.dtype == torch.float32
    with training_precision(model, "bf16-mixed") as m:
        assert m is model and m(input_ids=ids).logits.dtype == torch.bfloat16
    with training_precision(model, "bf16-true") as m:
        assert m is not model and next(m.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_models_load_in_model_dtype_with_the_chosen_attention(paired_tiny):
    folder = paired_tiny / "models/sft/bucket"
    assert folder_dtype(folder) == "float32"
    model, _ = load_model_dir(folder)  # auto: as saved
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    model, _ = load_model_dir(folder, loading=Loading("bfloat16", "eager"))
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"


def test_flash_attention_without_its_package_is_a_clear_error(paired_tiny, tmp_path):
    project = copy_project(paired_tiny, tmp_path / "p")
    result = cli(["sft", "--variant", "global", "--set", "model.attn_implementation=flash_attention_2",
                  "--set", "sft.optim.max_steps=1"], project, check=False)
    assert result.returncode == 2
    assert "model.attn_implementation" in result.stderr and "Traceback" not in result.stderr


def _step0_gaps(project, precision: str, reference: np.ndarray, rows: list[dict], renderer) -> np.ndarray:
    """h at step 0 without beta: the policy's log-ratios (chosen minus rejected) against `reference`, with the
    policy scored as Lightning's `precision` trains it, in the training batch layout (chosen and rejected
    sides padded together)."""
    model, _ = load_model_dir(project / "models/sft/bucket")
    collate = PairCollator(renderer.pad_id, {b: 0 for b in {r["bucket_id"] for r in rows}}, uniform=True)
    encoded = [{**r, **encode_pair(renderer, r)} for r in rows]
    chosen, rejected = [], []
    with torch.no_grad(), training_precision(model, precision) as m:
        for start in range(0, len(encoded), 8):
            batch = encoded[start: start + 8]
            logps = PreferenceModule._score(m, collate(batch))["pair"][0].float().numpy()
            chosen.append(logps[: len(batch)])
            rejected.append(logps[len(batch):])
    return (np.concatenate(chosen) - reference[0]) - (np.concatenate(rejected) - reference[1])


def test_reference_log_probs_in_the_training_precision_give_h_0_at_step_0(paired_tiny):
    rows = pq.read_table(paired_tiny / "data/pairs/train.parquet").to_pylist()[:32]
    tokenizer = AutoTokenizer.from_pretrained(paired_tiny / "models/sft/bucket")
    params = yaml.safe_load((paired_tiny / "params.yaml").read_text())
    renderer = PromptRenderer(tokenizer, "observable", params["prompt"]["max_prompt_tokens"],
                              params["prompt"]["max_tokens"])
    model, _ = load_model_dir(paired_tiny / "models/sft/bucket")
    in_fp32 = np.array(reference_logps(model, renderer, rows))
    in_bf16 = np.array(reference_logps(model, renderer, rows, "bf16-mixed"))
    assert np.abs(_step0_gaps(paired_tiny, "32-true", in_fp32, rows, renderer)).max() < 1e-4
    matched = np.abs(_step0_gaps(paired_tiny, "bf16-mixed", in_bf16, rows, renderer))
    mismatched = np.abs(_step0_gaps(paired_tiny, "bf16-mixed", in_fp32, rows, renderer))
    assert matched.mean() < 0.2 * mismatched.mean()


def test_bf16_mixed_pairs_and_hdpo_record_and_check_the_reference_precision(paired_tiny, tmp_path):
    project = copy_project(paired_tiny, tmp_path / "p")
    refused = cli(["hdpo", "--variant", "dpo", "--set", "hdpo.optim.max_steps=1", *BF16], project, check=False)
    assert refused.returncode == 2 and "dtype: 'float32' -> 'bfloat16'" in refused.stderr
    cli(["pairs", *BF16], project)
    assert json.loads((project / "data/pairs/fingerprint.json").read_text())["dtype"] == "bfloat16"
    cli(["hdpo", "--variant", "dpo", "--set", "hdpo.optim.max_steps=2", *BF16], project)
    first = read_curve(project / "reports/hdpo/dpo/train.csv")[0]
    assert first[1] == pytest.approx(np.log(2), abs=2e-3)  # h close to 0: policy = reference at the first step


def test_gradient_checkpointing_trains_the_same_weights(paired_tiny, tmp_path):
    a = copy_project(paired_tiny, tmp_path / "a")
    b = copy_project(paired_tiny, tmp_path / "b")
    steps = ["sft", "--variant", "global", "--set", "sft.optim.max_steps=3"]
    cli(steps, a)
    cli([*steps, "--set", "trainer.gradient_checkpointing=true"], b)  # dropout masks replayed in the recompute
    sft = load_params(a / "params.yaml").sft
    module = SFTModule(str(a / "models/base"), sft, "none", [], 1, sft.optim, loading=Loading(gradient_checkpointing=True))
    module.configure_model()
    assert module.model.is_gradient_checkpointing
    np.testing.assert_allclose([x[1] for x in read_curve(a / "reports/sft/global/train_loss.csv")],
                               [x[1] for x in read_curve(b / "reports/sft/global/train_loss.csv")], rtol=1e-5)


def test_a_bf16_pretrained_model_stays_bf16_through_the_pipeline(paired_tiny, tmp_path):
    """A pretrained-format model saved in bf16 goes through init, sft, pairs, hdpo and evaluate with
    model.dtype bfloat16: every model folder is bf16 and loads with plain AutoModelForCausalLM."""
    project = copy_project(paired_tiny, tmp_path / "p")
    hub = tmp_path / "hub-model"
    source = AutoModelForCausalLM.from_pretrained(paired_tiny / "models/base").to(torch.bfloat16)
    source.save_pretrained(hub)
    AutoTokenizer.from_pretrained(paired_tiny / "models/base").save_pretrained(hub)
    settings = ["--set", "model.source=pretrained", "--set", f"model.name_or_path={hub}",
                "--set", "model.dtype=bfloat16"]
    cli(["init", *settings], project)
    cli(["sft", "--variant", "bucket", "--set", "sft.optim.max_steps=2", *settings], project)
    cli(["pairs", "--set", "pairs.max_prompts=16", *settings], project)
    cli(["hdpo", "--variant", "dpo", "--set", "hdpo.optim.max_steps=2", *settings], project)
    cli(["evaluate", "--set", "evaluate.methods=[sft@bucket,hdpo@dpo]", "--set", "evaluate.compare=[]",
         "--set", "evaluate.max_prompts=16", *settings], project)
    assert json.loads((project / "data/pairs/fingerprint.json").read_text())["dtype"] == "bfloat16"
    for folder in ("base", "sft/bucket", "hdpo/dpo"):
        path = project / "models" / folder
        assert folder_dtype(path) == "bfloat16", folder
        with safe_open(str(path / "model.safetensors"), "pt") as weights:
            assert {weights.get_tensor(k).dtype for k in weights.keys()}  # noqa: SIM118 (safe_open is no dict) == {torch.bfloat16}, folder
        assert AutoModelForCausalLM.from_pretrained(path).dtype == torch.bfloat16
    report = json.loads((project / "reports/eval/hdpo@dpo.json").read_text())
    assert report["test_ids"]
