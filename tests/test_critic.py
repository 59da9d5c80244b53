"""The critic: corruptions, training quality on the CPU default and on real data, collapse guard, safe I/O."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import shared_file
from polyalign.critic.corruptions import corrupt
from polyalign.critic.model import Critic
from polyalign.errors import UserError
from polyalign.params import load_params
from polyalign.stages import bucketize, fit_critic, prepare
from polyalign.text import count_tokens, detect_language, length_bin, tokenize
from sft_project import cli

EDGES, NAMES = [40, 120, 240], ["short", "medium", "long", "xlong"]
POOLS = {"en": ["Sure, I can help with that.", "The capital of France is Paris.", "It depends on the weather."],
         "zh": ["当然可以，我来帮你。", "法国的首都是巴黎。", "这要看天气情况。"]}
QUIET = ["logging.progress=false", "logging.wandb.mode=disabled"]


def make(kind, text, language, seed=0):
    return corrupt(kind, text, language, np.random.default_rng(seed), POOLS, EDGES)


@pytest.mark.parametrize(("text", "language"), [
    ("I went to the market. Then I bought some apples! Did you like them?", "en"),
    ("我去了市场。然后买了一些苹果！你喜欢吗？", "zh"),
])
def test_each_corruption_changes_what_it_claims(text, language):
    truncated = make("truncate", text, language)
    assert 0 < count_tokens(truncated) < count_tokens(text) and text.startswith(truncated.split(" ")[0])
    repeated = make("repeat", text, language)
    assert count_tokens(repeated) >= 2 * count_tokens(text) and text in repeated
    shuffled = make("shuffle", text, language)
    assert shuffled != text and sorted(tokenize(shuffled)) == sorted(tokenize(text))
    padded = make("pad_length", text, language)
    assert padded.startswith(text)
    assert length_bin(count_tokens(padded), EDGES, NAMES) != length_bin(count_tokens(text), EDGES, NAMES)
    swapped = make("swap_language", text, language)
    assert detect_language(swapped, 0.2) != detect_language(text, 0.2) == language


def test_one_sentence_shuffle_shuffles_tokens_and_impossible_corruptions_say_so():
    assert sorted(tokenize(make("shuffle", "hello big world", "en"))) == ["big", "hello", "world"]
    assert make("truncate", "Hi", "en") is None
    assert make("shuffle", "ok", "en") is None
    assert make("pad_length", "word " * 300, "en") is None  # already in the last bin


@pytest.fixture(scope="module")
def default_critic(tmp_path_factory):
    """The CPU default (embedded corpus, default params, seed 42)."""
    root = tmp_path_factory.mktemp("critic")
    params = load_params(None, QUIET)
    prepare.run(params, root)
    bucketize.run(params, root)
    report = fit_critic.run(params, root)
    return root, report


def test_default_critic_separates_human_from_corrupted_and_own_from_mismatched_buckets(default_critic):
    _, report = default_critic
    assert report["seed"] == 42
    assert report["en/auroc_human_vs_corrupted"] >= 0.9
    assert report["zh/auroc_human_vs_corrupted"] >= 0.85
    assert report["en/auroc_own_vs_mismatched"] >= 0.75 and report["zh/auroc_own_vs_mismatched"] >= 0.75
    for lang in ("en", "zh"):
        for kind in ("truncate", "repeat", "shuffle", "pad_length", "swap_language"):
            assert report[f"{lang}/auroc_{kind}"] is not None
    assert report["spearman_with_distance"] > 0.5 and report["score_std_human"] > 0.01


def test_save_load_score_is_identical_and_unknown_buckets_back_off(default_critic, tmp_path):
    root, _ = default_critic
    critic = Critic.load(root / "models/critic")
    responses = ["Hello! How are you?", "你好，很高兴认识你。", "The answer is 42."]
    buckets = ["en|single|dialogue|short", "zh|single|dialogue|short", "en|single|qa|short"]
    first = critic.distance(responses, buckets)
    again = Critic.load(root / "models/critic").distance(responses, buckets)
    np.testing.assert_array_equal(first, again)
    assert (first >= 0).all() and len(set(first.round(6))) == 3
    # a bucket training never saw scores like the parent it backs off to, never silently as 0
    unknown = critic.distance(["你好"], ["zh|multi|assistant|xlong"])
    parent = critic.refs.resolve("zh|multi|assistant|xlong")
    assert parent != "zh|multi|assistant|xlong"
    np.testing.assert_allclose(unknown, critic.distance(["你好"], [parent]))


def test_loading_refuses_tampered_and_pickled_files(default_critic, tmp_path):
    root, _ = default_critic
    tampered = shutil.copytree(root / "models/critic", tmp_path / "tampered")
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its checksum"):
        Critic.load(tampered)
    pickled = shutil.copytree(root / "models/critic", tmp_path / "pickled")
    torch.save({"weights": torch.zeros(3)}, pickled / "model.safetensors")  # a pickle in disguise
    manifest = json.loads((pickled / "manifest.json").read_text())
    import hashlib

    manifest["model.safetensors"] = hashlib.sha256((pickled / "model.safetensors").read_bytes()).hexdigest()
    (pickled / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not a safetensors file"):
        Critic.load(pickled)
    extra = shutil.copytree(root / "models/critic", tmp_path / "extra")
    torch.save({}, extra / "extra.pt")
    with pytest.raises(UserError, match="unexpected or missing files"):
        Critic.load(extra)


def test_critic_on_real_bilingual_data(tmp_path):
    sources = [
        {"kind": "alpaca", "path": str(shared_file("polyalign-sample/dist_sft_val.json"))},
        {"kind": "kdconv", "path": str(shared_file("kdconv/film_dev.json"))},
        {"kind": "squad", "path": str(shared_file("cmrc2018/cmrc2018_trial.json"))},
    ]
    params = load_params(None, [f"data.sources={json.dumps(sources)}", *QUIET])
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    report = fit_critic.run(params, tmp_path)
    print({k: v for k, v in report.items() if "auroc" in k})
    for lang in ("en", "zh"):
        assert report[f"{lang}/auroc_human_vs_corrupted"] >= 0.8, lang
        assert report[f"{lang}/auroc_own_vs_mismatched"] >= 0.7, lang


def test_collapse_guard_refuses_a_critic_trained_on_identical_responses(tmp_path):
    path = tmp_path / "same.jsonl"
    row = {"question": "How are you?", "human_answer": "Fine, thanks.", "language": "en", "track": "single",
           "family": "dialogue"}
    path.write_text("".join(json.dumps({**row, "question": f"How are you, {i}?"}) + "\n" for i in range(300)))
    params = load_params(None, [f"data.sources=[{{kind: polyalign, path: {path}}}]", "critic.epochs=2", *QUIET])
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    with pytest.raises(UserError, match="the critic collapsed"):
        fit_critic.run(params, tmp_path)
    assert not (tmp_path / "models/critic").exists() and not (tmp_path / "reports/critic.json").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["fit-critic", "--encoder", "bert"], "critic.encoder = 'bert'"),
    (["fit-critic"], "references not found"),
])
def test_bad_critic_input_exits_2(tmp_path, args, message):
    (tmp_path / "data/buckets").mkdir(parents=True)
    result = cli(args, tmp_path, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_empty_training_split_exits_2(tmp_path):
    params = load_params(None, ["data.sources=[{kind: chatterbot, languages: [english], categories: [ai]}]",
                                "data.split_ratios={train: 0.0, val: 0.5, test: 0.5}", *QUIET])
    prepare.run(params, tmp_path)
    with pytest.raises(UserError, match="train split is empty"):
        bucketize.run(params, tmp_path)
    # bucketed data whose train split is empty (e.g. filtered by another tool) is refused by fit-critic too
    import pyarrow.parquet as pq

    params = load_params(None, ["data.sources=[{kind: chatterbot, languages: [english], categories: [ai]}]", *QUIET])
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    train = tmp_path / "data/buckets/train.parquet"
    pq.write_table(pq.read_table(train).slice(0, 0), train)
    result = cli(["fit-critic", "--set", "logging.wandb.mode=disabled"], tmp_path, check=False)
    assert result.returncode == 2 and "is empty" in result.stderr and "Traceback" not in result.stderr


def test_hf_encoder_prompt_and_model_samples(tmp_path):
    """The `hf` encoder (a causal LM directory, mean-pooled), prompts as input, and model-sample pairs."""
    from sft_project import write_tiny_params

    write_tiny_params(tmp_path)
    params = load_params(tmp_path / "params.yaml")
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    from polyalign.stages import init as init_stage

    init_stage.run(params, tmp_path)
    samples = tmp_path / "samples.jsonl"
    import pyarrow.parquet as pq

    train = pq.read_table(tmp_path / "data/buckets/train.parquet").to_pylist()[:40]
    samples.write_text("".join(json.dumps({"response": "ok ok ok ok", "bucket_id": r["bucket_id"]}) + "\n"
                               for r in train))
    params = load_params(tmp_path / "params.yaml", [
        "critic.encoder=hf", f"critic.encoder_path={tmp_path / 'models/base'}", "critic.use_prompt=true",
        f"critic.model_samples={samples}", "critic.epochs=2"])
    report = fit_critic.run(params, tmp_path)
    assert report["encoder"] == "hf"
    critic = Critic.load(tmp_path / "models/critic")
    assert critic.config["encoder"]["kind"] == "hf" and critic.config["use_prompt"]
    scores = critic.distance(["hello there", "你好"], ["en|single|dialogue|short", "zh|single|dialogue|short"],
                             prompts=["hi", "你好"])
    assert scores.shape == (2,) and (scores >= 0).all()
    with pytest.raises(UserError, match="pass prompts"):
        critic.distance(["hello"], ["en|single|dialogue|short"])
