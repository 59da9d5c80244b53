"""Model folders: every folder a stage writes carries a SHA-256 manifest; loading verifies it and takes weights
from safetensors only, so a modified, truncated or pickled file is refused with the command that rewrites it."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from polyalign.cli import app
from polyalign.critic.model import Critic
from polyalign.errors import UserError
from polyalign.modeling.model import create_scratch_model, load_model_dir, load_tokenizer, save_model
from polyalign.params import load_params
from polyalign.stages import evaluate
from polyalign.training.preference import PreferenceModule
from polyalign.training.sft import SFTModule
from sft_project import copy_project, initialised_project

runner = CliRunner()


@pytest.fixture(scope="module")
def base_project(tmp_path_factory):
    """prepare -> bucketize -> init on a tiny bilingual corpus."""
    root = tmp_path_factory.mktemp("model_files")
    initialised_project(root)
    return root


@pytest.fixture
def project(base_project, tmp_path, monkeypatch):
    root = copy_project(base_project, tmp_path / "p")
    monkeypatch.chdir(root)  # messages show paths relative to the project, as a user runs the CLI
    return root


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_model_folder_a_stage_writes_has_a_manifest_of_all_its_files(project):
    base = project / "models/base"
    assert manifest(base) == {p.name: sha256(p) for p in base.iterdir() if p.name != "manifest.json"}
    assert "model.safetensors" in manifest(base)
    params = load_params(project / "params.yaml")
    tokenizer = load_tokenizer(base)
    sft = SFTModule(str(base), params.sft, "none", ["b"], total_steps=1, optim=params.sft.optim)
    sft.configure_model()
    sft.export(project / "models/sft/bucket", tokenizer)
    dpo = PreferenceModule(str(base), params.hdpo, params.hdpo.variants["dpo"], ["b"], total_steps=1)
    dpo.configure_model()
    dpo.export(project / "models/hdpo/dpo", tokenizer)
    for folder in (project / "models/sft/bucket", project / "models/hdpo/dpo"):
        assert set(manifest(folder)) == set(manifest(base))
        model, _ = load_model_dir(folder)
        assert torch.equal(model.state_dict()["model.embed_tokens.weight"],
                           load_file(base / "model.safetensors")["model.embed_tokens.weight"])


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def add_pickle(folder):
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")


def swap_for_pickle(folder):
    """Weights as pytorch_model.bin and a manifest rewritten to match: checksums alone would accept it."""
    add_pickle(folder)
    (folder / "model.safetensors").unlink()
    (folder / "manifest.json").write_text(json.dumps({p.name: sha256(p) for p in folder.iterdir()
                                                     if p.name != "manifest.json"}))


TAMPERING = {
    "flipped weights": (lambda f: flip_last_byte(f / "model.safetensors"),
                        "model.safetensors does not match its checksum"),
    "truncated weights": (lambda f: truncate(f / "model.safetensors"), "model.safetensors does not match its checksum"),
    "edited tokenizer": (lambda f: flip_last_byte(f / "tokenizer.json"), "tokenizer.json does not match its checksum"),
    "pickle beside": (add_pickle, "unexpected or missing files ['pytorch_model.bin'] (pytorch_model.bin: pickled"),
    "pickle instead": (swap_for_pickle, "holds pickled weights ['pytorch_model.bin']"),
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "has no manifest.json"),
    "corrupt manifest": (lambda f: (f / "manifest.json").write_text('{"config.json": '), "manifest.json is corrupt"),
    "no config": (lambda f: (f / "config.json").unlink(), "not found in"),
}


@pytest.mark.parametrize("where", ["base", "sft/bucket", "hdpo/dpo"])
@pytest.mark.parametrize("damage", list(TAMPERING))
def test_a_tampered_or_pickled_model_folder_is_refused_naming_the_command_that_rewrites_it(project, where, damage):
    folder = project / "models" / where
    if where != "base":
        shutil.copytree(project / "models/base", folder)
    tamper, message = TAMPERING[damage]
    tamper(folder)
    rerun = {"base": "polyalign init", "sft/bucket": "polyalign sft --variant bucket",
             "hdpo/dpo": "polyalign hdpo --variant dpo"}[where]
    with pytest.raises(UserError) as caught:
        load_model_dir(folder)
    assert message in str(caught.value) and f"`{rerun}`" in str(caught.value)
    assert f"models/{where}" in str(caught.value)
    with pytest.raises(UserError, match="models/"):  # the weights alone (what sft and hdpo load) are checked too
        sft_params = load_params(project / "params.yaml").sft
        SFTModule(str(folder), sft_params, "none", ["b"], 1, sft_params.optim).configure_model()


def test_sft_on_a_tampered_base_model_exits_2_and_writes_no_model(project):
    flip_last_byte(project / "models/base/model.safetensors")
    result = runner.invoke(app, ["sft", "--variant", "bucket"])
    assert result.exit_code == 2, result.output
    assert "models/base/model.safetensors does not match its checksum" in result.output
    assert "rerun `polyalign init`" in result.output and "Traceback" not in result.output
    assert not (project / "models/sft").exists() and not (project / "reports/sft").exists()


def pickled_model(project, tmp_path):
    """A user's pretrained model saved the old way: pytorch_model.bin, no safetensors."""
    local = tmp_path / "pickled-model"
    shutil.copytree(project / "models/base", local)
    add_pickle(local)
    (local / "model.safetensors").unlink()
    (local / "manifest.json").unlink()
    return local


