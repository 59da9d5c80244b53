"""The critic: corruptions, training quality on the CPU default and on real data, held-out validation features,
what model samples and prompts teach it, collapse guard, safe I/O."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import shared_file
from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.critic.corruptions import corrupt
from polyalign.critic.encoders import NgramEncoder, load_encoder, save_encoder
from polyalign.critic.model import Critic, feature_distance, feature_mask
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
    assert report["score_std_human"] > 0.01
    # the inflated "Spearman with d" (d is a fixed function of the critic's inputs) is gone; what is left is the
    # correlation with the distance on features the critic never saw
    assert not any("spearman_with_distance" in key for key in report)
    assert report["heldout_features"] == ["punct_per_token", "question_share", "distinct_2", "repeat_3"]
    assert report["spearman_heldout_distance"] > 0.2
    assert report["en/spearman_heldout_distance"] > 0.2 and report["zh/spearman_heldout_distance"] > 0.2


def test_heldout_features_are_not_critic_inputs(default_critic):
    root, _ = default_critic
    critic = Critic.load(root / "models/critic")
    responses = ["Hello! How are you today?", "你好，很高兴认识你。", "The answer is 42, I think."]
    buckets = ["en|single|dialogue|short", "zh|single|dialogue|short", "en|single|qa|short"]
    features = compute_features(responses)
    x, _ = critic.inputs(responses, buckets, features=features)
    for name in FEATURE_NAMES:
        changed = features.copy()
        changed[:, FEATURE_NAMES.index(name)] += 5.0
        x_changed, _ = critic.inputs(responses, buckets, features=changed)
        if name in critic.config["heldout_features"]:
            np.testing.assert_array_equal(x_changed, x, err_msg=name)
        else:
            assert not np.array_equal(x_changed, x), name
    assert critic.net.mlp[0].in_features == x.shape[1] + critic.config["bucket_dim"]


def test_feature_distance_is_the_support_distance_restricted_to_the_features(default_critic):
    root, _ = default_critic
    refs = Critic.load(root / "models/critic").refs
    responses = ["Hello! How are you today? " * 3, "你好。", "ok", "The answer is 42, I think!!"]
    buckets = ["en|single|dialogue|short", "zh|single|dialogue|short", "en|single|qa|short", "en|*|*|*"]
    features = compute_features(responses)
    everything = feature_mask(refs, FEATURE_NAMES)
    np.testing.assert_allclose(feature_distance(refs, features, buckets, everything),
                               refs.distance(features, buckets))
    one = feature_mask(refs, ["n_tokens"])
    for i, key in enumerate(refs.resolve_many(buckets)):
        stats, j = refs.buckets[key].stats, FEATURE_NAMES.index("n_tokens")
        gap = max(0.0, stats["low"][j] - features[i, j], features[i, j] - stats["high"][j]) / stats["scale"][j]
        assert feature_distance(refs, features[i:i + 1], [buckets[i]], one)[0] == pytest.approx(gap)


@pytest.mark.parametrize(("value", "message"), [
    ("[n_tokens, no_such_feature]", "unknown features ['no_such_feature']"),
    ("[n_tokens, n_tokens]", "listed twice"),
    (json.dumps(FEATURE_NAMES), "leave at least one feature"),
])
def test_heldout_features_are_validated(value, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_params(None, [f"critic.heldout_features={value}"])


def test_ngram_encoder_encodes_the_same_after_save_and_load(tmp_path):
    """The SVD components are Fortran-ordered; saving them as such once scrambled every loaded critic."""
    texts = [f"answer number {i}: {'yes' if i % 3 else 'no'}, and {i * 7} more words" for i in range(60)]
    texts += [f"第{i}个回答：{'好的' if i % 2 else '不行'}。" for i in range(60)]
    encoder = NgramEncoder((1, 3), 2000, 16, seed=0).fit(texts)
    again = load_encoder(save_encoder(encoder, tmp_path), tmp_path)
    np.testing.assert_allclose(again.encode(texts), encoder.encode(texts), atol=1e-6)


def test_save_load_score_is_identical_and_unknown_buckets_back_off(default_critic, tmp_path):
    root, _ = default_critic
    critic = Critic.load(root / "models/critic")
    responses = ["Hello! How are you?", "你好，很高兴认识你。", "The answer is 42."]
    buckets = ["en|single|dialogue|short", "zh|single|dialogue|short", "en|single|qa|short"]
    first = critic.distance(responses, buckets)
    again = Critic.load(root / "models/critic").distance(responses, buckets)
    np.testing.assert_array_equal(first, again)
    assert (first >= 0).all() and len(set(first.tolist())) == 3  # two are near 1e-6: no rounding
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


GENERIC = {"en": ["I am not sure what you mean.", "That is a good question.", "I do not know about that.",
                  "Can you say that again?"],
           "zh": ["我不太明白你的意思。", "这是个好问题。", "我不知道这个。", "你能再说一遍吗？"]}


def auroc_of(closer: np.ndarray, farther: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(np.r_[np.zeros(len(closer)), np.ones(len(farther))], np.r_[closer, farther])


def test_model_samples_teach_the_critic_what_the_model_writes(default_critic, tmp_path):
    """Generic replies (a mode-collapsed model) look human to the features and the corruptions; a critic trained
    with them as `critic.model_samples` puts them far from the human answers of unseen val prompts."""
    import pyarrow.parquet as pq

    root, _ = default_critic
    shutil.copytree(root / "data", tmp_path / "data")
    train = pq.read_table(tmp_path / "data/buckets/train.parquet").to_pylist()
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"response": GENERIC[r["language"]][i % 4], "bucket_id": r["bucket_id"]})
                               + "\n" for i, r in enumerate(train)), encoding="utf-8")
    report = fit_critic.run(load_params(None, [f"critic.model_samples={samples}", *QUIET]), tmp_path)
    assert report["auroc_human_vs_corrupted"] >= 0.85  # still a critic of everything else

    val = pq.read_table(tmp_path / "data/buckets/val.parquet").to_pylist()
    generic = [GENERIC[r["language"]][i % 4] for i, r in enumerate(val)]
    humans = [r["human_answer"] for r in val]
    with_samples, without = Critic.load(tmp_path / "models/critic"), Critic.load(root / "models/critic")
    learned = auroc_of(with_samples.score_responses(humans, val), with_samples.score_responses(generic, val))
    before = auroc_of(without.score_responses(humans, val), without.score_responses(generic, val))
    print({"auroc_human_vs_generic_with_samples": learned, "without": before})
    assert learned >= 0.9 and before <= 0.7


TOPICS = ["cats", "rivers", "music", "bread", "trains", "stars", "gardens", "coffee"]


def topic_records(n: int) -> list[dict]:
    """Questions about a topic answered about that topic, in varied words: only the prompt tells which topic an
    answer should be about."""
    ask = ["Tell me about {}.", "What do you know about {}?", "Can you explain {} to me?", "I want to learn about {}."]
    say = ["{} are a topic I like.", "Well, {} are interesting.", "People often talk about {}.",
           "{} can be surprising."]
    more = ["It takes a while to explain.", "There is a lot to say.", "Many books cover it.", "Ask me more later."]
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        answer = " ".join([say[rng.integers(4)].format(topic).capitalize(), *rng.choice(more, rng.integers(0, 3))])
        records.append({"question": ask[rng.integers(4)].format(topic), "human_answer": answer, "language": "en",
                        "track": "single", "family": "qa"})
    return records


def test_prompt_critic_scores_through_score_responses_and_reads_the_prompt(tmp_path):
    """A critic fitted with `use_prompt` scores through `score_responses` (the record's prompt, as in training)
    and has learned what the prompt asks: the same answer scores closer under its own question than under a
    question about another topic."""
    import pyarrow.parquet as pq

    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in topic_records(2000)), encoding="utf-8")
    params = load_params(None, [f"data.sources=[{{kind: polyalign, path: {path}}}]", "critic.use_prompt=true",
                                *QUIET])
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    report = fit_critic.run(params, tmp_path)
    assert report["auroc_own_vs_other_prompt"] >= 0.75

    critic = Critic.load(tmp_path / "models/critic")
    val = pq.read_table(tmp_path / "data/buckets/val.parquet").to_pylist()
    answers = [r["human_answer"] for r in val]
    own = critic.score_responses(answers, val)
    np.testing.assert_allclose(own, critic.distance(answers, [r["bucket_id"] for r in val],
                                                    [r["question"] for r in val]))
    topic = [next(t for t in TOPICS if t in r["question"]) for r in val]
    other_prompt = [{**r, "question": f"Tell me about {TOPICS[(TOPICS.index(t) + 3) % len(TOPICS)]}."}
                    for r, t in zip(val, topic)]
    other = critic.score_responses(answers, other_prompt)
    assert len(val) >= 50 and (own < other).mean() >= 0.9 and np.median(other - own) > 0.2


def test_collapse_guard_refuses_a_critic_trained_on_identical_responses(tmp_path):
    path = tmp_path / "same.jsonl"
    row = {"question": "How are you?", "human_answer": "Fine, thanks.", "language": "en", "track": "single",
           "family": "dialogue"}
    path.write_text("".join(json.dumps({**row, "question": f"How are you, {i}?"}) + "\n" for i in range(300)))
    params = load_params(None, [f"data.sources=[{{kind: polyalign, path: {path}}}]", "critic.optim.epochs=2", *QUIET])
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
    prepare.run(params, tmp_path, require_every_split=False)  # prepare refuses it too; bucketize's check here
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
        f"critic.model_samples={samples}", "critic.optim.epochs=2"])
    report = fit_critic.run(params, tmp_path)
    assert report["encoder"] == "hf"
    critic = Critic.load(tmp_path / "models/critic")
    assert critic.config["encoder"]["kind"] == "hf" and critic.config["use_prompt"]
    scores = critic.distance(["hello there", "你好"], ["en|single|dialogue|short", "zh|single|dialogue|short"],
                             prompts=["hi", "你好"])
    assert scores.shape == (2,) and (scores >= 0).all()
    with pytest.raises(UserError, match="pass prompts"):
        critic.distance(["hello"], ["en|single|dialogue|short"])
