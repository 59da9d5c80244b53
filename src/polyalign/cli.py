"""`polyalign`: one command per pipeline stage. Each command only loads `params.yaml`, applies the command-line
overrides, validates them and calls the stage, so a stage run by hand does exactly what `dvc repro` runs."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from polyalign.errors import Terminated, UserError, describe, sigterm_stops, use_paths
from polyalign.errors import shown as shown_path
from polyalign.log import console, quiet_libraries
from polyalign.params import Params, dump_params, load_params, set_flags
from polyalign.threads import limit_for_queue

app = typer.Typer(
    name="polyalign",
    help="Post-train language models toward the human response distribution of each interaction context "
    "(language, track, family, length). Every command reads params.yaml in the current folder; options "
    "override it for one run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsFile = Annotated[
    list[Path], typer.Option("--params", help="parameters file; without one the built-in defaults are used. "
                             "Repeat it to lay files over the first, e.g. --params params.yaml --params "
                             "configs/qwen2.5-0.5b.yaml")
]
Overrides = Annotated[
    list[str],
    typer.Option("--set", "-s", metavar="SECTION.KEY=VALUE",
                 help="override one parameter for this run, e.g. --set buckets.min_bucket_size=50 (repeatable)"),
]


_options = {"debug": False, "verbose": False}


@app.callback()
def options(
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="POLYALIGN_DEBUG", help="show the traceback of an error (also: POLYALIGN_DEBUG=1)")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", envvar="POLYALIGN_VERBOSE",
        help="show everything the libraries print (Lightning, transformers, datasets, W&B): the same as "
        "--set logging.level=debug (also POLYALIGN_VERBOSE=1)")] = False,
) -> None:
    _options["debug"] = debug
    _options["verbose"] = verbose


def _setup(params_file: list[Path], overrides: list[str]) -> Params:
    if _options["verbose"]:
        overrides = [*overrides, "logging.level=debug"]
    params = load_params(params_file, overrides)
    use_paths(params.paths)  # error messages name the commands that write this project's folders
    debug = params.logging.level == "debug"
    # the libraries' INFO lines describe themselves; the project's own logger keeps the level params ask for
    logging.basicConfig(level="DEBUG" if debug else "WARNING", format="%(name)s: %(message)s")
    logging.getLogger("polyalign").setLevel(params.logging.level.upper())
    quiet_libraries(verbose=debug)
    limit_for_queue()  # experiments that `dvc queue start -j N` runs side by side share the cores
    return params


def _fail(message: str, err: BaseException, code: int) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if _options["debug"]:
        traceback.print_exception(err, file=sys.stderr)
    return typer.Exit(code)


def _run(action: Callable[[], object]) -> None:
    """Run a command. A user mistake or a fault the user can fix (a corrupt file, a full disk) ends with one
    message and exit status 2, anything unexpected with one line and status 1; never a traceback, unless
    --debug asks for it."""
    try:
        with sigterm_stops("polyalign"):  # a stage may narrow the label (and hint) while it trains
            action()
    except (UserError, Terminated) as err:
        raise _fail(str(err), err, err.exit_code) from None
    except KeyboardInterrupt:
        console.print("interrupted: no output was written", style="yellow")
        raise typer.Exit(130) from None
    except Exception as err:  # noqa: BLE001 - the last resort: one line instead of a traceback
        message = describe(err)
        if message is not None:
            raise _fail(message, err, 2) from None
        lines = str(err).strip().splitlines()
        raise _fail(f"unexpected {type(err).__name__}{': ' + lines[0] if lines else ''} (rerun with "
                    "`polyalign --debug ...` or POLYALIGN_DEBUG=1 to see the traceback, and please report it)",
                    err, 1) from None


@app.command()
def params(
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006 - typer needs a literal default
    dvc_flags: Annotated[Path | None, typer.Option(
        "--dvc-flags", metavar="FILE", help="print the values FILE sets as -S flags, e.g. "
        "dvc exp run $(polyalign params --dvc-flags configs/qwen2.5-0.5b.yaml)")] = None,
) -> None:
    """Print the effective, validated parameters (params.yaml plus overrides) as YAML; with --dvc-flags, the
    values a file (a recipe) sets as `-S` flags for `dvc exp run`."""
    if dvc_flags is not None:
        _run(lambda: sys.stdout.write(" ".join(set_flags(dvc_flags)) + "\n"))
        return
    _run(lambda: sys.stdout.write(dump_params(load_params(params_file, overrides))))


@app.command()
def prepare(
    on_invalid: Annotated[str | None, typer.Option(help="error | skip: what a malformed input row does")] = None,
    split_seed: Annotated[int | None, typer.Option(
        help="data.split_seed: seed of the hashed train/val/test split")] = None,
    preset: Annotated[str | None, typer.Option(
        help="data.preset: default (data.sources) | paper-en | paper-zh | paper-all (the paper's hub corpora)")] = None,
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Read the data sources (params: data.sources, or a data.preset), clean, deduplicate and split them into
    data/prepared/{train,val,test}.parquet; counts and every dropped record go to reports/prepare.json."""
    named = [f"data.on_invalid={on_invalid}"] * (on_invalid is not None)
    named += [f"data.split_seed={split_seed}"] * (split_seed is not None)
    named += [f"data.preset={preset}"] * (preset is not None)

    def action() -> None:
        from polyalign.stages import prepare as stage

        stage.run(_setup(params_file, [*named, *overrides]))

    _run(action)


