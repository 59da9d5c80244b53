"""`init` and `sft`: real Lightning training of a tiny Qwen3-style model on bilingual data."""

import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import unicodedata

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from polyalign.errors import UserError, sigterm_stops
from polyalign.generation import generate
from polyalign.modeling.prompts import PromptRenderer
from polyalign.modeling.tokenizer import decode_response
from polyalign.params import OptimParams, load_params
from polyalign.text import CJK_RE
from polyalign.training.data import SFTDataModule
from polyalign.training.losses import per_example_loss
from polyalign.training.trainer import Terminated, build_trainer, weight_average
from sft_project import cli, copy_project, initialised_project, read_curve, write_tiny_params


@pytest.fixture(scope="module")
def base_project(tmp_path_factory):
    """prepare -> bucketize -> init on a tiny bilingual corpus."""
    root = tmp_path_factory.mktemp("sft_base")
    initialised_project(root)
    return root


@pytest.fixture
def project(base_project, tmp_path):
    return copy_project(base_project, tmp_path / "p")


def val_loss(model_dir, root, params):
    data = SFTDataModule(root / "data/buckets", model_dir, params.prompt, params.sft, params.sft.variants["global"],
                         params.seed)
    data.setup()
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            losses, _ = per_example_loss(model(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).logits, batch["labels"])
            total, n = total + float(losses.sum()), n + len(losses)
    return total / n


def bits_per_char(model_dir, root, params):
    """The val answers' summed response NLL in bits per character they cover, computed outside the SFT module."""
    data = SFTDataModule(root / "data/buckets", model_dir, params.prompt, params.sft, params.sft.variants["global"],
                         params.seed)
    data.setup()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nats = 0.0
    with torch.no_grad():
        for batch in data.val_dataloader():
            losses, n = per_example_loss(model(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).logits, batch["labels"])
            nats += float((losses * n).sum())
    answers = pq.read_table(root / "data/buckets/val.parquet").column("human_answer").to_pylist()
    chars = sum(len(tokenizer.decode([t for t in labels if t >= 0 and t != tokenizer.eos_token_id])) if cut else len(a)
                for a, labels, cut in zip(answers, data.val["labels"], data.val["truncated"]))
    return nats / math.log(2) / chars


