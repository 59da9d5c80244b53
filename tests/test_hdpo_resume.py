"""`hdpo` under faults: resume after a kill, settings checked on --resume, SIGTERM, runs shorter than an epoch."""

import json
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from sft_project import cli, copy_project, read_curve
from test_sft import signal_at_step, snapshot

ARGS = ["hdpo", "--variant", "dpo", "--set", "hdpo.optim.checkpoint_every_n_steps=3"]


@pytest.fixture(scope="module")
def paired_project(paired_tiny):
    return paired_tiny  # shared by the session: every test that writes copies it first


def test_resume_after_a_kill_reproduces_the_uninterrupted_losses(paired_project, tmp_path):
    straight = copy_project(paired_project, tmp_path / "straight")
    cli(ARGS, straight)
    expected = read_curve(straight / "reports/hdpo/dpo/train.csv")

    killed = copy_project(paired_project, tmp_path / "killed")
    step, _ = signal_at_step(ARGS, killed, killed / "checkpoints/hdpo/dpo/last.ckpt", 6, signal.SIGKILL)
    assert 6 <= step < len(expected), "the run should be killed mid-training"
    assert not (killed / "models/hdpo/dpo").exists()  # a killed stage leaves no half-written model
    cli([*ARGS, "--resume"], killed)
    resumed = read_curve(killed / "reports/hdpo/dpo/train.csv")
    assert [row[0] for row in resumed] == [row[0] for row in expected]  # the whole curve, no step twice
    np.testing.assert_allclose(np.array(resumed)[:, 1:], np.array(expected)[:, 1:], rtol=1e-5, atol=1e-6)
    a = AutoModelForCausalLM.from_pretrained(straight / "models/hdpo/dpo").state_dict()
    b = AutoModelForCausalLM.from_pretrained(killed / "models/hdpo/dpo").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    report, full = (json.loads((p / "reports/hdpo/dpo.json").read_text()) for p in (killed, straight))
    assert report["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    assert report["val_reward_accuracy_per_bucket"] == full["val_reward_accuracy_per_bucket"]


def test_resume_refuses_other_settings_or_pairs_and_sigterm_exits_143(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    result = cli([*ARGS, "--resume"], project, check=False)
    assert result.returncode == 2 and "hdpo --resume: no checkpoint" in result.stderr
    cli([*ARGS, "--set", "hdpo.optim.max_steps=3"], project)
    before = snapshot(project)
    result = cli([*ARGS, "--set", "hdpo.optim.max_steps=3", "--resume", "--beta", "0.2"], project, check=False)
    assert result.returncode == 2 and "hdpo.variants.dpo.beta: 0.1 -> 0.2" in result.stderr and "Traceback" not in result.stderr
    train = project / "data/pairs/train.parquet"
    pq.write_table(pq.read_table(train).slice(1), train)  # one pair fewer
    result = cli([*ARGS, "--set", "hdpo.optim.max_steps=3", "--resume"], project, check=False)
    assert result.returncode == 2 and "input data/pairs/train.parquet changed" in result.stderr, result.stderr
    train.write_bytes(before[train.relative_to(project)])
    assert snapshot(project) == before
    # SIGTERM during a fresh run: exit 143, the previous model and reports as they were
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        step, status = signal_at_step(ARGS, project, project / "checkpoints/hdpo/dpo/last.ckpt", 6, signal.SIGTERM,
                                      stderr)
    assert step >= 6 and status == 143, log.read_text()
    assert "hdpo@dpo: stopped by SIGTERM" in log.read_text()
    for folder in ("models/hdpo", "reports/hdpo"):
        assert snapshot(project / folder) == {p.relative_to(folder): data for p, data in before.items()
                                              if p.is_relative_to(folder)}


def test_a_run_shorter_than_an_epoch_validates_its_final_weights(paired_project, tmp_path):
    project = copy_project(paired_project, tmp_path / "p")
    result = cli(["hdpo", "--variant", "dpo", "--set", "hdpo.optim.max_steps=2"], project)
    report = json.loads((project / "reports/hdpo/dpo.json").read_text())
    assert report["steps"] == 2 and report["val_reward_accuracy_per_bucket"]
    assert 0 <= report["val_reward_accuracy"] <= 1 and 0 < report["val_loss"] < 5
    assert "nan" not in result.stderr.split("hdpo@dpo:")[1]


ROUNDS = ["hdpo", "--variant", "dpo", "--set", "hdpo.rounds=2", "--set", "hdpo.prompts_per_round=48",
          "--set", "hdpo.refit_critic=true", "--set", "hdpo.optim.checkpoint_every_n_steps=3", "--set", "hdpo.val_prompts=0"]


@pytest.fixture(scope="module")
def two_rounds(paired_project, tmp_path_factory):
    """An uninterrupted 2-round run (read only: a test that writes copies it)."""
    project = copy_project(paired_project, tmp_path_factory.mktemp("rounds") / "p")
    cli(ROUNDS, project)
    return project


def test_round_two_trains_on_fresh_samples_of_the_round_one_policy_scored_by_a_refit_critic(two_rounds):
    from transformers import AutoTokenizer

    from polyalign.critic.model import Critic
    from polyalign.generation import generate, prompt_budgets, read_train_answers
    from polyalign.modeling.prompts import PromptRenderer
    from polyalign.modeling.scoring import score_examples
    from polyalign.params import load_params
    from polyalign.training.preference import pair_examples

    project = two_rounds
    report = json.loads((project / "reports/hdpo/dpo.json").read_text())
    assert report["rounds"] == 2 and [r["round"] for r in report["per_round"]] == [1, 2]
    sampling = report["per_round"][1]["sampling"]
    assert sampling["prompts"] == 48 and sampling["pairs"] > 0
    assert 0 < sampling["critic_refit"]["model_samples"] <= 48 * 2  # the policy's non-empty samples
    assert report["steps"] == sum(r["steps"] for r in report["per_round"]) and report["selected_round"] == 2
    steps = [row[0] for row in read_curve(project / "reports/hdpo/dpo/train.csv")]
    assert steps == list(range(1, report["steps"] + 1))  # one step axis across the rounds

    ckpts = project / "checkpoints/hdpo/dpo"
    rows = pq.read_table(ckpts / "round2-pairs.parquet").to_pylist()
    params = load_params(project / "params.yaml")
    tokenizer = AutoTokenizer.from_pretrained(ckpts / "round1-model")
    renderer = PromptRenderer.from_params(tokenizer, params.prompt)
    train = pq.read_table(project / "data/buckets/train.parquet").to_pylist()
    chosen = np.sort(np.random.default_rng(params.seed + 2).choice(len(train), 48, replace=False))
    records = [train[i] for i in chosen]
    answers, buckets = read_train_answers(project / "data/buckets/train.parquet")
    budgets = prompt_budgets(params.generation, tokenizer, answers, buckets, [r["bucket_id"] for r in records],
                             [len(renderer.prompt_ids(r)) for r in records], 128)

    def samples_of(folder):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        g = params.generation
        drawn = generate(model, tokenizer, [renderer.prompt_ids(r) for r in records], stop_ids=renderer.eot_ids,
                         max_new_tokens=budgets, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                         repetition_penalty=g.repetition_penalty, num_samples=params.pairs.k,
                         batch_size=g.batch_size, seed=params.seed + 2000, progress=False)
        return {r["id"]: [list(s.ids) for s in outs] for r, outs in zip(records, drawn)}, model

    policy, round1 = samples_of(ckpts / "round1-model")
    sft, _ = samples_of(project / "models/sft/bucket")
    assert rows and all(list(r["rejected_ids"]) in policy[r["id"]] for r in rows)  # the round-1 policy's samples
    assert any(list(r["rejected_ids"]) not in sft[r["id"]] for r in rows)  # not the SFT model's
    # scored by the refit critic, not the one in models/critic
    original = Critic.load(project / "models/critic").score_responses([r["rejected"] for r in rows], rows)
    assert not np.allclose(original, [r["d_rejected"] for r in rows], atol=1e-4)
    # and the round's reference is that policy
    expected = score_examples(round1, [pair_examples(renderer, r)[1] for r in rows], tokenizer.pad_token_id)
    np.testing.assert_allclose([r["ref_rejected_logp"] for r in rows], expected, rtol=1e-4, atol=1e-4)


def test_resume_mid_round_after_a_kill_reproduces_the_uninterrupted_rounds(paired_project, two_rounds, tmp_path):
    straight = two_rounds
    expected = read_curve(straight / "reports/hdpo/dpo/train.csv")
    round1 = json.loads((straight / "reports/hdpo/dpo.json").read_text())["per_round"][0]["steps"]

    killed = copy_project(paired_project, tmp_path / "killed")
    step, _ = signal_at_step(ROUNDS, killed, killed / "checkpoints/hdpo/dpo/round2/last.ckpt", 3, signal.SIGKILL)
    assert 3 <= step < len(expected) - round1, "the run should be killed in the middle of round 2"
    assert not (killed / "models/hdpo/dpo").exists()
    cli([*ROUNDS, "--resume"], killed)
    resumed = read_curve(killed / "reports/hdpo/dpo/train.csv")
    assert [row[0] for row in resumed] == [row[0] for row in expected]
    np.testing.assert_allclose(np.array(resumed)[:, 1:], np.array(expected)[:, 1:], rtol=1e-5, atol=1e-6)
    a = AutoModelForCausalLM.from_pretrained(straight / "models/hdpo/dpo").state_dict()
    b = AutoModelForCausalLM.from_pretrained(killed / "models/hdpo/dpo").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    result = cli([*ROUNDS, "--resume", "--beta", "0.3"], killed, check=False)
    assert result.returncode == 2 and "hdpo.variants.dpo.beta: 0.1 -> 0.3" in result.stderr