@app.command()
def bucketize(
    min_bucket_size: Annotated[int | None, typer.Option(help="smaller buckets back off to a parent")] = None,
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Assign buckets (language|track|family|length_bin), compute bilingual response features and build the
    human reference distributions from the train split into data/buckets/; report in reports/buckets.*."""
    named = [f"buckets.min_bucket_size={min_bucket_size}"] * (min_bucket_size is not None)

    def action() -> None:
        from polyalign.stages import bucketize as stage

        stage.run(_setup(params_file, [*named, *overrides]))

    _run(action)


@app.command()
def init(
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Create the base model in models/base/ (params: model): train a tokenizer and a small Qwen3-style LM from
    config (source: scratch, the CPU default), or load any Hugging Face causal LM (source: pretrained)."""

    def action() -> None:
        from polyalign.stages import init as stage

        stage.run(_setup(params_file, overrides))

    _run(action)


@app.command()
def sft(
    variant: Annotated[str, typer.Option(help="a key of sft.variants in params.yaml (global, bucket, ...)")] = "bucket",
    resume: Annotated[bool, typer.Option("--resume", help="continue from checkpoints/sft/<variant>/last.ckpt")] = False,
    resume_anyway: Annotated[bool, typer.Option(
        "--resume-anyway", help="--resume even from a checkpoint that other settings or inputs wrote")] = False,
    epochs: Annotated[int | None, typer.Option(help="sft.optim.epochs")] = None,
    max_steps: Annotated[int | None, typer.Option(help="sft.optim.max_steps (-1: all epochs)")] = None,
    lr: Annotated[float | None, typer.Option(help="sft.optim.lr")] = None,
    batch_size: Annotated[int | None, typer.Option(help="sft.batch_size (per device)")] = None,
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Bucket-Aware SFT (balance: sampler or loss_weight) or the global-SFT baseline (balance: none) from
    models/base/ into models/sft/<variant>/, with reports/sft/<variant>.json and loss curves."""
    named = {"sft.optim.epochs": epochs, "sft.optim.max_steps": max_steps, "sft.optim.lr": lr,
             "sft.batch_size": batch_size}

    def action() -> None:
        from polyalign.stages import sft as stage

        chosen = [f"{key}={value}" for key, value in named.items() if value is not None]
        stage.run(_setup(params_file, [*chosen, *overrides]), variant, resume=resume, resume_anyway=resume_anyway)

    _run(action)


@app.command("fit-critic")
def fit_critic(
    encoder: Annotated[str | None, typer.Option(help="critic.encoder: ngram | hf")] = None,
    epochs: Annotated[int | None, typer.Option(help="critic.optim.epochs")] = None,
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Train the bucket-conditioned critic of distance to human support into models/critic/ and validate it
    (reports/critic.json); a collapsed critic is refused and nothing is saved."""
    named = [f"critic.encoder={encoder}"] * (encoder is not None) + [f"critic.optim.epochs={epochs}"] * (epochs is not None)

    def action() -> None:
        from polyalign.stages import fit_critic as stage

        stage.run(_setup(params_file, [*named, *overrides]))

    _run(action)


@app.command()
def pairs(
    k: Annotated[int | None, typer.Option(help="pairs.k: samples per prompt")] = None,
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Preference pairs into data/pairs/ from samples of the pairs.policy SFT model (default sft@bucket): chosen
    and rejected by pairs.chosen and pairs.rejected, with critic distances, weights and reference log-probs."""
    named = [f"pairs.k={k}"] * (k is not None)

    def action() -> None:
        from polyalign.stages import pairs as stage

        stage.run(_setup(params_file, [*named, *overrides]))

    _run(action)


@app.command()
def hdpo(
    variant: Annotated[str, typer.Option(help="a key of hdpo.variants (dpo, hdpo, ...)")] = "hdpo",
    beta: Annotated[float | None, typer.Option(help="the base loss's beta of this variant")] = None,
    hdpo_gamma: Annotated[float | None, typer.Option(help="the critic offset's weight of this variant")] = None,
    hdpo_lam: Annotated[float | None, typer.Option(help="the distribution regulariser's weight of this variant")] = None,
    alpha: Annotated[float | None, typer.Option(help="NLL anchor weight of this variant")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from checkpoints/hdpo/<variant>/last.ckpt")] = False,
    resume_anyway: Annotated[bool, typer.Option(
        "--resume-anyway", help="--resume even from a checkpoint that other settings or inputs wrote")] = False,
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Preference optimisation of one variant of hdpo.variants (dpo, hdpo, hdpo_simpo, ...: a base loss with
    HDPO's extras) from its SFT model on data/pairs/ into models/hdpo/<variant>/, with reports/hdpo/<variant>.json."""
    named = [f"hdpo.variants.{variant}.{key}={value}" for key, value in
             (("beta", beta), ("hdpo_gamma", hdpo_gamma), ("hdpo_lam", hdpo_lam), ("alpha", alpha)) if value is not None]

    def action() -> None:
        from polyalign.stages import hdpo as stage

        known = load_params(params_file, overrides).hdpo.variants  # --hdpo-gamma must not invent a variant
        if variant not in known:
            raise UserError(f"hdpo: no variant {variant!r}; params.yaml defines: {', '.join(known)}")
        stage.run(_setup(params_file, [*named, *overrides]), variant, resume=resume, resume_anyway=resume_anyway)

    _run(action)


@app.command()
def evaluate(
    max_prompts: Annotated[int | None, typer.Option(help="evaluate.max_prompts (0: the full test split)")] = None,
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Generate with every method of evaluate.methods on the same test prompts and decoding, score naturalness,
    faithfulness and utility per bucket and slice with bootstrap intervals: reports/eval/, reports/metrics.json."""
    named = [f"evaluate.max_prompts={max_prompts}"] * (max_prompts is not None)

    def action() -> None:
        from polyalign.stages import evaluate as stage

        stage.run(_setup(params_file, [*named, *overrides]))

    _run(action)


@app.command()
def report(
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Rebuild reports/eval/report.md, its plots, reports/metrics.json and the per-bucket CSVs from the JSON files
    in reports/eval/ alone (no model is loaded)."""

    def action() -> None:
        from polyalign.evaluation import report as builder

        params = _setup(params_file, overrides)
        reports = Path(params.paths.reports)
        builder.build(reports / "eval", reports, params.evaluate.compare)
        console.print(f"report: {reports / 'eval' / 'report.md'}")

    _run(action)


@app.command()
def compare(
    exp: Annotated[list[str], typer.Option(
        "--exp", metavar="NAME", help="compare only these experiments (name, branch or commit prefix; repeatable)")] = [],  # noqa: B006
    split: Annotated[str | None, typer.Option(
        help="val | test: keep the runs evaluated on this split (without it, a mix of splits is refused)")] = None,
    from_json: Annotated[Path | None, typer.Option(
        "--from-json", help="read a file that `dvc exp show --json` wrote instead of this project's experiments")] = None,
    run: Annotated[list[Path], typer.Option(
        "--run", metavar="FOLDER", help="a project folder whose stages ran outside DVC's experiments (by hand, on "
        "another machine): its params.yaml and evaluation count as one run (repeatable; replaces the "
        "experiments)")] = [],  # noqa: B006
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Methods over seeds across DVC experiments (e.g. `dvc exp run --queue -S 'seed=1,2,3'`) or project folders
    (`--run`): runs that differ only by seed form a configuration; per configuration each headline metric's mean,
    standard deviation and 95% interval over seeds, and the evaluate.compare differences paired by seed with their
    sign counts: reports/compare.{md,json,csv,png}."""

    def action() -> None:
        from polyalign.evaluation import compare as builder
        from polyalign.evaluation import experiments

        if split not in (None, "val", "test"):
            raise UserError(f"compare: --split {split!r}: use val or test")
        if run and from_json:
            raise UserError("compare: give --run folders or --from-json, not both")
        params = _setup(params_file, overrides)
        if run:
            found, skipped = experiments.read_folders(run), None
        else:
            shown = experiments.read_json(from_json) if from_json else experiments.read_project(Path("."))
            found, skipped = experiments.runs(shown)
        result = builder.compare(experiments.select(found, exp), split, params.evaluate.confidence, skipped)
        paths = builder.write(result, Path(params.paths.reports))
        seeds = ", ".join(f"{g['label']}: {len(g['seeds'])}" for g in result["groups"])
        console.print(f"compare: {len(result['groups'])} configuration(s) on the {result['split']} split, seeds "
                      f"per configuration: {seeds} → {shown_path(paths['md'])}", highlight=False)

    _run(action)


annotate_app = typer.Typer(help="Blind human evaluation: draw a rating set from the evaluation reports into "
                            "human_eval/ratings.sqlite, and export the ratings with their figures.",
                            no_args_is_help=True)
app.add_typer(annotate_app, name="annotate")
Database = Annotated[Path, typer.Option("--db", help="the rating database (your data, not a DVC output)")]


@annotate_app.command("build")
def annotate_build(
    methods: Annotated[list[str], typer.Option(
        "--methods", help="methods to rate (repeatable; default: every method with a report in reports/eval)")] = [],  # noqa: B006
    items_per_bucket: Annotated[int, typer.Option(min=0, help="pairwise items per bucket")] = 6,
    spot_per_bucket: Annotated[int, typer.Option(min=0, help="spot-the-human items per bucket")] = 3,
    raters: Annotated[int, typer.Option(min=1, help="raters, each with a personal link")] = 3,
    overlap: Annotated[int, typer.Option(min=1, help="raters per item (2 or more gives agreement figures)")] = 2,
    attention_share: Annotated[float, typer.Option(min=0.0, max=0.5, help="share of attention checks")] = 0.05,
    force: Annotated[bool, typer.Option(help="replace a database that already holds ratings")] = False,
    db: Database = Path("human_eval/ratings.sqlite"),
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Draw a blind rating set (stratified per bucket, seeded by `seed`) from reports/eval/*.json: pairwise items,
    spot-the-human items and attention checks, assigned to raters with --overlap raters per item."""

    def action() -> None:
        from polyalign.annotate.build import build

        params = _setup(params_file, overrides)
        result = build(Path(params.paths.reports), Path(params.paths.buckets), db, methods=methods or None,
                       items_per_bucket=items_per_bucket, spot_per_bucket=spot_per_bucket, raters=raters,
                       overlap=overlap, attention_share=attention_share, seed=params.seed, force=force)
        console.print(f"annotate build: {result['items']} items ({result['pairwise']} pairwise, {result['spot']} "
                      f"spot the human, {result['attention']} attention checks) from {result['buckets']} buckets "
                      f"of the {result['split']} split, {len(result['raters'])} raters → {shown_path(db)}",
                      highlight=False)
        for rater, token in result["raters"].items():
            console.print(f"  {rater}: token {token} ({result['per_rater'][rater]} items)", highlight=False)

    _run(action)


@annotate_app.command("serve")
def annotate_serve(
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    db: Database = Path("human_eval/ratings.sqlite"),
) -> None:
    """Serve the rating page: each rater opens http://HOST:PORT/r/<token> (the tokens `annotate build` printed).
    Every rating is committed at once; a restarted server resumes each rater where they stopped."""

    def action() -> None:
        from polyalign.annotate.serve import serve

        if not db.is_file():
            raise UserError(f"annotate serve: no rating database at {shown_path(db)} (run `polyalign annotate "
                            "build` first)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this address and holds a "
                          "rater's token can rate; the page has no TLS (put it behind an HTTPS proxy)",
                          highlight=False)
        console.print(f"annotate serve: http://{host}:{port}/r/<token> (Ctrl+C stops; ratings are already saved)",
                      highlight=False)
        serve(db, host, port)

    _run(action)


@annotate_app.command("judge")
def annotate_judge(
    endpoint: Annotated[str, typer.Option(help="an OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1")],
    model: Annotated[str, typer.Option(help="the model name the endpoint serves")],
    rater: Annotated[str | None, typer.Option(help="the rater's name (default: judge:<model>)")] = None,
    limit: Annotated[int, typer.Option(min=0, help="judge at most this many items now (0: all)")] = 0,
    db: Database = Path("human_eval/ratings.sqlite"),
) -> None:
    """An automatic rater on the same protocol: every pairwise item (and attention check) goes to the endpoint's
    chat completions at temperature 0; its answers are stored as a rater of kind `model`. The API key, if the
    endpoint needs one, is read from OPENAI_API_KEY."""

    def action() -> None:
        from polyalign.annotate.judge import judge

        result = judge(db, endpoint, model, rater=rater, api_key=os.environ.get("OPENAI_API_KEY"), limit=limit)
        console.print(f"annotate judge: {result['judged']} items judged by {result['rater']} (A {result['a']}, B "
                      f"{result['b']}, tie {result['tie']}, unreadable answers {result['skip']}) → {shown_path(db)}",
                      highlight=False)

    _run(action)


@annotate_app.command("export")
def annotate_export(
    attention_threshold: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="raters passing fewer attention checks than this are left out, and counted")] = 0.8,
    db: Database = Path("human_eval/ratings.sqlite"),
    params_file: ParamsFile = [Path("params.yaml")],  # noqa: B006
    overrides: Overrides = [],  # noqa: B006
) -> None:
    """Write reports/human_eval.json: every rating, and win rates per method pair (overall, per slice, per bucket;
    bootstrap over items and raters), Bradley-Terry strengths, spot-the-human accuracy, inter-rater agreement
    and attention-check exclusions."""

    def action() -> None:
        from polyalign.annotate.export import export

        params = _setup(params_file, overrides)
        out = Path(params.paths.reports) / "human_eval.json"
        result = export(db, out, attention_threshold=attention_threshold,
                        resamples=params.evaluate.bootstrap_resamples, seed=params.seed)
        from polyalign.evaluation.human_report import log_to_wandb

        log_to_wandb(params, Path("."), result)
        console.print(f"annotate export: {len(result['ratings'])} ratings from {len(result['raters'])} raters "
                      f"({result['excluded_raters']} left out by the attention checks) → {shown_path(out)}",
                      highlight=False)

    _run(action)


def main() -> None:
    # Offline unless the user says otherwise: nothing may reach the hub or telemetry behind their back.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    app()


if __name__ == "__main__":
    main()