def test_training_lowers_val_loss_changes_parameters_and_exports_plain_transformers(project):
    cli(["sft", "--variant", "bucket", "--set", "sft.optim.epochs=3"], project)
    params = load_params(project / "params.yaml")
    base, trained = project / "models/base", project / "models/sft/bucket"
    assert val_loss(trained, project, params) < val_loss(base, project, params) - 0.5
    report = json.loads((project / "reports/sft/bucket.json").read_text())
    assert report["val_bits_per_char"] == pytest.approx(bits_per_char(trained, project, params), rel=1e-4)
    assert report["val_bits_per_char"] < bits_per_char(base, project, params)
    before = AutoModelForCausalLM.from_pretrained(base).state_dict()
    after = AutoModelForCausalLM.from_pretrained(trained).state_dict()
    assert set(before) == set(after)
    assert all(not torch.equal(before[k], after[k]) for k in after if k.endswith("proj.weight"))
    # the export is exactly what was trained: the last checkpoint's weights give the same logits
    ckpt = torch.load(project / "checkpoints/sft/bucket/last.ckpt", map_location="cpu", weights_only=True)
    from_ckpt = AutoModelForCausalLM.from_pretrained(base)
    from_ckpt.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    exported = AutoModelForCausalLM.from_pretrained(trained)
    ids = AutoTokenizer.from_pretrained(trained)("你好, how are you?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(from_ckpt.eval()(ids).logits, exported.eval()(ids).logits, atol=1e-6)
    assert report["balance"] == "sampler" and report["val_loss"] < 10 and report["tokens_per_s"] > 0
    assert {b.split("|")[0] for b in report["val_loss_per_bucket"]} == {"en", "zh"}
    assert (project / "reports/sft/bucket/train_loss.csv").read_text().startswith("step,loss\n")
    # training answers that prompt.max_tokens cuts are counted, as the renderer sees them
    renderer = PromptRenderer(AutoTokenizer.from_pretrained(base), params.prompt.conditioning,
                              params.prompt.max_prompt_tokens, params.prompt.max_tokens)
    train = pq.read_table(project / "data/buckets/train.parquet").to_pylist()
    cut = sum(renderer.example(r)["truncated"] for r in train)
    assert report["truncated_train_examples"] == cut
    assert report["truncated_train_share"] == pytest.approx(cut / len(train), abs=1e-4)


def signal_at_step(args, cwd, ckpt, min_step, signum, stderr=None):
    """Run `polyalign args` in `cwd` and send it `signum` once `ckpt` holds at least `min_step` optimizer steps;
    returns the step the checkpoint held and the exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "polyalign", *args], cwd=cwd,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                            stderr=stderr or subprocess.DEVNULL)
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
            except Exception:  # noqa: BLE001 - being written
                step = 0
            if step >= min_step:
                proc.send_signal(signum)
                break
        time.sleep(0.05)
    return step, proc.wait()


def test_resume_after_a_kill_reproduces_the_uninterrupted_losses(base_project, tmp_path):
    args = ["sft", "--variant", "global", "--set", "sft.optim.epochs=2", "--set", "sft.optim.checkpoint_every_n_steps=3"]
    straight = copy_project(base_project, tmp_path / "straight")
    cli(args, straight)
    expected = read_curve(straight / "reports/sft/global/train_loss.csv")

    killed = copy_project(base_project, tmp_path / "killed")
    step, _ = signal_at_step(args, killed, killed / "checkpoints/sft/global/last.ckpt", 6, signal.SIGKILL)
    assert 6 <= step < len(expected), "the run should be killed mid-training"
    assert not (killed / "models/sft/global").exists()  # a killed stage leaves no half-written model
    cli([*args, "--resume"], killed)
    resumed = read_curve(killed / "reports/sft/global/train_loss.csv")
    assert [s for s, _ in resumed] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in expected], rtol=1e-5, atol=1e-6)
    a = AutoModelForCausalLM.from_pretrained(straight / "models/sft/global").state_dict()
    b = AutoModelForCausalLM.from_pretrained(killed / "models/sft/global").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def snapshot(folder):
    """Every file under `folder` (hidden ones too) with its bytes: what "unchanged" means."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigterm_exits_143_and_leaves_the_previous_outputs(project, tmp_path):
    cli(["sft", "--variant", "global", "--max-steps", "3"], project)
    outputs = {folder: snapshot(project / folder) for folder in ("models/sft", "reports/sft")}
    args = ["sft", "--variant", "global", "--set", "sft.optim.epochs=3", "--set", "sft.optim.checkpoint_every_n_steps=3"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a scheduler or `timeout` stops the run mid-training
        step, status = signal_at_step(args, project, project / "checkpoints/sft/global/last.ckpt", 6, signal.SIGTERM,
                                      stderr)
    err = log.read_text()
    assert step >= 6 and status == 143, err  # Lightning alone exits 0: a wrapper would see success
    assert "sft@global: stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert {folder: snapshot(project / folder) for folder in outputs} == outputs  # no new, half or temporary file


class _SignalsItself(L.LightningModule):
    """Sends its own process a signal in its second training step."""

    def __init__(self, signum):
        super().__init__()
        self.signum, self.layer = signum, torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            os.kill(os.getpid(), self.signum)
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_during_any_training_stage_is_never_a_success(tmp_path, signum, expected):
    # fit-critic, like sft and hdpo, trains with build_trainer's trainer; Lightning turns SIGTERM into exit 0
    # and Ctrl-C into exit 1, which the CLI would neither report nor tell from a success or a failure
    params = load_params(write_tiny_params(tmp_path))
    trainer = build_trainer(params, tmp_path, "critic", "default",
                            optim=OptimParams(gradient_clip_val=0, checkpoint_every_n_steps=10**9), val_every_n_steps=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 2)), batch_size=2)
    previous = signal.getsignal(signal.SIGINT)
    # as in a CLI process: Python's own Ctrl-C handler (an earlier test in this worker may have left another)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(expected) as caught:
            trainer.fit(_SignalsItself(signum), loader)
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores Ctrl-C after the first
    assert trainer.global_step in (1, 2)  # stopped where the signal came (of 8 steps), not at the end
    if expected is Terminated:
        assert caught.value.exit_code == 143 and str(caught.value).startswith("critic: stopped by SIGTERM")


