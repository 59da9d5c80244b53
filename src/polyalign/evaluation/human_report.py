"""The report's human-evaluation section, from `reports/human_eval.json` alone (`polyalign annotate export`):
win rates per method pair (overall, per slice, per bucket, with intervals over items and raters), Bradley–Terry
strengths, spot-the-human accuracy, agreement, attention exclusions, and how far each automatic metric follows
the human judgements over (method, bucket) points."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from polyalign.evaluation.human import answered, in_human_figures, oriented

AUTOMATIC = (("bng", "BNG", "lower"), ("c2st", "C2ST accuracy", "lower"), ("mauve", "MAUVE", "higher"))


def human_scores(ratings: Sequence[dict]) -> dict[tuple[str, str], float]:
    """Per (method, bucket): the mean pairwise score of the method's responses (1 judged more natural, 0.5 a
    tie, 0 less natural), over the kept raters' ratings."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in answered([r for r in ratings if in_human_figures(r)], "pairwise"):
        first, second, score = oriented(r)
        sums[(first, r["bucket"])].append(score)
        sums[(second, r["bucket"])].append(1.0 - score)
    return {key: sum(v) / len(v) for key, v in sums.items()}


def correlations(ratings: Sequence[dict], results: Sequence[dict]) -> list[dict]:
    """Spearman's rho between the human score and each automatic metric over the (method, bucket) points both
    have (a human-like method scores high with humans, so BNG and C2ST should correlate negatively, MAUVE
    positively)."""
    from scipy.stats import spearmanr

    scores = human_scores(ratings)
    by_method = {r["method"]: r for r in results}
    out = []
    for key, label, better in AUTOMATIC:
        points = [(score, by_method[m]["buckets"][b].get(key)) for (m, b), score in scores.items()
                  if m in by_method and b in by_method[m].get("buckets", {})]
        points = [(h, a) for h, a in points if a is not None and not (isinstance(a, float) and math.isnan(a))]
        rho = float(spearmanr(*zip(*points)).statistic) if len(points) >= 3 else math.nan
        out.append({"metric": key, "label": label, "better": better, "rho": rho, "points": len(points)})
    return out


def _rate(row: dict) -> str:
    return f"{row['win_rate']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def _win_table(rows: Sequence[dict]) -> list[str]:
    lines = ["| method a | method b | ratings | a wins / ties / b wins | a judged more natural |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['a']} | {r['b']} | {r['n']} | {r['wins']} / {r['ties']} / {r['losses']} | {_rate(r)} |"
              for r in rows]
    return lines


