"""Every class of bad input and fault, through the real CLI (`python -m polyalign` in a subprocess) on a tiny project
that has been through `pairs`: the exit status, no traceback, the message's key words, and that no output changed.

One row per class: (name, setup, command, exit status, key words). `setup(root)` damages the copied project
(or writes the bad input); the outputs (data/, models/, reports/, checkpoints/) are compared before and after the
command. The README's "Bad input" section lists the same classes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyalign.params import load_params
from sft_project import cli, write_tiny_params

OUTPUTS = ("data", "models", "reports", "checkpoints")
WANDB_OFF = ["--set", "logging.wandb.mode=disabled"]


@pytest.fixture(scope="module")
def paired(paired_tiny, tmp_path_factory):
    from polyalign.stages import pairs

    root = tmp_path_factory.mktemp("bad_input") / "p"
    shutil.copytree(paired_tiny, root, ignore=shutil.ignore_patterns("logs"))  # with checkpoints: resume classes
    write_tiny_params(root, generation={"max_new_tokens": 8}, pairs={"max_prompts": 24})
    pairs.run(load_params(root / "params.yaml"), root)
    (root / "data/raw").mkdir(parents=True, exist_ok=True)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for top in OUTPUTS if (root / top).exists()
            for p in sorted((root / top).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- setups


def write(relative: str, data: str | bytes):
    def setup(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return setup


def source(kind: str, path: str, **extra) -> list[str]:
    entry = json.dumps([{"kind": kind, "path": path, **extra}])
    return ["prepare", "--set", f"data.sources={entry}"]


def flip_byte(relative: str):
    def setup(root: Path) -> None:
        path = root / relative
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    return setup


def truncate(relative: str, keep: int = 200):
    def setup(root: Path) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes()[:keep])
    return setup


def remove(relative: str):
    def setup(root: Path) -> None:
        path = root / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return setup


def add_pickle(root: Path) -> None:
    shutil.copy(root / "models/base/model.safetensors", root / "models/base/pytorch_model.bin")


def duplicate_key_params(root: Path) -> None:
    text = (root / "params.yaml").read_text(encoding="utf-8")
    (root / "params.yaml").write_text(text + "seed: 7\n", encoding="utf-8")


def nothing(root: Path) -> None:
    pass


def alpaca(rows: list[str]) -> str:
    return "".join(r + "\n" for r in rows)


GOOD = json.dumps({"instruction": "Hi?", "output": "Hello there."})
PREFERENCE = {"question": "Q?", "chosen": "A human answer.", "rejected": "no", "language": "en", "track": "single",
              "family": "qa", "length_bin": "short"}

CASES = [
    # --- parameters
    ("invalid value", nothing, ["params", "--set", "data.on_invalid=skipp"], 2, ["data.on_invalid = 'skipp'"]),
    ("unknown key", nothing, ["params", "--set", "buckets.min_bucket_sise=3"], 2, ["unknown key", "min_bucket_size"]),
    ("malformed --set", nothing, ["params", "--set", "seed"], 2, ["expected section.key=value"]),
    ("non-finite number", nothing, ["params", "--set", "hdpo.variants.hdpo.beta=.inf"], 2,
     ["hdpo.variants.hdpo.beta", "finite"]),
    ("duplicate key in params.yaml", duplicate_key_params, ["params"], 2, ["duplicate key 'seed'"]),
    ("seed out of range", nothing, ["params", "--set", "seed=-1"], 2, ["seed = -1"]),
    ("--params is a folder", write("folder/x", "x"), ["params", "--params", "folder"], 2, ["is a folder"]),
    ("--params not UTF-8", write("latin1.yaml", "seed: 1\n# d\xe9j\xe0\n".encode("latin-1")),
     ["params", "--params", "latin1.yaml"], 2, ["not valid UTF-8"]),
    ("greedy with several samples", nothing, ["pairs", "--set", "generation.temperature=0"], 2,
     ["generation.temperature = 0", "pairs.k = 2"]),
    ("another loss's knob", nothing, ["hdpo", "--set", "hdpo.variants.hdpo.loss=ipo", "--set",
                                      "hdpo.variants.hdpo.cdpo_eps=0.2"], 2, ["cdpo_eps applies to loss cdpo only"]),
    ("reference-free loss with a reference", nothing, ["hdpo", "--set", "hdpo.variants.hdpo.loss=simpo"], 2,
     ["hdpo.variants.hdpo.reference", "simpo is reference-free"]),
    ("fixed budget without tokens", nothing, ["pairs", "--set", "generation.budget=fixed", "--set",
                                                        "generation.max_new_tokens=0"], 2,
     ["max_new_tokens >= 1"]),
    ("empty split", nothing, ["prepare", "--set", "data.split_ratios={train: 0.9, val: 0.0, test: 0.1}"], 2,
     ["val split is empty", "data.split_ratios"]),
    # --- data sources
    ("unknown source kind", nothing, ["prepare", "--set", "data.sources=[{kind: csv, path: x.csv}]"], 2, ["'csv'"]),
    ("missing file", nothing, source("alpaca", "data/raw/missing.json"), 2, ["file not found", "missing.json"]),
    ("folder as a path", write("data/raw/folder/x", "x"), source("alpaca", "data/raw/folder"), 2,
     ["is a folder, not a file"]),
    ("broken JSONL line", write("data/raw/x.jsonl", alpaca([GOOD, '{"output": "a", "input": "b"'])),
     source("alpaca", "data/raw/x.jsonl"), 2, ["x.jsonl:2", "not valid JSON at column"]),
    ("wrong field type", write("data/raw/x.jsonl", alpaca([GOOD, json.dumps({"instruction": "Q", "output": 3})])),
     source("alpaca", "data/raw/x.jsonl"), 2, ["x.jsonl:2", "'output'"]),
    ("JSONL not UTF-8", write("data/raw/x.jsonl", GOOD.encode() + b'\n{"instruction": "Q", "output": "\xff"}\n'),
     source("alpaca", "data/raw/x.jsonl"), 2, ["x.jsonl:2", "not UTF-8"]),
    ("JSON nested too deeply", write("data/raw/deep.json", "[" * 100_000 + "]" * 100_000),
     source("alpaca", "data/raw/deep.json"), 2, ["deep.json", "nested too deeply"]),
    ("hf row with a list where text belongs",
     write("data/raw/dolly.jsonl", json.dumps({"instruction": "Q?", "response": ["a", "b"]}) + "\n"),
     ["prepare", "--set",
      'data.sources=[{kind: hf, dataset: dolly, data_files: {train: data/raw/dolly.jsonl}}]'], 2,
     ["field 'response'"]),
    # --- stage order and stage outputs
    ("stage before its inputs", remove("data/pairs"), ["hdpo"], 2, ["not found", "polyalign pairs"]),
    ("tampered critic", flip_byte("models/critic/model.safetensors"), ["pairs"], 2, ["checksum"]),
    ("corrupt critic manifest", write("models/critic/manifest.json", "{not json"), ["pairs"], 2,
     ["models/critic/manifest.json", "fit-critic"]),
    ("tampered base weights", flip_byte("models/base/model.safetensors"), ["sft", "--variant", "global"], 2,
     ["models/base/model.safetensors", "polyalign init"]),
    ("truncated SFT weights", truncate("models/sft/bucket/model.safetensors"), ["pairs"], 2,
     ["models/sft/bucket", "polyalign sft --variant bucket"]),
    ("pickle in a model folder", add_pickle, ["sft", "--variant", "global"], 2, ["pytorch_model.bin", "pickle"]),
    ("model folder without manifest", remove("models/base/manifest.json"), ["sft", "--variant", "global"], 2,
     ["manifest.json"]),
    ("corrupt parquet", truncate("data/buckets/train.parquet"), ["init"], 2,
     ["data/buckets/train.parquet", "polyalign bucketize"]),
    ("stale reference log-probs", nothing, ["hdpo", "--set", "prompt.conditioning=none"], 2,
     ["conditioning: 'observable' -> 'none'", "rerun `polyalign pairs`"]),
    ("no GPU for a GPU setting", nothing, ["pairs", "--set", "trainer.accelerator=gpu"], 2, ["no CUDA GPU"]),
    # --- preference files
    ("preference file with an unknown language", write("data/raw/p.jsonl", json.dumps({**PREFERENCE, "language": "fr"})),
     ["pairs", "--set", "pairs.preference_file=data/raw/p.jsonl"], 2, ["p.jsonl:1", "field 'language'"]),
    ("preference file with a list as text", write("data/raw/p.jsonl", json.dumps({**PREFERENCE, "chosen": ["a"]})),
     ["pairs", "--set", "pairs.preference_file=data/raw/p.jsonl"], 2, ["p.jsonl:1", "field 'chosen'"]),
    # --- training runs and checkpoints
    ("corrupt checkpoint", truncate("checkpoints/sft/bucket/last.ckpt", 2000),
     ["sft", "--variant", "bucket", "--resume"], 2, ["last.ckpt"]),
    ("resume with changed parameters", nothing, ["sft", "--variant", "bucket", "--resume", "--lr", "0.001"], 2,
     ["sft.optim.lr", "--resume-anyway"]),
    ("hdpo resume without a checkpoint", nothing, ["hdpo", "--resume"], 2, ["no checkpoint"]),
    ("fresh sft with a missing input", remove("data/buckets/val.parquet"), ["sft", "--variant", "bucket"], 2,
     ["val.parquet"]),
    ("diverged training", nothing, ["sft", "--variant", "global", "--max-steps", "2", "--lr", "1e30", "--set",
                                    "sft.optim.gradient_clip_val=0"], 2, ["training diverged"]),
]


@pytest.mark.parametrize(("name", "setup", "args", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_class(paired, tmp_path, name, setup, args, status, words):
    root = tmp_path / "p"
    shutil.copytree(paired, root, ignore=shutil.ignore_patterns("logs"))
    setup(root)
    before = snapshot(root)
    result = cli([*args, *WANDB_OFF] if args[0] != "params" else args, root, check=False)
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode == status, output
    assert "Traceback" not in output
    for word in words:
        assert word in output, f"{word!r} not in: {output}"
    after = snapshot(root)
    # a run may leave a checkpoint of its own (resumable progress, not an output); it may not touch others
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                     and not (k not in before and k.startswith("checkpoints/")))
    assert not changed, f"outputs changed: {changed}"


def test_the_classes_are_listed_in_the_readme():
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name, *_ in CASES if name not in readme]
    assert not missing, f"README's bad-input table lacks {missing}"
    assert len(CASES) >= 30


def test_sigterm_ends_any_stage_with_143_and_no_output(paired, tmp_path):
    """A stage outside training (here `evaluate`, which generates for a while) that a scheduler stops with SIGTERM
    exits 143, never 0, and leaves its previous outputs."""
    root = tmp_path / "p"
    shutil.copytree(paired, root, ignore=shutil.ignore_patterns("logs"))
    before = snapshot(root)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, "-m", "polyalign", "evaluate", "--set", "evaluate.methods=[base]",
                                "--set", "evaluate.compare=[]", "--set", "evaluate.bootstrap_resamples=100000",
                                *WANDB_OFF], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6.0)  # past the imports, inside the stage
    assert process.poll() is None, "evaluate ended before the signal"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in " ".join(err.split()) and "Traceback" not in err
    assert snapshot(root) == before
