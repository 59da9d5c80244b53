"""Generation engines and processes: one process's batches, sampling sharded over 2 CPU processes, and the
optional vLLM backend (its tests run where vLLM is installed: `make venv-vllm`)."""

import importlib.util
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from polyalign.generation import batch_plan, generate
from polyalign.manifest import write_manifest
from polyalign.modeling.model import Loading
from polyalign.modeling.prompts import PromptRenderer
from polyalign.sampling import sharded_generate
from sft_project import cli, copy_project
from test_hdpo import talkative_model

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def talkative(paired_tiny, tmp_path_factory):
    """A model folder (with its manifest) whose responses are non-empty and varied, the val prompts and budgets
    of different lengths."""
    folder = tmp_path_factory.mktemp("talkative") / "model"
    model = talkative_model(paired_tiny / "models/sft/bucket")
    tokenizer = AutoTokenizer.from_pretrained(paired_tiny / "models/sft/bucket")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_manifest(folder)
    renderer = PromptRenderer(tokenizer, "observable", 64, 96)
    records = pq.read_table(paired_tiny / "data/buckets/val.parquet").to_pylist()[:22]
    prompts = [renderer.prompt_ids(r) for r in records]
    budgets = [3 + (i % 4) * 3 for i in range(len(prompts))]
    return folder, model, tokenizer, renderer, prompts, budgets


def test_a_share_of_the_batches_samples_those_prompts_as_the_whole_run_does(talkative):
    _, model, tokenizer, renderer, prompts, budgets = talkative
    kwargs = {"stop_ids": renderer.eot_ids, "max_new_tokens": budgets, "batch_size": 4, "seed": 5,
              "num_samples": 2, "progress": False}
    whole = generate(model, tokenizer, prompts, **kwargs)
    plan = batch_plan(prompts, budgets, 4)
    part = generate(model, tokenizer, prompts, batches=[1, 3], **kwargs)
    mine = set(plan[1] + plan[3])
    assert all((part[i] == whole[i]) if i in mine else part[i] == [] for i in range(len(prompts)))


def test_sampling_sharded_over_two_processes_equals_one_process(talkative):
    folder, model, tokenizer, renderer, prompts, budgets = talkative
    kwargs = {"stop_ids": renderer.eot_ids, "max_new_tokens": budgets, "temperature": 1.0, "top_p": 0.9,
              "batch_size": 4, "seed": 11, "num_samples": 2}
    single = generate(model, tokenizer, prompts, progress=False, **kwargs)
    sharded = sharded_generate(folder, Loading(), "cpu", 2, prompts, progress=False, **kwargs)
    assert sharded == single
    assert len({tuple(s.ids) for samples in single for s in samples}) > len(prompts)  # sampled, and varied
    assert any(s.truncated for samples in single for s in samples)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: its absence cannot be tested")
def test_the_vllm_backend_without_vllm_is_a_clear_error(paired_tiny, tmp_path):
    project = copy_project(paired_tiny, tmp_path / "p")
    result = cli(["pairs", "--set", "generation.backend=vllm"], project, check=False)
    assert result.returncode == 2
    assert "vLLM cannot be imported" in result.stderr and "make venv-vllm" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (`make venv-vllm` makes an environment with it)")
def test_vllm_greedy_gives_the_hf_backends_ids_and_flags(talkative, paired_tiny, tmp_path):
    from polyalign.params import GenerationParams
    from polyalign.vllm_backend import vllm_generate

    _, _, tokenizer, renderer, prompts, budgets = talkative
    folder = tmp_path / "model"  # vLLM's CPU attention needs a head size of 32 or more
    model = talkative_model(paired_tiny / "models/sft/bucket", hidden_size=64)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    decoding = {"max_new_tokens": budgets, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
                "num_samples": 1, "seed": 0}
    with torch.no_grad():
        free = generate(model, tokenizer, prompts, stop_ids=renderer.eot_ids, batch_size=8, progress=False, **decoding)
    # a token that some greedy responses reach and others do not, as an extra end of turn: both kinds of ending
    counts = Counter(t for s in free for t in set(s[0].ids[1:]))
    stop = [*renderer.eot_ids, next(t for t, n in counts.most_common() if n < len(prompts))]
    with torch.no_grad():
        hf = generate(model, tokenizer, prompts, stop_ids=stop, batch_size=8, progress=False, **decoding)
    vllm = vllm_generate(folder, prompts, "float32", GenerationParams(backend="vllm"), progress=False,
                         stop_ids=stop, **decoding)
    assert vllm == hf
    assert any(s[0].truncated for s in hf) and any(not s[0].truncated for s in hf)


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (`make venv-vllm` makes an environment with it)")
def test_a_model_vllm_cannot_run_is_a_clear_error(talkative):
    from polyalign.errors import UserError
    from polyalign.params import GenerationParams
    from polyalign.vllm_backend import vllm_generate

    folder, _, _, renderer, prompts, budgets = talkative  # attention heads of 16: too small for vLLM's CPU kernels
    with pytest.raises(UserError, match="vLLM failed on the model .* set generation.backend: hf"):
        vllm_generate(folder, prompts[:2], "float32", GenerationParams(backend="vllm"), stop_ids=renderer.eot_ids,
                      max_new_tokens=budgets[:2], temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                      num_samples=1, seed=0, progress=False)
