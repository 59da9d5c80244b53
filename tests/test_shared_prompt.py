"""Shared-prompt scoring gives the log-probs and gradients of scoring each (prompt, response) sequence whole."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from polyalign.modeling.prompts import IGNORE_INDEX
from polyalign.modeling.scoring import padded_batch, response_logits, sequence_logps
from polyalign.modeling.shared_prompt import _UNSHARED, examples_batch, group_logps, pair_logps, split_example

PAD, VOCAB = 0, 97


def qwen3():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=PAD))


def gpt2():  # learned absolute positions: any shift of a position changes the log-probs
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                      pad_token_id=PAD))


def mistral_sliding():  # a sliding-window cache: scored as whole sequences instead
    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            head_dim=8, max_position_embeddings=128, sliding_window=6,
                                            pad_token_id=PAD))


def example(prompt: list[int], response: list[int]) -> dict:
    return {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response}


def pairs() -> list[tuple[dict, dict, dict]]:
    """(chosen, rejected, anchor) examples of four prompts of different lengths, responses of 1 to 9 tokens."""
    g = torch.Generator().manual_seed(1)

    def tokens(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    out = []
    for p, c, r, a in ((5, 3, 7, 1), (12, 1, 2, 9), (8, 4, 4, 4), (3, 9, 1, 6)):
        prompt = tokens(p)
        out.append((example(prompt, tokens(c)), example(prompt, tokens(r)), example(prompt, tokens(a))))
    return out


def whole_logps(model, examples: list[dict]) -> torch.Tensor:
    """The reference computation: each example one right-padded sequence of a batch."""
    batch = padded_batch([e["input_ids"] for e in examples], [e["labels"] for e in examples], PAD)
    return sequence_logps(*response_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"]))[0]


def shared_batch(call_tokens: float = -1e6) -> dict:  # a pass "saves" tokens: always shared
    rows = pairs()
    return examples_batch(len(rows), {"pair": [c for c, _, _ in rows] + [r for _, r, _ in rows],
                                      "anchor": [a for _, _, a in rows]}, PAD, call_tokens)


def expected(model) -> dict[str, torch.Tensor]:
    rows = pairs()
    return {"pair": whole_logps(model, [c for c, _, _ in rows] + [r for _, r, _ in rows]),
            "anchor": whole_logps(model, [a for _, _, a in rows])}


@pytest.mark.parametrize("make", [qwen3, gpt2, mistral_sliding])
def test_shared_prompt_log_probs_equal_whole_sequences(make):
    model = make().eval()
    with torch.no_grad():
        got = group_logps(model, shared_batch(), ("pair", "anchor"))
        want = expected(model)
    for name in ("pair", "anchor"):
        torch.testing.assert_close(got[name][0], want[name], atol=1e-4, rtol=1e-5)
    rows = pairs()
    assert got["anchor"][1].tolist() == [sum(t != IGNORE_INDEX for t in a["labels"]) for _, _, a in rows]
    assert (model in _UNSHARED) == (make is mistral_sliding)  # the sliding-window cache was refused, not misused


def test_shared_prompt_gradients_equal_whole_sequences():
    model = qwen3().train()
    weights = torch.linspace(0.5, 1.5, 8)
    (weights * expected(model)["pair"]).sum().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (weights * group_logps(model, shared_batch(), ("pair",))["pair"][0]).sum().backward()
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_scores_whole_sequences_with_the_same_result():
    model = qwen3().train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got = group_logps(model, shared_batch(), ("pair", "anchor"))
    want = expected(model)
    torch.testing.assert_close(got["anchor"][0], want["anchor"], atol=1e-4, rtol=1e-5)
    assert model not in _UNSHARED  # its cache was never asked for


def test_pair_logps_match_each_side_scored_alone():
    model = qwen3().eval()
    rows = pairs()
    chosen, rejected = pair_logps(model, [(c, r) for c, r, _ in rows], PAD, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(chosen, dtype=torch.float32),
                                   whole_logps(model, [c for c, _, _ in rows]), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(rejected, dtype=torch.float32),
                                   whole_logps(model, [r for _, r, _ in rows]), atol=1e-4, rtol=1e-5)


def test_layout_left_pads_prompts_and_refuses_a_response_to_another_prompt():
    rows = pairs()
    batch = shared_batch()
    prompt, response, labels = split_example(rows[3][0]["input_ids"], rows[3][0]["labels"])
    assert batch["prompt_input_ids"][3, -len(prompt):].tolist() == prompt  # the prompt ends in the last column
    assert batch["prompt_attention_mask"][3].tolist() == [0] * (12 - len(prompt)) + [1] * len(prompt)
    assert batch["pair_input_ids"][3, :len(response)].tolist() == response == labels
    with pytest.raises(ValueError, match="does not continue"):
        examples_batch(2, {"pair": [rows[0][0], rows[1][0], rows[1][1], rows[0][1]]}, PAD)


def test_a_batch_shares_its_prompts_only_where_that_is_cheaper():
    # prompts of 3-12 tokens, responses of 1-9: shared, 4 x 12 prompt + 8 x 9 pair + 4 x 9 anchor = 156 tokens in
    # three passes; whole, 8 x 14 pair + 4 x 21 anchor = 196 tokens in two: shared when a pass costs < 40 tokens
    model = qwen3().eval()
    whole, shared = shared_batch(call_tokens=40), shared_batch(call_tokens=39)
    assert "prompt_input_ids" not in whole and whole["pair_input_ids"].shape == (8, 14)
    assert "prompt_input_ids" in shared
    with torch.no_grad():
        for batch in (whole, shared):
            got = group_logps(model, batch, ("pair", "anchor"))
            torch.testing.assert_close(got["anchor"][0], expected(model)["anchor"], atol=1e-4, rtol=1e-5)
    long_prompt = [example(list(range(1, 300)), [5, 6]), example(list(range(1, 300)), [7])]
    assert "prompt_input_ids" in examples_batch(1, {"pair": long_prompt}, PAD)  # the default cost of a pass
    assert "prompt_input_ids" not in examples_batch(1, {"pair": long_prompt[:1]}, PAD)  # one response: nothing shared


def test_a_lora_wrapped_model_shares_its_prompts_with_the_same_result():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(qwen3(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False)).eval()
    with torch.no_grad():
        got = group_logps(model, shared_batch(), ("pair", "anchor"))
        want = expected(model)
    torch.testing.assert_close(got["pair"][0], want["pair"], atol=1e-4, rtol=1e-5)
    assert model.get_base_model() not in _UNSHARED
