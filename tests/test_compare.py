"""`polyalign compare` on hand-made experiment records (as `dvc exp show --json` writes them): means, standard
deviations, t-intervals and sign counts checked against hand computation, and the refusals."""

import csv
import io
import json
import math

import matplotlib.image
import pytest
import yaml

from polyalign.errors import UserError
from polyalign.evaluation import compare, experiments
from polyalign.params import Params
from sft_project import cli

T_975_2 = 4.302652729911275  # Student's t quantile 0.975 with 2 degrees of freedom
METHODS = ["sft@global", "sft@bucket"]


def metrics(bng: dict[str, float], split: str = "test", rows: str = "r1") -> dict:
    """A reports/metrics.json: every headline metric 0.5 except BNG; F1 a tenth of BNG."""
    out = {"split": split, "rows_sha256": rows}
    for method, value in bng.items():
        out[method] = {m: 0.5 for m, _, _ in compare.compared()} | {"bng_macro": value, "f1_macro": value / 10}
    return out


def record(name: str, seed: int, bng: dict[str, float], stamp: str, **changes) -> dict:
    params = Params(seed=seed).model_dump(mode="json")
    params["evaluate"].update(methods=METHODS, compare=[["sft@bucket", "sft@global"]])
    for key, value in changes.items():
        *path, field = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[field] = value
    return {"rev": f"{abs(hash(name)):040x}"[:40], "name": name, "error": None, "experiments": None,
            "data": {"timestamp": stamp, "params": {"params.yaml": {"data": params}},
                     "metrics": {"reports/metrics.json": {"data": bng}}}}


def shown(*runs: dict, baseline_metrics: dict | None = None) -> list[dict]:
    """The commit (without an evaluation unless given) and its experiments, as `dvc exp show --json` lists them."""
    base = record("main", 42, baseline_metrics or {}, "2026-12-01T00:00:00")
    if baseline_metrics is None:
        base["data"]["metrics"] = {}
    base["experiments"] = [{"revs": [r], "executor": {"state": "success"}, "name": r["name"]} for r in runs]
    return [{"rev": "workspace", "name": None, "data": base["data"], "error": None, "experiments": None}, base]


def grid() -> list[dict]:
    """3 seeds x 2 configurations (hdpo.optim.epochs 2 and 3)."""
    runs = []
    for i, seed in enumerate((1, 2, 3)):
        runs.append(record(f"a{seed}", seed, metrics({"sft@bucket": [0.8, 0.9, 1.0][i],
                                                      "sft@global": [1.0, 1.0, 1.3][i]}), f"2026-12-01T01:0{i}:00"))
        runs.append(record(f"b{seed}", seed, metrics({"sft@bucket": [2.0, 2.0, 2.0][i],
                                                      "sft@global": [1.0, 3.0, 2.0][i]}), f"2026-12-01T02:0{i}:00",
                           **{"hdpo.optim.epochs": 3}))
    return shown(*runs)


def test_means_standard_deviations_t_intervals_and_sign_counts_match_hand_computation():
    found, skipped = experiments.runs(grid())
    assert len(found) == 6 and skipped == {"no evaluation": 1}  # the commit was never evaluated
    assert compare.compare(found, split="test")["left_out"] == {}  # nothing left out, nothing to report
    result = compare.compare(found)
    assert result["split"] == "test" and [g["seeds"] for g in result["groups"]] == [[1, 2, 3], [1, 2, 3]]
    default, beta = sorted(result["groups"], key=lambda g: g["label"] != 'hdpo.optim.epochs=2')
    assert default["label"] == "hdpo.optim.epochs=2" and beta["label"] == "hdpo.optim.epochs=3"
    a1 = next(r for r in found if r.name == "a1")
    assert default["id"] == Params.model_validate(a1.params).configuration_id()  # the W&B group of its runs
    half = T_975_2 * 0.1 / math.sqrt(3)
    s = default["methods"]["sft@bucket"]["summary"]["bng_macro"]
    assert (s["n"], s["interval"]) == (3, "t over seeds")
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1)
    assert (s["low"], s["high"]) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    (c,) = default["comparisons"]
    d = c["metrics"]["bng_macro"]  # bucket - global per seed: -0.2, -0.1, -0.3
    assert (c["a"], c["b"]) == ("sft@bucket", "sft@global")
    assert d["differences"] == pytest.approx([-0.2, -0.1, -0.3])
    assert d["mean"] == pytest.approx(-0.2) and d["std"] == pytest.approx(0.1)
    assert (d["low"], d["high"]) == (pytest.approx(-0.2 - half), pytest.approx(-0.2 + half))
    assert (d["a_better"], d["a_worse"], d["ties"]) == (3, 0, 0)  # lower BNG is better
    f1 = c["metrics"]["f1_macro"]  # higher F1 is better: a tenth of the same differences, so worse in all
    assert (f1["a_better"], f1["a_worse"]) == (0, 3)
    e = beta["comparisons"][0]["metrics"]["bng_macro"]  # 2 - 1, 2 - 3, 2 - 2
    assert (e["a_better"], e["a_worse"], e["ties"]) == (1, 1, 1) and e["mean"] == pytest.approx(0.0)
    assert e["std"] == pytest.approx(1.0)


