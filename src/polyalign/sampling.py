"""Which engine samples a stage's responses, and on how many processes.

`generation.backend: hf` samples with `generation.generate` on the stage's loaded model. With `trainer.devices`
above 1 it starts one process per device instead: each loads the model folder on its device and samples its
share of `batch_plan`'s batches (every batch keeps its own seed), and the shares are merged in input order, so
the result equals one process's. `vllm` hands the model folder to a vLLM engine (`vllm_backend`), which spreads
itself over `generation.tensor_parallel_size` GPUs. Pair sampling, HDPO's rounds and evaluation go through
`sample_responses`; HDPO's validation probes sample the model in training, in memory, with `hf`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from polyalign.generation import Sample, batch_plan, generate, per_prompt
from polyalign.log import progress_bar
from polyalign.modeling.model import Loading, inference_device, load_model_dir
from polyalign.modeling.scoring import compute_dtype


def generation_processes(trainer) -> int:
    """How many processes sample: `trainer.devices` ('auto': the visible GPUs, or one on CPU); one inside a
    process that a training strategy launched (a DDP rank samples on its own, as rank 0 does)."""
    if "LOCAL_RANK" in os.environ or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    if trainer.devices == "auto":
        return max(1, torch.cuda.device_count()) if trainer.accelerator in ("auto", "gpu", "cuda") else 1
    return max(1, int(trainer.devices))


@dataclass(frozen=True)
class Shard:
    """What one sampling process needs: the model folder and how to load it, its device and threads, and the
    batches it samples."""

    folder: str
    loading: Loading
    accelerator: str
    rank: int
    world: int
    threads: int


def _sample_shard(shard: Shard, prompts, kwargs) -> list[list[Sample]]:
    torch.set_num_threads(shard.threads)
    device = inference_device(shard.accelerator)
    if device.type == "cuda":
        device = torch.device("cuda", shard.rank)
    model, tokenizer = load_model_dir(shard.folder, f"the model in {shard.folder}", shard.loading)
    model.to(device)
    n_batches = len(batch_plan(prompts, per_prompt(kwargs["max_new_tokens"], len(prompts)), kwargs["batch_size"]))
    return generate(model, tokenizer, prompts, batches=range(shard.rank, n_batches, shard.world), progress=False,
                    **kwargs)


def sharded_generate(folder: Path, loading: Loading, accelerator: str, world: int, prompts: Sequence[Sequence[int]],
                     *, progress: bool = True, description: str = "generating", **kwargs) -> list[list[Sample]]:
    """`generate` over `world` processes (spawned, one per device), merged in input order: the same samples as
    one process, since each batch is sampled with its own seed whichever process samples it."""
    from polyalign.threads import cores

    threads = max(1, cores() // world) if inference_device(accelerator).type == "cpu" else 1
    shards = [Shard(str(folder), loading, accelerator, rank, world, threads) for rank in range(world)]
    out: list[list[Sample]] = [[] for _ in prompts]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked; CPU torch's thread pools neither
    with context.Pool(world) as pool, progress_bar(progress) as bar:
        task = bar.add_task(f"{description} ({world} processes)", total=world)
        results = [pool.apply_async(_sample_shard, (shard, [list(p) for p in prompts], kwargs)) for shard in shards]
        for result in results:
            for i, samples in enumerate(result.get()):
                if samples:
                    out[i] = samples
            bar.advance(task)
    return out


def sample_responses(g, params, folder: Path, model, tokenizer, prompts: Sequence[Sequence[int]], *,
                     stop_ids: Sequence[int], budgets: Sequence[int], num_samples: int, seed: int,
                     description: str) -> list[list[Sample]]:
    """`num_samples` responses per prompt with the decoding settings `g` (`generation` or
    `evaluate.generation`) on the engine and processes they and `params.trainer` ask for. `model` is the
    stage's loaded model (hf on one process), `folder` where it was loaded from."""
    decoding = {"stop_ids": list(stop_ids), "max_new_tokens": list(budgets), "temperature": g.temperature,
                "top_p": g.top_p, "top_k": g.top_k, "repetition_penalty": g.repetition_penalty,
                "num_samples": num_samples, "seed": seed}
    progress = params.logging.progress
    if g.backend == "vllm":
        from polyalign.vllm_backend import vllm_generate

        # in the precision training computes in (bf16-mixed: bfloat16), as the reference log-probs are
        dtype = compute_dtype(params.trainer.precision, params.model.dtype)
        return vllm_generate(folder, prompts, dtype, g, progress=progress, **decoding)
    world = generation_processes(params.trainer)
    if world > 1:
        return sharded_generate(folder, Loading.from_params(params), params.trainer.accelerator, world, prompts,
                                batch_size=g.batch_size, progress=progress, description=description, **decoding)
    return generate(model, tokenizer, prompts, batch_size=g.batch_size, progress=progress, description=description,
                    **decoding)
