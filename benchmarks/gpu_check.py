"""GPU check: the real-model path's speed and memory on one GPU, with nothing downloaded.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--smoke]

It builds a model with Qwen2.5-0.5B's architecture (24 layers, hidden 896, 14 query and 2 key-value heads, its
151,936-token embedding) from config, with random weights, and the scratch tokenizer trained on the default
corpus, and times in bf16 on one GPU:
- SFT steps (AdamW, bf16 autocast, 8 x 1,024 tokens): tokens/s and model FLOPs utilisation (6 x parameters x
  tokens/s over the GPU's dense bf16 peak);
- sampling 512 prompts x 2 samples x 128 new tokens with the `hf` backend and, when vLLM is installed, `vllm`;
- preference (DPO) steps of 8 pairs x 512 tokens, with precomputed reference log-probs and with a frozen
  reference model;
- the peak GPU memory of each.
Without a GPU it prints "no GPU: skipped" and exits 0. `--smoke` runs the same code on a tiny model on the CPU
(a check that the script works, not a measurement). Target: under 5 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build(smoke: bool, workdir: Path):
    """The tokenizer (trained on the default corpus's train split), the model, and 512 rendered prompts."""
    from common import default_project
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from polyalign.modeling.prompts import PromptRenderer
    from polyalign.modeling.tokenizer import train_tokenizer
    from polyalign.stages.init import read_split, record_texts

    params = default_project(workdir, with_model=False)
    train = read_split(params, workdir, "train")
    tokenizer = train_tokenizer(record_texts(train), params.model.vocab_size, params.model.tokenizer_min_frequency)
    shape = ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "vocab_size": len(tokenizer)} if smoke else
             {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936})
    config = Qwen2Config(**shape, max_position_embeddings=2048, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    renderer = PromptRenderer(tokenizer, "observable", 192, 256)
    prompts = [renderer.prompt_ids(r) for r in (train * 2)[:512]]
    return tokenizer, model, renderer, prompts


def timed(fn, steps: int, warmup: int = 2) -> float:
    """Seconds per call of `fn` after `warmup` calls (synchronised on a GPU)."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    value = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(value, 2)


def sft_steps(model, device, vocab: int, batch: int, length: int, steps: int) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, vocab, (batch, length), device=device)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, steps)
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_s = batch * length / seconds
    peak = peak_tflops(torch.cuda.get_device_name()) if device.type == "cuda" else None
    return {"batch": batch, "tokens": length, "step_s": round(seconds, 4), "tokens_per_s": round(tokens_per_s),
            "parameters": n_params,
            "mfu": round(6 * n_params * tokens_per_s / (peak * 1e12), 4) if peak else None,
            "peak_memory_gib": peak_memory_gib()}


def preference_steps(model, device, vocab: int, pairs: int, length: int, steps: int, frozen: bool) -> dict:
    """DPO steps: chosen and rejected in one forward pass; the reference precomputed (numbers) or a frozen copy
    of the model scoring both sides at every step."""
    import copy

    from polyalign.training.objectives.batch import PairBatch
    from polyalign.training.objectives.compose import preference_loss

    reference = copy.deepcopy(model).eval().requires_grad_(False) if frozen else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-7)
    ids = torch.randint(0, vocab, (2 * pairs, length), device=device)
    model.train()

    def logps(m):
        logits = m(input_ids=ids).logits[:, :-1].float()
        return torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(-1).sum(-1)

    precomputed = torch.zeros(2 * pairs, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            policy = logps(model)
            if reference is not None:
                with torch.no_grad():
                    ref = logps(reference)
            else:
                ref = precomputed
        lengths, zeros = torch.full((pairs,), float(length), device=device), torch.zeros(pairs, device=device)
        batch = PairBatch(policy_chosen=policy[:pairs], policy_rejected=policy[pairs:], len_chosen=lengths,
                          len_rejected=lengths, d_chosen=zeros, d_rejected=zeros,
                          weight=torch.ones(pairs, device=device), ref_chosen=ref[:pairs], ref_rejected=ref[pairs:])
        loss, _, _ = preference_loss(batch, "sigmoid", 0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, steps)
    return {"pairs": pairs, "tokens": length, "step_s": round(seconds, 4), "peak_memory_gib": peak_memory_gib()}


def sampling(model, tokenizer, renderer, prompts, folder: Path, device, new_tokens: int) -> dict:
    from polyalign.generation import generate

    model.eval()
    budgets = [new_tokens] * len(prompts)
    out = {}
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        samples = generate(model, tokenizer, prompts, stop_ids=[-1], max_new_tokens=budgets, num_samples=2,
                           batch_size=64, seed=0, progress=False)
    sync()
    seconds = time.perf_counter() - start
    tokens = sum(len(s.ids) for row in samples for s in row)
    out["hf"] = {"seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds), "peak_memory_gib":
                 peak_memory_gib()}
    if importlib.util.find_spec("vllm") is None:
        out["vllm"] = "not installed"
        return out
    from polyalign.params import GenerationParams
    from polyalign.vllm_backend import vllm_generate

    start = time.perf_counter()
    samples = vllm_generate(folder, prompts, "bfloat16", GenerationParams(backend="vllm", gpu_memory_utilization=0.3),
                            stop_ids=[-1], max_new_tokens=budgets, temperature=1.0, top_p=1.0, top_k=0,
                            repetition_penalty=1.0, num_samples=2, seed=0, progress=False)
    seconds = time.perf_counter() - start  # engine start-up included
    tokens = sum(len(s.ids) for row in samples for s in row)
    out["vllm"] = {"seconds_with_startup": round(seconds, 2), "tokens_per_s": round(tokens / seconds)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the script only")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("no GPU: skipped")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import write_result

    from polyalign.manifest import write_manifest

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tokenizer, model, renderer, prompts = build(args.smoke, workdir / "project")
        folder = workdir / "model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_manifest(folder)
        model.to(device)
        vocab = len(tokenizer)
        small = args.smoke
        result = {
            "benchmark": "gpu_check", "smoke": small,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "sft": sft_steps(model, device, vocab, 2 if small else 8, 64 if small else 1024, 2 if small else 20),
            "sampling": sampling(model, tokenizer, renderer, prompts[: 8 if small else 512], folder, device,
                                 8 if small else 128),
            "preference_precomputed": preference_steps(model, device, vocab, 2 if small else 8, 32 if small else 512,
                                                       2 if small else 20, frozen=False),
            "preference_frozen": preference_steps(model, device, vocab, 2 if small else 8, 32 if small else 512,
                                                  2 if small else 20, frozen=True),
        }
    result["total_s"] = round(time.perf_counter() - started, 1)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
