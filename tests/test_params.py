import yaml
from typer.testing import CliRunner

from conftest import ROOT
from polyalign.cli import app
from polyalign.params import HdpoVariant, Params, load_params

runner = CliRunner()


def test_params_yaml_matches_the_models_defaults_key_for_key():
    on_disk = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    # an hdpo variant lists its own loss's settings; the other losses' knobs (simpo_gamma, ...) keep defaults
    variants = on_disk["hdpo"]["variants"]
    assert not any(key.startswith(("cdpo_", "robust_", "kto_")) for v in variants.values() for key in v)
    on_disk["hdpo"]["variants"] = {name: HdpoVariant(**v).model_dump(mode="json") for name, v in variants.items()}
    assert on_disk == Params().model_dump(mode="json")


def test_params_command_prints_effective_values_with_overrides(in_tmp):
    result = runner.invoke(app, ["params", "--set", "buckets.min_bucket_size=50", "-s", "data.zh_threshold=0.3"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["buckets"]["min_bucket_size"] == 50
    assert printed["data"]["zh_threshold"] == 0.3


def test_override_values_are_parsed_as_yaml():
    params = load_params(None, ["data.split_ratios={train: 0.5, val: 0.25, test: 0.25}",
                                "data.sources.0.categories=[ai, trivia]"])
    assert params.data.split_ratios.train == 0.5
    assert params.data.sources[0].categories == ["ai", "trivia"]


def bad(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_wrong_value_names_key_value_and_what_is_allowed(in_tmp):
    out = bad(["params", "--set", "data.on_invalid=skipp"])
    assert "data.on_invalid = 'skipp'" in out and "'error' or 'skip'" in out


def test_unknown_key_lists_the_allowed_keys(in_tmp):
    out = bad(["params", "--set", "buckets.min_bucket_sise=3"])
    assert "buckets.min_bucket_sise: unknown key" in out and "min_bucket_size" in out


def test_unknown_source_kind_lists_the_kinds(in_tmp):
    out = bad(["prepare", "--set", "data.sources=[{kind: csv, path: x.csv}]"])
    assert "'csv'" in out and "chatterbot, polyalign, alpaca, messages, squad, kdconv" in out
    assert not (in_tmp / "data").exists() and not (in_tmp / "reports").exists()


def test_invalid_value_in_params_file_stops_before_any_work(in_tmp):
    (in_tmp / "params.yaml").write_text("buckets:\n  min_bucket_size: -3\n")
    out = bad(["prepare"])
    assert "params.yaml" in out and "buckets.min_bucket_size = -3" in out and "greater than or equal to 1" in out
    assert not (in_tmp / "data").exists()


def test_split_ratios_must_sum_to_one(in_tmp):
    out = bad(["params", "--set", "data.split_ratios.train=0.9"])
    assert "sum to 1" in out


def test_malformed_override_and_missing_params_file(in_tmp):
    assert "expected section.key=value" in bad(["params", "--set", "seed"])
    assert "params file not found: nope.yaml" in bad(["params", "--params", "nope.yaml"])


def test_greedy_decoding_with_several_samples_per_prompt_is_refused_before_any_work(in_tmp):
    out = bad(["pairs", "--set", "generation.temperature=0"])
    assert "generation.temperature = 0" in out and "pairs.k = 2" in out
    assert not (in_tmp / "data").exists()
    assert runner.invoke(app, ["params", "--set", "generation.temperature=0", "--set", "pairs.k=1",
                          "--set", "pairs.chosen=human"]).exit_code == 0
    assert "budget 'fixed' needs max_new_tokens >= 1" in bad(["params", "--set", "evaluate.generation.budget=fixed"])


def test_another_losss_knob_is_refused_rather_than_ignored(in_tmp):
    out = bad(["params", "--set", "hdpo.variants.dpo.loss=ipo", "--set", "hdpo.variants.dpo.cdpo_eps=0.2"])
    assert "hdpo.variants.dpo" in out and "cdpo_eps applies to loss cdpo only" in out and "loss is ipo" in out


def test_an_unregistered_loss_names_the_registered_ones(in_tmp):
    out = bad(["params", "--set", "hdpo.variants.dpo.loss=hinge"])
    assert "loss 'hinge' is not a registered preference loss" in out and "simpo" in out


def test_non_finite_numbers_are_refused_in_every_section(in_tmp):
    assert "hdpo.optim.lr = inf: Input should be a finite number" in bad(["params", "--set", "hdpo.optim.lr=.inf"])
    assert "critic.margin = nan" in bad(["params", "--set", "critic.margin=.nan"])
    (in_tmp / "params.yaml").write_text("hdpo:\n  variants:\n    hdpo: {hdpo_gamma: -.inf}\n")
    assert "hdpo.variants.hdpo.hdpo_gamma = -inf: Input should be a finite number" in bad(["prepare"])
    assert not (in_tmp / "data").exists()


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(in_tmp):
    (in_tmp / "params.yaml").write_text("seed: 1\nhdpo:\n  beta: 0.1\n  epochs: 2\n  beta: 0.2\n")
    out = " ".join(bad(["prepare"]).split())
    assert "params.yaml: line 5 is not valid YAML: duplicate key 'beta' (first at line 3)" in out
    assert not (in_tmp / "data").exists()
    (in_tmp / "params.yaml").unlink()
    assert "duplicate key 'train'" in bad(["params", "--set", "data.split_ratios={train: 0.5, train: 0.5}"])


def test_a_yaml_merge_key_may_still_be_overridden_key_by_key(in_tmp):
    (in_tmp / "params.yaml").write_text("data:\n  split_ratios:\n    <<: {train: 0.5, val: 0.3, test: 0.2}\n"
                                        "    val: 0.25\n    test: 0.25\n")
    result = runner.invoke(app, ["params"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["data"]["split_ratios"] == {"train": 0.5, "val": 0.25, "test": 0.25}


def test_the_pairs_policy_names_an_sft_variant_that_does_not_train_on_its_own_samples(in_tmp):
    assert "pairs.policy: 'sft@nope' names no variant of sft.variants" in bad(["params", "--set",
                                                                                "pairs.policy=sft@nope"])
    out = bad(["params", "--set", "pairs.policy=sft@rs"])  # rs trains on the pairs stage's samples
    assert "pairs.policy: sft@rs samples the pairs" in out and "best_of_k" in out
    assert load_params(None, ["pairs.policy=sft@global"]).pairs.policy == "sft@global"


def test_the_critic_refuses_lora_and_every_stage_reads_one_optimisation_block(in_tmp):
    assert "the critic is a small MLP" in bad(["params", "--set", "critic.optim.lora.enabled=true"])
    params = load_params(None, ["sft.optim.lora.enabled=true", "hdpo.optim.checkpoint_every_n_steps=7"])
    assert params.sft.optim.lora.enabled and params.hdpo.optim.checkpoint_every_n_steps == 7
    assert (params.sft.optim.checkpoint_every_n_steps, params.critic.optim.min_lr_ratio) == (25, 1.0)