def test_five_seeds_get_the_bootstrap_over_seeds_one_seed_no_interval():
    assert compare.over_seeds([1.0, 2.0, 3.0, 4.0, 5.0])["interval"] == "bootstrap over seeds"
    boot = compare.over_seeds([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= boot["low"] < 3.0 < boot["high"] <= 5.0
    one = compare.over_seeds([0.7, math.nan])
    assert (one["n"], one["mean"], one["interval"]) == (1, 0.7, "none") and math.isnan(one["low"])


def test_mixed_splits_are_refused_unless_one_is_chosen_and_other_rows_always():
    runs = [record("t1", 1, metrics({"sft@bucket": 1, "sft@global": 1}), "2026-12-01T01:00:00"),
            record("v1", 2, metrics({"sft@bucket": 1, "sft@global": 1}, split="val"), "2026-12-01T01:01:00"),
            record("v2", 3, metrics({"sft@bucket": 2, "sft@global": 1}, split="val"), "2026-12-01T01:02:00")]
    found, _ = experiments.runs(shown(*runs))
    with pytest.raises(UserError, match="different splits .*--split val or --split test"):
        compare.compare(found)
    val = compare.compare(found, split="val")
    assert val["split"] == "val" and val["groups"][0]["seeds"] == [2, 3]
    assert val["left_out"] == {"other split than val": 1}
    other_rows = record("v3", 4, metrics({"sft@bucket": 1, "sft@global": 1}, split="val", rows="r2"),
                        "2026-12-01T01:03:00")
    found, _ = experiments.runs(shown(*runs, other_rows))
    with pytest.raises(UserError, match="different val rows"):
        compare.compare(found, split="val")


def test_a_seed_run_twice_counts_once_and_named_experiments_restrict_the_comparison():
    runs = [record("old", 1, metrics({"sft@bucket": 5, "sft@global": 1}), "2026-12-01T01:00:00"),
            record("new", 1, metrics({"sft@bucket": 1, "sft@global": 1}), "2026-12-01T02:00:00"),
            record("two", 2, metrics({"sft@bucket": 3, "sft@global": 1}), "2026-12-01T02:00:00")]
    found, _ = experiments.runs(shown(*runs))
    result = compare.compare(found)
    assert [r["name"] for r in result["groups"][0]["runs"]] == ["new", "two"]
    assert result["left_out"] == {"a seed run again (the newest counts)": 1}
    only = compare.compare(experiments.select(found, ["old"]))
    assert only["groups"][0]["methods"]["sft@bucket"]["summary"]["bng_macro"]["mean"] == 5
    with pytest.raises(UserError, match="no finished experiment named nope"):
        experiments.select(found, ["nope"])


def test_unfinished_experiments_are_counted_not_compared():
    done = record("done", 1, metrics({"sft@bucket": 1, "sft@global": 1}), "2026-12-01T01:00:00")
    queued = record("queued", 2, {}, "2026-12-01T01:00:00")
    data = shown(done, queued)
    data[1]["experiments"][1]["executor"]["state"] = "queued"
    found, skipped = experiments.runs(data)
    assert [r.name for r in found] == ["done"] and skipped["experiment queued"] == 1


def test_cli_writes_markdown_json_csv_and_png_from_a_dvc_json_file(tmp_path):
    path = tmp_path / "exps.json"
    path.write_text(json.dumps(grid()), encoding="utf-8")
    result = cli(["compare", "--from-json", str(path)], tmp_path)
    assert "compare: 2 configuration(s) on the test split" in result.stderr
    md = (tmp_path / "reports/compare.md").read_text(encoding="utf-8")
    assert md.startswith("# Methods over seeds — test split") and "### sft@bucket − sft@global, paired by seed" in md
    assert "| better in 3/3 | -0.200, -0.100, -0.300 |" in md and "0.900 ± 0.100 [0.652, 1.148]" in md
    assert "| worse in 3/3 |" in md and "better in 1, worse in 1, tied in 1 of 3" in md
    saved = json.loads((tmp_path / "reports/compare.json").read_text(encoding="utf-8"))
    assert len(saved["groups"]) == 2
    rows = list(csv.reader((tmp_path / "reports/compare.csv").open(encoding="utf-8")))
    assert rows[0][:5] == ["label", "configuration", "method", "seeds", "f1_macro"] and len(rows) == 5
    assert rows[1][0] == "hdpo.optim.epochs=2 · sft@global" and float(rows[2][rows[0].index("bng_macro")]) == 0.9
    assert matplotlib.image.imread(tmp_path / "reports/compare.png").ndim == 3
    bad = cli(["compare", "--from-json", str(path), "--split", "dev"], tmp_path, check=False)
    assert bad.returncode == 2 and "use val or test" in bad.stderr and "Traceback" not in bad.stderr


def test_a_label_with_commas_and_quotes_survives_the_csv():
    result = compare.compare(experiments.runs(grid())[0])
    result["groups"][0]["label"] = 'data.preset="paper-en", hdpo.optim.epochs=3'
    rows = list(csv.reader(io.StringIO(compare.table_csv(result))))
    assert rows[1][0] == 'data.preset="paper-en", hdpo.optim.epochs=3 · sft@global' and len(rows[1]) == len(rows[0])


def test_each_configuration_is_labelled_by_what_sets_it_apart_from_the_others():
    flats = {"ref": {"pairs.chosen": "nearest", "alpha": 0.05, "rounds": 1, "per_round": 0, "beta": 0.1},
             "human": {"pairs.chosen": "human", "alpha": 0.05, "rounds": 1, "per_round": 0, "beta": 0.1},
             "alpha": {"pairs.chosen": "nearest", "alpha": 1.0, "rounds": 1, "per_round": 0, "beta": 0.1},
             "rounds": {"pairs.chosen": "nearest", "alpha": 0.05, "rounds": 3, "per_round": 512, "beta": 0.1}}
    labels = compare._labels(flats)
    assert labels == {"ref": "the shared settings", "human": 'pairs.chosen="human"', "alpha": "alpha=1.0",
                      "rounds": "per_round=512, rounds=3"}
    two = compare._labels({"a": {"beta": 0.1, "seed_free": 1}, "b": {"beta": 0.3, "seed_free": 1}})
    assert two == {"a": "beta=0.1", "b": "beta=0.3"}  # no value shared by a majority: both named
    assert compare._labels({"a": {"beta": 0.1}}) == {"a": "all runs"}


def test_project_folders_run_outside_dvc_compare_like_experiments(tmp_path):
    """`--run FOLDER` (stages run by hand or on other machines): each folder's params.yaml and metrics are one
    run, grouped and summarised exactly as the same runs read from DVC's record."""
    folders = []
    for entry in grid()[1]["experiments"]:
        record_ = entry["revs"][0]
        folder = tmp_path / record_["name"]
        params = record_["data"]["params"]["params.yaml"]["data"]
        (folder / "reports").mkdir(parents=True)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
        (folder / "reports/metrics.json").write_text(json.dumps(record_["data"]["metrics"]["reports/metrics.json"]
                                                                ["data"]), encoding="utf-8")
        folders.append(folder)
    from_folders = compare.compare(experiments.read_folders(folders))
    from_dvc = compare.compare(experiments.runs(grid())[0])
    assert [g["methods"] for g in from_folders["groups"]] == [g["methods"] for g in from_dvc["groups"]]
    assert [g["comparisons"] for g in from_folders["groups"]] == [g["comparisons"] for g in from_dvc["groups"]]

    project = tmp_path / "project"
    project.mkdir()
    result = cli(["compare", *[a for f in folders for a in ("--run", str(f))]], project)
    assert "compare: 2 configuration(s) on the test split, seeds per configuration: " in result.stderr
    md = (project / "reports/compare.md").read_text(encoding="utf-8")
    assert "0.900 ± 0.100 [0.652, 1.148]" in md and str(folders[0]) in md

    (folders[0] / "reports/metrics.json").unlink()
    missing = cli(["compare", "--run", str(folders[0])], project, check=False)
    assert missing.returncode == 2 and "metrics.json not found (run `polyalign evaluate` there)" in missing.stderr
    nothing = cli(["compare", "--run", str(tmp_path / "nope")], project, check=False)
    assert nothing.returncode == 2 and "not a folder" in nothing.stderr and "Traceback" not in nothing.stderr
    both = cli(["compare", "--run", str(folders[1]), "--from-json", "x.json"], project, check=False)
    assert both.returncode == 2 and "not both" in both.stderr