def test_a_pretrained_model_with_pickled_weights_needs_allow_pickle(project, tmp_path):
    local = pickled_model(project, tmp_path)
    before = manifest(project / "models/base")
    args = ["init", "--set", "model.source=pretrained", "--set", f"model.name_or_path={local}"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "only as pickles (pytorch_model.bin)" in refused.output and "model.allow_pickle: true" in refused.output
    assert manifest(project / "models/base") == before

    accepted = runner.invoke(app, [*args, "--set", "model.allow_pickle=true"])
    assert accepted.exit_code == 0, accepted.output
    base = project / "models/base"
    assert "model.safetensors" in manifest(base) and not (base / "pytorch_model.bin").exists()
    model, _ = load_model_dir(base)  # the stage's own output is safetensors with a manifest again
    assert torch.equal(model.state_dict()["model.norm.weight"],
                       torch.load(local / "pytorch_model.bin", weights_only=True)["model.norm.weight"])


def test_a_corrupt_critic_manifest_is_refused(project):
    critic = project / "models/critic"
    critic.mkdir()
    (critic / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match=r"models/critic/manifest.json is corrupt .*rerun `polyalign fit-critic`"):
        Critic.load(critic)


def test_a_corrupt_evaluation_cache_entry_is_a_miss_and_is_rewritten(project):
    params = load_params(project / "params.yaml", ["evaluate.generation.max_new_tokens=3"])
    records = evaluate.read_split(params, project)[:3]
    train = {"answers": ["hello there"] * 3, "buckets": [r["bucket_id"] for r in records]}
    assert evaluate.generations("base", records, train, params, project)["cache"] == "miss"
    (entry,) = (project / "cache/eval/base").iterdir()
    truncate(entry)
    again = evaluate.generations("base", records, train, params, project)
    assert again["cache"] == "miss" and json.loads(entry.read_text())["key"]
    assert evaluate.generations("base", records, train, params, project)["cache"] == "hit"


def test_attention_dropout_is_on_in_sft_and_off_in_preference_training(project):
    """`model.attention_dropout` reaches the scratch model's config, so SFT trains with it; the preference module
    turns it off, since its log-probs are compared with a reference computed without dropout."""
    params = load_params(project / "params.yaml", ["model.attention_dropout=0.5"])
    tokenizer = load_tokenizer(project / "models/base")
    folder = project / "models/dropout"
    save_model(create_scratch_model(tokenizer, params.model, seed=0), tokenizer, folder)
    assert json.loads((folder / "config.json").read_text())["attention_dropout"] == 0.5
    ids = torch.tensor([tokenizer("hello there, how are you today?")["input_ids"]])

    def two_passes(model):
        return [model(input_ids=ids).logits for _ in range(2)]

    sft = SFTModule(str(folder), params.sft, "none", ["b"], total_steps=1, optim=params.sft.optim)
    sft.configure_model()
    first, second = two_passes(sft.model)
    assert not torch.equal(first, second)  # dropout on: two passes differ
    dpo = PreferenceModule(str(folder), params.hdpo, params.hdpo.variants["dpo"], ["b"], total_steps=1)
    dpo.configure_model()
    assert dpo.model.training
    first, second = two_passes(dpo.model)
    assert torch.equal(first, second)