def test_sigterm_inside_library_code_that_catches_every_exception_still_stops_the_stage():
    """`inspect.getfullargspec` (Lightning calls it on its hooks) turns any Exception raised inside it into
    "TypeError: unsupported callable"; a SIGTERM that lands there must still be `Terminated` (exit 143)."""
    class SignalledWhileInspected:
        @property
        def __signature__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside getfullargspec's `try`
            return inspect.Signature()

        def __call__(self):
            pass

    with pytest.raises(Terminated, match="sft@global: stopped by SIGTERM"), sigterm_stops("sft@global"):
        inspect.getfullargspec(SignalledWhileInspected())


def test_a_fresh_run_checks_its_inputs_first_and_resume_refuses_other_settings(project):
    args = ["sft", "--variant", "global", "--max-steps", "4"]
    cli(args, project)
    ckpt = project / "checkpoints/sft/global/last.ckpt"
    saved = ckpt.read_bytes()
    # a fresh run whose input is missing fails before it removes the previous run's checkpoints
    val = project / "data/buckets/val.parquet"
    val_bytes = val.read_bytes()
    val.unlink()
    result = cli(args, project, check=False)
    assert result.returncode == 2 and "val.parquet not found" in result.stderr
    assert ckpt.read_bytes() == saved
    val.write_bytes(val_bytes)
    # --resume with other settings, or other inputs, names what changed and touches nothing
    before = snapshot(project)
    pq.write_table(pq.read_table(val).slice(1), val)  # one validation example fewer
    result = cli([*args, "--resume", "--lr", "0.001", "--set", "prompt.conditioning=none"], project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "sft.optim.lr: 0.005 -> 0.001" in result.stderr and "prompt.conditioning: 'observable' -> 'none'" in result.stderr
    assert "input data/buckets/val.parquet changed" in result.stderr and "--resume-anyway" in result.stderr
    assert "sft.optim.max_steps" not in result.stderr and "input models/base" not in result.stderr  # only what changed
    val.write_bytes(val_bytes)
    assert snapshot(project) == before
    # --resume-anyway continues; its checkpoints record the new settings, so a plain --resume accepts them
    cli([*args, "--resume-anyway", "--lr", "0.001"], project)
    cli([*args, "--resume", "--lr", "0.001"], project)
    # an unreadable checkpoint is named, without a traceback
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    result = cli([*args, "--resume", "--lr", "0.001"], project, check=False)
    assert result.returncode == 2 and "cannot read the checkpoint" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_shorter_than_an_epoch_validates_its_final_weights(project):
    result = cli(["sft", "--variant", "global", "--max-steps", "3"], project)
    report = json.loads((project / "reports/sft/global.json").read_text())
    params = load_params(project / "params.yaml")
    assert report["steps"] == 3
    assert report["val_loss"] == pytest.approx(val_loss(project / "models/sft/global", project, params), rel=1e-5)
    assert np.isfinite(report["val_loss_macro"]) and report["val_loss_per_bucket"]
    assert read_curve(project / "reports/sft/global/val_loss.csv")[-1][0] == 3
    assert "nan" not in result.stderr.split("sft@global:")[1]


def test_weight_averaging_exports_the_moving_average_without_changing_training(project):
    """`sft.optim.ema_decay`: the exported model is the exponential moving average of the weights (also the
    checkpoint's weights); the training itself, its losses, is the same as without it; 0 turns it off."""
    exported, losses = {}, {}
    for decay in (0.0, 0.5):
        cli(["sft", "--variant", "global", "--max-steps", "4", "--set", f"sft.optim.ema_decay={decay}"], project)
        ckpt = torch.load(project / "checkpoints/sft/global/last.ckpt", map_location="cpu", weights_only=True)
        exported[decay] = AutoModelForCausalLM.from_pretrained(project / "models/sft/global").state_dict()
        saved = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
        assert all(torch.equal(exported[decay][k], saved[k]) for k in exported[decay])
        assert ("averaging_state" in ckpt) == bool(decay)
        losses[decay] = read_curve(project / "reports/sft/global/train_loss.csv")
    assert losses[0.5] == losses[0.0]
    assert any(not torch.equal(exported[0.5][k], exported[0.0][k]) for k in exported[0.0])
    with pytest.raises(UserError, match="weight averaging does not work with the 'fsdp' strategy"):
        weight_average(0.99, "fsdp", "sft.optim.ema_decay")


def test_a_diverged_run_is_refused_and_writes_no_nan(project):
    result = cli(["sft", "--variant", "global", "--max-steps", "4", "--lr", "1e30", "--set", "sft.optim.gradient_clip_val=0"],
                 project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "sft@global: training diverged: the train loss is nan at step 4" in result.stderr
    assert not (project / "models/sft/global").exists() and not (project / "reports/sft").exists()


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(base_project, tmp_path):
    common = ["sft", "--variant", "bucket", "--set", "sft.optim.epochs=1"]
    one = copy_project(base_project, tmp_path / "one")
    cli(["init", "--set", "model.attention_dropout=0.0"], one)  # dropout masks differ between 1 and 2 processes
    cli([*common, "--batch-size", "8"], one)
    two = copy_project(base_project, tmp_path / "two")
    cli(["init", "--set", "model.attention_dropout=0.0"], two)
    cli([*common, "--batch-size", "4", "--set", "trainer.strategy=ddp", "--set", "trainer.devices=2"], two)
    single = read_curve(one / "reports/sft/bucket/train_loss.csv")
    ddp = read_curve(two / "reports/sft/bucket/train_loss.csv")
    report = json.loads((two / "reports/sft/bucket.json").read_text())
    assert report["world_size"] == 2
    if report["train_examples"] % 8 == 1:  # a last global batch of 1 example cannot be split over 2 ranks
        single = single[:-1]
    assert [s for s, _ in ddp] == [s for s, _ in single]
    # same examples per global step; only the order of floating-point reductions differs
    np.testing.assert_allclose([v for _, v in ddp], [v for _, v in single], rtol=2e-4)


def test_lora_adapter_is_merged_into_plain_weights(project):
    cli(["sft", "--variant", "global", "--max-steps", "6", "--set", "sft.optim.lora.enabled=true",
         "--set", "sft.optim.lora.target_modules=[q_proj, v_proj]"], project)
    out = project / "models/sft/global"
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = AutoModelForCausalLM.from_pretrained(project / "models/base").state_dict()
    assert set(merged) == set(base)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


def test_wandb_offline_writes_a_local_run_with_params_and_metrics_and_no_network(project):
    cli(["sft", "--variant", "global", "--max-steps", "4", "--set", "logging.wandb.mode=offline"], project,
        WANDB_MODE=None, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
        WANDB_BASE_URL="http://127.0.0.1:9", NO_PROXY="")
    runs = list((project / "logs/wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # an offline run keeps config and history in its transaction log until `wandb sync`
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"min_bucket_size", b"conditioning", b"train/loss", b"val/loss", b"sft-global"):
        assert key in log, key
    assert runs[0].name.startswith("offline-run-")


def test_sampler_and_loss_weight_variants_run(project):
    # the only SFT variant: whatever names another (pairs.policy, each hdpo variant's init) must name it
    params = write_tiny_params(project, sft={"optim": {"epochs": 1, "lr": 0.005, "max_steps": 5}, "batch_size": 8,
                                             "variants": {"weighted": {"balance": "loss_weight", "alpha": 0.0}}},
                               pairs={"policy": "sft@weighted"},
                               hdpo={"variants": {"dpo": {"init": "sft@weighted"}}})
    assert params.is_file()
    cli(["sft", "--variant", "weighted"], project)
    report = json.loads((project / "reports/sft/weighted.json").read_text())
    assert report["balance"] == "loss_weight" and report["steps"] == 5


@pytest.mark.parametrize(("args", "message"), [
    (["sft", "--variant", "nope"], "no variant 'nope'; params.yaml defines: "),
    (["sft", "--set", "trainer.devices=64"], "trainer.devices=64, but this machine has only"),
    (["sft", "--variant", "global", "--resume"], "no checkpoint"),
    (["init", "--set", "model.source=pretrained", "--set", "model.name_or_path=/nonexistent/model"],
     "cannot load model.name_or_path='/nonexistent/model'"),
])
def test_bad_training_input_gives_a_clear_error_and_writes_nothing(project, args, message):
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    result = cli(args, project, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def test_pretrained_mode_loads_a_local_save_pretrained_directory(project, tmp_path):
    # a "downloaded" model: any save_pretrained directory goes through the real Auto* code path
    local = tmp_path / "my-model"
    AutoModelForCausalLM.from_pretrained(project / "models/base").save_pretrained(local)
    AutoTokenizer.from_pretrained(project / "models/base").save_pretrained(local)
    cli(["init", "--set", "model.source=pretrained", "--set", f"model.name_or_path={local}"], project)
    a = AutoModelForCausalLM.from_pretrained(local).state_dict()
    b = AutoModelForCausalLM.from_pretrained(project / "models/base").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((project / "reports/init.json").read_text())["source"] == "pretrained"

    (local / "chat_template.jinja").unlink()
    result = cli(["init", "--set", "model.source=pretrained", "--set", f"model.name_or_path={local}"], project,
                 check=False)
    assert result.returncode == 2 and "has no chat template" in result.stderr
    cli(["init", "--set", "model.source=pretrained", "--set", f"model.name_or_path={local}",
         "--set", "model.chat_template=chatml"], project)
    assert (project / "models/base/chat_template.jinja").is_file()


def test_a_trained_model_never_generates_broken_or_control_characters(project):
    cli(["sft", "--variant", "global", "--set", "sft.optim.epochs=2"], project)
    params = load_params(project / "params.yaml")
    model = AutoModelForCausalLM.from_pretrained(project / "models/sft/global")
    tokenizer = AutoTokenizer.from_pretrained(project / "models/sft/global")
    renderer = PromptRenderer(tokenizer, params.prompt.conditioning, params.prompt.max_prompt_tokens,
                              params.prompt.max_tokens)
    records = pq.read_table(project / "data/buckets/test.parquet").to_pylist()[:48]
    samples = generate(model, tokenizer, [renderer.prompt_ids(r) for r in records], stop_ids=renderer.eot_ids,
                       max_new_tokens=32, temperature=1.5, num_samples=2, progress=False)  # hot: rare tokens too
    texts = [decode_response(tokenizer, s.ids, s.truncated) for row in samples for s in row]
    assert sum(map(len, texts)) > 300, texts  # really generated text, in both languages
    assert any(CJK_RE.search(t) for t in texts) and any(re.search("[A-Za-z]", t) for t in texts)
    broken = [t for t in texts if "\ufffd" in t or any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in t)]
    assert not broken


def test_scratch_tokenizer_keeps_chinese_per_character(base_project):
    tokenizer = AutoTokenizer.from_pretrained(base_project / "models/base")
    report = json.loads((base_project / "reports/init.json").read_text())
    assert report["tokens_with_several_cjk_characters"] == 0
    text = "我们今天去公园散步吧"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) >= len(text)  # never several characters in one token
    assert all(len(tokenizer.decode([i]).strip()) <= 1 for i in ids if i != tokenizer.unk_token_id)
    train = pq.read_table(base_project / "data/buckets/train.parquet")
    assert set(train["language"].to_pylist()) == {"en", "zh"}


def test_select_val_bng_exports_the_validation_with_the_most_human_like_samples(project):
    from polyalign.evaluation.validation import naturalness_probe
    from polyalign.modeling.prompts import PromptRenderer

    cli(["sft", "--variant", "bucket", "--set", "sft.optim.epochs=3", "--set", "sft.val_prompts=24",
         "--set", "sft.select=val_bng"], project)
    report = json.loads((project / "reports/sft/bucket.json").read_text())
    history = report["val_history"]
    assert len(history) == 3 and all(math.isfinite(h["bng_macro"]) and h["response_length"] >= 0 for h in history)
    best = min(history, key=lambda h: h["bng_macro"])
    assert (report["select"], report["selected_step"], report["selected_score"]) == ("val_bng", best["step"],
                                                                                     best["bng_macro"])
    assert report["val_loss"] == pytest.approx(best["loss"])  # the report describes the exported weights
    params = load_params(project / "params.yaml")
    tokenizer = AutoTokenizer.from_pretrained(project / "models/sft/bucket")
    renderer = PromptRenderer(tokenizer, params.prompt.conditioning, params.prompt.max_prompt_tokens,
                              params.prompt.max_tokens)
    probe = naturalness_probe(params, project, 24, project / "models/base", tokenizer, renderer, "sft.val_prompts")
    exported = AutoModelForCausalLM.from_pretrained(project / "models/sft/bucket").eval()
    assert probe(exported)["bng_macro"] == pytest.approx(best["bng_macro"], rel=1e-9)
    result = cli(["sft", "--set", "sft.select=val_bng"], project, check=False)
    assert result.returncode == 2 and "set sft.val_prompts > 0" in result.stderr
