"""Every DVC stage depends on exactly the project code it runs: a change to any module a stage imports (directly or
through other modules) reruns that stage, and no stage lists code it never imports. Stale outputs come from the
first kind of gap (e.g. `pairs` once missed the prompt renderer, so precomputed reference log-probs outlived a
template change); needless reruns from the second."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "polyalign"
# Plumbing every stage imports that does not change what a stage computes: the CLI, parameter parsing (its values
# are DVC params), errors, logging, atomic writes and checksum manifests.
PLUMBING = {"__init__.py", "__main__.py", "cli.py", "errors.py", "log.py", "io.py", "params.py", "manifest.py"}


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The project modules one file imports, anywhere in it (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "polyalign" and (found := module_file(name)) is not None:
                out.add(found)
    return out


def is_plumbing(path: Path) -> bool:
    return path.relative_to(PACKAGE).as_posix() in PLUMBING


def closure(start: Path) -> set[Path]:
    """The project modules a stage runs: its own file and everything it imports, transitively (not through the
    plumbing, whose imports serve parameter validation)."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen or is_plumbing(path):
            continue
        seen.add(path)
        todo += imported_files(path) - seen
    return seen


def stages() -> list[tuple[str, str, list[str]]]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    bodies = {name: stage.get("do", stage) for name, stage in spec.items()}  # a foreach stage's body is under `do`
    return [(name, body["cmd"].split()[1], [d for d in body["deps"] if d.startswith("src/")])
            for name, body in bodies.items()]


@pytest.mark.parametrize(("stage", "command", "deps"), stages(), ids=[s[0] for s in stages()])
def test_a_stage_depends_on_exactly_the_code_it_imports(stage, command, deps):
    entry = PACKAGE / "stages" / f"{command.replace('-', '_')}.py"
    used = closure(entry)
    dep_paths = [ROOT / d for d in deps]

    def covered(path: Path) -> bool:
        return any(path == d or d in path.parents for d in dep_paths)

    missing = sorted(p.relative_to(ROOT).as_posix() for p in used if not covered(p))
    assert not missing, f"dvc.yaml stage {stage} imports {missing} but does not depend on them"
    unused = [d.relative_to(ROOT).as_posix() for d in dep_paths
              if not any(p == d or d in p.parents for p in used)]
    assert not unused, f"dvc.yaml stage {stage} depends on {unused} but never imports them"


def test_each_hdpo_stage_depends_on_the_sft_model_its_variant_starts_from():
    """dvc.yaml cannot read `init` out of params.yaml, so it lists each variant's start itself: they must agree."""
    listed = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["hdpo"]["foreach"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert listed == {name: v["init"].removeprefix("sft@") for name, v in params["hdpo"]["variants"].items()}


def test_each_sft_stage_depends_on_its_start_and_its_data():
    """The same for sft: `init` names the start (base or another variant's model) and `data: best_of_k` adds
    the pairs stage's output."""
    listed = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["sft"]["foreach"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    best_of_k, human = "${paths.data_pairs}/best_of_k.parquet", "${paths.buckets}/train.parquet"
    expected = {name: {"start": "${paths.models}/" + ("base" if v["init"] == "base" else
                                                      "sft/" + v["init"].removeprefix("sft@")),
                       "data": best_of_k if v["data"] == "best_of_k" else human}
                for name, v in params["sft"]["variants"].items()}
    assert listed == expected


def test_the_pairs_stage_depends_on_the_policy_it_samples_and_evaluate_on_every_method():
    """dvc.yaml cannot turn a model's name (`sft@bucket`) into its folder, so it lists them: they must agree."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))

    def folder(name: str) -> str:
        stage, _, variant = name.partition("@")
        return "${paths.models}/" + (stage if stage == "base" else f"{stage}/{variant}")

    models = [d for d in spec["pairs"]["deps"] if d.startswith("${paths.models}/sft")]
    assert models == [folder(params["pairs"]["policy"])]
    listed = {d for d in spec["evaluate"]["deps"] if d.startswith("${paths.models}/") and "critic" not in d}
    assert listed >= {folder(m) for m in params["evaluate"]["methods"]}