def section(evaluation: dict, results: Sequence[dict]) -> str:
    s = evaluation["summary"]
    raters = evaluation["raters"]
    kept = sum(not r["excluded"] and r["kind"] == "human" for r in raters.values())
    counted = sum(map(in_human_figures, evaluation["ratings"]))
    intro = (f"Blind ratings from `polyalign annotate` (`{evaluation['database']}`, {evaluation['split']} split): "
             f"{counted} ratings from {kept} human raters; "
             f"{evaluation['excluded_raters']} rater(s) left out for passing fewer than "
             f"{evaluation['attention_threshold']:.0%} of their attention checks. Win rates count a tie as half; "
             "the intervals come from a bootstrap over items and raters together.")
    lines = ["## Human evaluation", "", intro, "", "### Win rates, all buckets", ""]
    lines += _win_table(s["win_rates"]["overall"]["all"]) + ["", "### Win rates per slice", ""]
    for name, rows in s["win_rates"]["slice"].items():
        lines += [f"**{name}**", ""] + _win_table(rows) + [""]
    lines += ["### Bradley–Terry strengths (log scale, mean 0; higher: judged more natural)", "",
              "| method | strength |", "| --- | ---: |"]
    lines += [f"| {m} | {v:+.2f} |" for m, v in sorted(s["bradley_terry"].items(), key=lambda kv: -kv[1])]
    lines += ["", "### Spot the human (0.5: the method's responses cannot be told from a person's)", "",
              "| method | human answer picked | ratings |", "| --- | ---: | ---: |"]
    lines += [f"| {m} | {v['accuracy']:.2f} | {v['n']} |" for m, v in s["spot_the_human"].items()]
    agreement = s.get("agreement")
    lines += ["", "### Agreement", ""]
    lines.append(f"{agreement['measure'].replace('_', ' ')}: {agreement['value']:.2f} over {agreement['items']} items "
                 f"rated by {agreement['raters']} raters." if agreement else
                 "No item was rated by more than one kept rater: no agreement figure.")
    lines += ["", "| rater | kind | ratings | attention checks passed | left out |", "| --- | --- | ---: | ---: | --- |"]
    lines += [f"| {name} | {r['kind']} | {r['ratings']} | {r['attention_passed']} / {r['attention_checks']} | "
              f"{'yes' if r['excluded'] else 'no'} |" for name, r in raters.items()]
    judges = evaluation.get("judges") or {}
    if judges:
        lines += ["", "### Automatic raters against the human majority (`annotate judge`)", "",
                  "| rater | items | same choice | Cohen's kappa |", "| --- | ---: | ---: | ---: |"]
        for name, j in judges.items():
            if j is None:
                lines.append(f"| {name} | 0 | n/a | n/a |")
            else:
                kappa = "n/a" if j["cohen_kappa"] is None else f"{j['cohen_kappa']:.2f}"
                lines.append(f"| {name} | {j['items']} | {j['agreement']:.2f} | {kappa} |")
    lines += ["", "### Do the automatic metrics follow the raters?", "",
              "Spearman's rho over (method, bucket) points between the raters' mean pairwise score and each metric:",
              "", "| metric | better | rho | points |", "| --- | --- | ---: | ---: |"]
    for c in correlations(evaluation["ratings"], results):
        rho = "n/a" if math.isnan(c["rho"]) else f"{c['rho']:+.2f}"
        lines.append(f"| {c['label']} | {c['better']} | {rho} | {c['points']} |")
    lines += ["", "Where a lower-is-better metric follows the raters, rho is negative; a higher-is-better one, positive.",
              ""]
    return "\n".join(lines)


def wandb_tables(evaluation: dict) -> dict:
    """The section's tables as W&B tables (win rates at every level, Bradley–Terry, spot the human)."""
    import wandb

    summary = evaluation["summary"]
    return {
        "human/win_rates": wandb.Table(
            columns=["level", "group", "method_a", "method_b", "n", "win_rate", "low", "high"],
            data=[[level, group, r["a"], r["b"], r["n"], r["win_rate"], r["low"], r["high"]]
                  for level, groups in summary["win_rates"].items() for group, rows in groups.items() for r in rows]),
        "human/bradley_terry": wandb.Table(columns=["method", "strength"],
                                           data=[[m, v] for m, v in summary["bradley_terry"].items()]),
        "human/spot_the_human": wandb.Table(columns=["method", "accuracy", "n"], data=[
            [m, v["accuracy"], v["n"]] for m, v in summary["spot_the_human"].items()]),
    }


def log_to_wandb(params, root, evaluation: dict) -> None:
    """The human evaluation as a W&B run of its own (offline by default), when `annotate export` writes it."""
    cfg = params.logging.wandb
    if cfg.mode == "disabled":
        return
    import wandb

    from polyalign.log import announce_wandb_run, wandb_settings

    logs = root / params.paths.logs
    logs.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(logs), job_type="human_eval",
                     group=params.configuration_id(), name=f"human-eval-{evaluation['split']}",
                     tags=["human_eval", str(evaluation["split"])], settings=wandb_settings(params.logging.level))
    run.log(wandb_tables(evaluation))
    run.summary.update({"ratings": len(evaluation["ratings"]), "excluded_raters": evaluation["excluded_raters"]})
    run.finish()
    announce_wandb_run(run, cfg.mode)
