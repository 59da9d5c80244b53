"""Typed parameters: one pydantic model per `params.yaml` section, all with `extra="forbid"`.

`params.yaml` is the single source of truth; these models hold the same defaults (a test keeps them in sync)
so that a typo or a bad value stops the run with one clear message before any work is done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from polyalign.errors import UserError

Language = Literal["en", "zh"]
Split = Literal["train", "val", "test"]
Family = Literal["assistant", "qa", "dialogue"]


class Section(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` (YAML floats) would pass a `gt=0` bound and poison every result
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PathsParams(Section):
    """Where each stage reads and writes, relative to the project root (dvc.yaml interpolates these)."""

    raw: str = "data/raw"
    prepared: str = "data/prepared"
    buckets: str = "data/buckets"
    data_pairs: str = "data/pairs"
    models: str = "models"
    reports: str = "reports"
    checkpoints: str = Field("checkpoints", description="Lightning checkpoints for --resume (not a DVC output)")
    logs: str = Field("logs", description="CSV logs and W&B offline runs")
    cache: str = Field("cache", description="generations kept across runs by evaluate (not a DVC output)")


class WandbParams(Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: a local run folder, no account, no network; online: sync as it runs")
    project: str = "polyalign"
    entity: str | None = None


class LoggingParams(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    progress: bool = Field(True, description="show progress bars for long work")
    wandb: WandbParams = Field(default_factory=WandbParams)


# ----------------------------------------------------------------------------------------------------------
# data sources: one model per adapter, told apart by `kind`


class _FileSource(Section):
    path: str = Field(description="file to read (relative to the project root)")
    name: str | None = Field(None, description="dataset label; default: the file name without extension")
    language: Language | None = Field(None, description="force a language; default: the row's tag or detection")
    split: Split | None = Field(None, description="the file's official split; default: hashed split")


class ChatterbotSource(Section):
    kind: Literal["chatterbot"] = "chatterbot"
    languages: list[Literal["english", "chinese", "traditionalchinese"]] = Field(
        default_factory=lambda: ["english", "chinese", "traditionalchinese"]
    )
    categories: list[str] | None = Field(None, description="only these category files (e.g. [ai, trivia])")


class PolyalignSource(_FileSource):
    kind: Literal["polyalign"]


class AlpacaSource(_FileSource):
    kind: Literal["alpaca"]
    family: Family = Field("assistant", description="family for rows that carry none")


class MessagesSource(_FileSource):
    kind: Literal["messages"]
    family: Family = "assistant"
    targets: Literal["all", "last"] = Field("all", description="every assistant turn, or only the last one")


class SquadSource(_FileSource):
    kind: Literal["squad"]


class KdconvSource(_FileSource):
    kind: Literal["kdconv"]
    language: Language | None = "zh"


HF_DATASETS = ("dolly", "eli5", "ms_marco", "squad_v2", "natural_questions", "coqa", "daily_dialog", "multiwoz22",
               "coig_cqia", "hc3_zh", "oasst2", "cmrc2018", "drcd", "dureader")


class HfSource(Section):
    """One of the paper's public corpora through `datasets.load_dataset`, mapped by its named adapter."""

    kind: Literal["hf"]
    dataset: Literal[HF_DATASETS] = Field(description="which adapter maps the rows")
    path: str | None = Field(None, description="hub id or local folder/file; default: the adapter's hub id")
    config: str | None = Field(None, description="dataset configuration; default: the adapter's when path is unset")
    revision: str | None = Field(None, description="hub revision (branch, tag, commit); default: the adapter's "
                                 "when path is unset")
    data_files: dict[str, str | list[str]] | None = Field(
        None, description="local files per official split, e.g. {train: dolly.jsonl} (offline use)")
    splits: list[str] | None = Field(None, description="official splits to read; default: all of them")
    max_rows: int = Field(0, ge=0, description="read at most this many rows per official split (0: all)")
    name: str | None = Field(None, description="dataset label; default: the adapter's name")


Source = Annotated[
    ChatterbotSource | PolyalignSource | AlpacaSource | MessagesSource | SquadSource | KdconvSource | HfSource,
    Field(discriminator="kind"),
]
SOURCE_MODELS: dict[str, type[Section]] = {
    "chatterbot": ChatterbotSource, "polyalign": PolyalignSource, "alpaca": AlpacaSource,
    "messages": MessagesSource, "squad": SquadSource, "kdconv": KdconvSource, "hf": HfSource,
}
SOURCE_KINDS = tuple(SOURCE_MODELS)
PRESETS: dict[str, tuple[str, ...]] = {
    "paper-en": ("dolly", "eli5", "ms_marco", "squad_v2", "natural_questions", "coqa", "daily_dialog", "multiwoz22"),
    "paper-zh": ("coig_cqia", "hc3_zh", "oasst2", "cmrc2018", "drcd", "dureader"),
}
PRESETS["paper-all"] = PRESETS["paper-en"] + PRESETS["paper-zh"]


class SplitRatios(Section):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class LengthBins(Section):
    edges: list[int] = Field(default_factory=lambda: [40, 120, 240])
    names: list[str] = Field(default_factory=lambda: ["short", "medium", "long", "xlong"])
    by_language: dict[Language, list[int]] = Field(
        default_factory=dict, description="edges for one language, e.g. {zh: [60, 180, 360]}"
    )

    @model_validator(mode="after")
    def _consistent(self) -> LengthBins:
        for label, edges in [("edges", self.edges), *[(f"by_language.{k}", v) for k, v in self.by_language.items()]]:
            if sorted(set(edges)) != list(edges):
                raise ValueError(f"{label} must be strictly increasing, got {edges}")
            if len(edges) + 1 != len(self.names):
                raise ValueError(f"{label} has {len(edges)} edges, so names needs {len(edges) + 1} entries")
        return self

    def edges_for(self, language: str) -> list[int]:
        return self.by_language.get(language, self.edges)


class DataParams(Section):
    """`prepare`: which sources to read and how to turn them into clean, split records."""

    preset: Literal["default", "paper-en", "paper-zh", "paper-all"] = Field(
        "default", description="default: the sources below; paper-*: the paper's corpora (replace the sources)")
    sources: list[Source] = Field(default_factory=lambda: [ChatterbotSource()], min_length=1)
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="a malformed row stops the run (error) or is skipped and counted (skip)"
    )
    drop_empty_answers: bool = True
    zh_threshold: float = Field(0.2, gt=0, le=1, description="share of CJK among letters that makes text zh")
    split_ratios: SplitRatios = Field(default_factory=SplitRatios)
    split_seed: int = Field(42, ge=0, le=2**32 - 1, description=(
        "seeds the hashed split; the top-level seed does not, so every seed of a sweep sees the same split"))
    length_bins: LengthBins = Field(default_factory=LengthBins)


    def effective_sources(self) -> list:
        """The sources `prepare` reads: `sources`, or the preset's hub datasets."""
        if self.preset == "default":
            return list(self.sources)
        return [HfSource(kind="hf", dataset=name) for name in PRESETS[self.preset]]


class BucketsParams(Section):
    """`bucketize`: bucket assignment, references and their backoff."""

    min_bucket_size: int = Field(30, ge=1, description="smaller buckets back off to a parent reference and "
                                 "merge into their nearest balance group")
    support_low: float = Field(0.1, ge=0, lt=1, description="quantile at the bottom of the support band")
    support_high: float = Field(0.9, gt=0, le=1, description="quantile at the top of the support band")
    epsilon: float = Field(1e-6, gt=0, description="floor of the per-feature scale in the distance")

    @model_validator(mode="after")
    def _band(self) -> BucketsParams:
        if self.support_low >= self.support_high:
            raise ValueError("support_low must be below support_high")
        return self


class ModelParams(Section):
    """`init`: the base model. `scratch` trains a tokenizer and creates a small Qwen3-style LM from config (the
    CPU default, no download); `pretrained` loads any Hugging Face causal LM."""

    source: Literal["scratch", "pretrained"] = "scratch"
    name_or_path: str | None = Field(None, description="pretrained: hub id or local directory")
    trust_remote_code: bool = False
    allow_pickle: bool = Field(False, description="pretrained: accept pickled weights (pytorch_model.bin), which can "
                               "run code when loaded; only for a model you trust")
    chat_template: str | None = Field(
        None, description="pretrained without a chat template: 'chatml' or a .jinja file (else an error)")
    vocab_size: int = Field(4096, ge=300)
    tokenizer_min_frequency: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(384, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(512, ge=16)
    attention_dropout: float = Field(0.3, ge=0, lt=1, description="scratch: dropout on the attention weights in "
                                     "pretraining and SFT (preference training turns dropout off)")
    pretrain_epochs: int = Field(30, ge=0, description="scratch: language-model epochs over the train split's "
                                 "texts before SFT (0: none)")
    pretrain_lr: float = Field(0.002, gt=0)
    pretrain_block_size: int = Field(128, ge=8, description="tokens per packed pretraining block")
    pretrain_batch_size: int = Field(16, ge=1)
    pretrain_precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description="scratch: Lightning precision of pretraining (auto: bf16-mixed where the device has bf16 "
        "in hardware, faster there; 32-true elsewhere, where bf16 is emulated and slow; the saved weights stay "
        "float32)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the dtype every stage loads a model in (auto: the dtype its folder was saved in; "
        "the scratch model is saved in float32)")
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = Field(
        "sdpa", description="the attention kernel of every loaded model (flash_attention_2: CUDA with the "
        "flash-attn package)")

    @model_validator(mode="after")
    def _shapes(self) -> ModelParams:
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError("model.source is 'pretrained' but model.name_or_path is not set")
        if self.pretrain_block_size > self.max_position_embeddings:
            raise ValueError("model.pretrain_block_size must not exceed max_position_embeddings")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be a multiple of num_heads, and num_heads of num_kv_heads")
        return self


class PromptParams(Section):
    """The one prompt renderer shared by SFT, pairs, HDPO and evaluation."""

    conditioning: Literal["none", "observable", "oracle_length"] = Field(
        "observable", description="oracle_length leaks the answer's length bin: an oracle, labelled as such")
    max_prompt_tokens: int = Field(192, ge=8, description="prompts are cut to this (oldest history first)")
    max_tokens: int = Field(256, ge=16, description="prompt + response in training")

    @model_validator(mode="after")
    def _room(self) -> PromptParams:
        if self.max_prompt_tokens >= self.max_tokens:
            raise ValueError("max_prompt_tokens must be smaller than max_tokens")
        return self


class TrainerParams(Section):
    """Hardware and scale-out for every training stage, passed to Lightning as they are."""

    accelerator: str = Field("auto", description="auto | cpu | gpu | ...")
    devices: int | str = Field(1, description="number of devices (or 'auto')")
    strategy: str = Field("auto", description="auto | ddp | fsdp | deepspeed | ...")
    num_nodes: int = Field(1, ge=1)
    precision: str = Field("32-true", description="32-true | bf16-mixed | 16-mixed | bf16-true | ... (precomputed "
                           "reference log-probs are computed in it too)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass of sft and "
                                         "hdpo: less memory, about a third more compute")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    log_every_n_steps: int = Field(5, ge=1)


class LoraParams(Section):
    enabled: bool = False
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = Field(True, description="merge the adapter into full weights when saving")


class OptimParams(Section):
    """One training run's optimisation (`sft.optim`, `hdpo.optim`, `critic.optim`, each with its own defaults):
    what trains (all weights, or a LoRA adapter), AdamW without weight decay on biases and norms, a linear
    warm-up and a cosine decay (`training/optim.py`), Lightning's gradient clipping and accumulation, and how
    often a checkpoint for --resume is written."""

    epochs: int = Field(1, ge=1)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: run all epochs)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's, except on biases and norms")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="linear warm-up over this share of the steps")
    min_lr_ratio: float = Field(1.0, ge=0, le=1, description="the cosine decay ends at lr x min_lr_ratio "
                                "(1: a constant learning rate)")
    gradient_clip_val: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: no clipping)")
    accumulate_grad_batches: int = Field(1, ge=1, description="batches per optimizer step")
    checkpoint_every_n_steps: int = Field(50, ge=1, description="a checkpoint for --resume every this many "
                                          "optimizer steps (a change does not make a run another one)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="an exponential moving average of the weights, updated "
                             "after every optimizer step with this decay (0: off); validation, the checkpoints' "
                             "weights and the exported model are the averaged ones")
    lora: LoraParams = Field(default_factory=LoraParams)


class SftVariant(Section):
    balance: Literal["none", "sampler", "loss_weight"] = Field(
        "none", description="none: global SFT; sampler: p_b ~ n_b^alpha; loss_weight: loss x w_b")
    alpha: float = Field(0.0, ge=0, le=1, description="sampler: p_b ~ n_b^alpha (0 = uniform over buckets)")
    init: str = Field("base", pattern=r"^(base|sft@[A-Za-z0-9_.-]+)$", description=(
        "the model the variant starts from: base (models/base) or another SFT variant's model"))
    data: Literal["human", "best_of_k"] = Field(
        "human", description="human: the human answers of the train split; best_of_k: those plus, per train "
        "prompt, the pairs stage's sample nearest to human support (rejection-sampling SFT)")
    epochs: int | None = Field(None, ge=1, description="this variant's epochs (null: sft.optim.epochs)")
    lr: float | None = Field(None, gt=0, description="this variant's learning rate (null: sft.optim.lr)")


class SftParams(Section):
    """`sft`: Bucket-Aware SFT and the global-SFT baseline (one entry per variant in `variants`)."""

    variants: dict[str, SftVariant] = Field(default_factory=lambda: {
        "global": SftVariant(balance="none"), "bucket": SftVariant(balance="sampler", alpha=0.0),
        # rejection-sampling SFT (best-of-k distillation), the strong simple baseline of preference methods
        "rs": SftVariant(balance="sampler", alpha=0.0, init="sft@bucket", data="best_of_k", epochs=1, lr=5e-4)})
    optim: OptimParams = Field(default_factory=lambda: OptimParams(
        epochs=4, lr=2e-3, weight_decay=0.01, warmup_ratio=0.05, min_lr_ratio=0.1, checkpoint_every_n_steps=25,
        ema_decay=0.995))
    batch_size: int = Field(8, ge=1, description="per device")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    val_every_n_steps: int = Field(0, ge=0, description="0: validate once per epoch")
    val_prompts: int = Field(0, ge=0, description=(
        "val prompts sampled at each validation for macro BNG, Len W1 and response length (0: none)"))
    select: Literal["last", "val_loss", "val_bng"] = Field(
        "last", description="the weights exported: the last step's, or those of the validation with the lowest "
        "val loss or val macro BNG")

    @model_validator(mode="after")
    def _starts(self) -> SftParams:
        """Every `init` names a variant, no chain of starts loops, and the model `pairs` samples from
        (`pairs.policy`) does not itself depend on those samples (checked by `Params`)."""
        for name, v in self.variants.items():
            if v.init != "base":
                self.variant_of(f"sft.variants.{name}.init", v.init)
        for name in self.variants:
            self.start_chain(name)
        return self

    def variant_of(self, key: str, model: str) -> str:
        """The variant an `sft@<variant>` name at params key `key` names; ValueError where there is none."""
        name = model.removeprefix("sft@")
        if name not in self.variants:
            raise ValueError(f"{key}: {model!r} names no variant of sft.variants ({', '.join(self.variants)})")
        return name

    def start_chain(self, name: str) -> list[str]:
        """The variant and every SFT variant it starts from, in order (ValueError where the starts loop)."""
        chain, current = [name], self.variants[name].init
        while current != "base":
            current = current.removeprefix("sft@")
            if current in chain:
                raise ValueError(f"sft.variants.{name}.init: the starts loop ({' -> '.join([*chain, current])})")
            chain.append(current)
            current = self.variants[current].init
        return chain


class CriticParams(Section):
    """`fit-critic`: the bucket-conditioned critic of distance to human support."""

    encoder: Literal["ngram", "hf"] = Field("ngram", description="ngram: char n-gram TF-IDF + SVD; hf: a HF model")
    encoder_path: str | None = Field(None, description="hf: encoder or causal LM directory, e.g. models/base")
    ngram_min: int = Field(1, ge=1)
    ngram_max: int = Field(4, ge=1)
    max_features: int = Field(20000, ge=10)
    embedding_dim: int = Field(64, ge=2, description="SVD dimensions of the ngram encoder")
    use_prompt: bool = Field(False, description="also feed the prompt's embedding (and rank own < other prompt)")
    model_samples: str | None = Field(
        None, description="JSONL/parquet of {response, bucket_id} model samples (optionally their question)")
    heldout_features: list[str] = Field(
        default_factory=lambda: ["punct_per_token", "question_share", "distinct_2", "repeat_3"],
        description="response features kept out of the critic's inputs and regression target; validation "
                    "reports its Spearman with the support distance on these only")
    corruptions: list[Literal["truncate", "repeat", "shuffle", "pad_length", "swap_language"]] = Field(
        default_factory=lambda: ["truncate", "repeat", "shuffle", "pad_length", "swap_language"])
    margin: float = Field(0.5, ge=0)
    weight_regression: float = Field(1.0, ge=0)
    weight_conditional: float = Field(1.0, ge=0)
    weight_corruption: float = Field(1.0, ge=0)
    weight_model_samples: float = Field(1.0, ge=0)
    weight_prompt: float = Field(1.0, ge=0, description="own prompt < another prompt (with use_prompt)")
    hidden_size: int = Field(128, ge=4)
    bucket_dim: int = Field(16, ge=1)
    optim: OptimParams = Field(default_factory=lambda: OptimParams(epochs=20, lr=2e-3, checkpoint_every_n_steps=1000))
    # a constant learning rate; no LoRA (the critic is a small MLP)
    batch_size: int = Field(256, ge=1)
    min_score_std: float = Field(0.01, ge=0, description="refuse to save a critic whose val scores are ~constant")

    @model_validator(mode="after")
    def _no_lora(self) -> CriticParams:
        if self.optim.lora.enabled:
            raise ValueError("critic.optim.lora: the critic is a small MLP with no attention projections to adapt")
        return self

    @model_validator(mode="after")
    def _encoder(self) -> CriticParams:
        if self.encoder == "hf" and not self.encoder_path:
            raise ValueError("critic.encoder is 'hf' but critic.encoder_path is not set")
        if self.ngram_min > self.ngram_max:
            raise ValueError("critic.ngram_min must not exceed critic.ngram_max")
        return self

    @model_validator(mode="after")
    def _heldout(self) -> CriticParams:
        from polyalign.buckets.features import FEATURE_NAMES

        unknown = [f for f in self.heldout_features if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"critic.heldout_features: unknown features {unknown}; known: {', '.join(FEATURE_NAMES)}")
        if len(set(self.heldout_features)) != len(self.heldout_features):
            raise ValueError("critic.heldout_features: a feature is listed twice")
        if len(self.heldout_features) >= len(FEATURE_NAMES):
            raise ValueError("critic.heldout_features: leave at least one feature as the critic's input")
        return self


class GenerationParams(Section):
    """Decoding settings of the one batched, KV-cached generator (pair sampling; evaluation has its own)."""

    budget: Literal["bucket", "fixed"] = Field(
        "bucket", description="bucket: each prompt may generate budget_factor x the q90 length (model tokens) of "
        "its bucket's training answers | fixed: max_new_tokens for every prompt")
    budget_factor: float = Field(1.5, gt=0, description="bucket budgets: this many times the bucket's q90 length")
    max_new_tokens: int = Field(0, ge=0, description="fixed: the budget of every prompt; bucket: an upper bound "
                                "(0: none but the model's context)")
    temperature: float = Field(1.0, ge=0, description="0 decodes greedily")
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k cut")
    repetition_penalty: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1, description="hf: prompts per batch")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: Hugging Face generate on the loaded model (one process per device with "
        "trainer.devices > 1) | vllm: a vLLM engine on the model folder (optional install, `make venv-vllm`)")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one engine spreads the model over")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vllm: the share of GPU memory the engine "
                                          "may take (the stage's own copy of the model needs the rest)")

    @model_validator(mode="after")
    def _budget(self) -> GenerationParams:
        if self.budget == "fixed" and self.max_new_tokens < 1:
            raise ValueError("budget 'fixed' needs max_new_tokens >= 1")
        return self


class PairsParams(Section):
    """`pairs`: chosen = the human answer or a sample, rejected = a sample of the `policy` SFT model (or the user's
    own pairs)."""

    policy: str = Field("sft@bucket", pattern=r"^sft@[A-Za-z0-9_.-]+$", description=(
        "the SFT model that samples the pairs and scores their reference log-probs (dvc.yaml's pairs stage "
        "depends on its folder: change both)"))

    k: int = Field(2, ge=1, description="samples per prompt")
    chosen: Literal["human", "nearest_sample", "mixed"] = Field(
        "nearest_sample", description="human answer | the sample nearest to human support (on-policy) | mixed: the human "
        "answer with probability human_share")
    human_share: float = Field(0.5, ge=0, le=1, description="mixed: probability that the chosen side is human")
    rejected: Literal["first", "farthest", "random"] = Field(
        "farthest", description="among the other samples: farthest = largest critic distance | first | random")
    min_gap: float | None = Field(
        None, description="drop pairs whose critic-distance gap d_rejected - d_chosen is below this (null: keep all)")
    truncated: Literal["keep", "drop"] = Field(
        "keep", description="samples cut by their token budget: keep (scored without an end-of-turn token) | drop")
    precompute_ref: bool = Field(True, description="store the reference model's log-probs of both sides")
    max_prompts: int = Field(0, ge=0, description="use at most this many prompts per split (0: all)")
    preference_file: str | None = Field(
        None, description="the user's own pairs (JSONL with chosen/rejected and prompt fields) instead of sampling")


class HdpoVariant(Section):
    """One preference model: a base loss (`loss`, `beta`, its own `<loss>_` knobs, its `reference`) with HDPO's
    extras on top (`hdpo_gamma`, `hdpo_m_max`, `hdpo_lam`, `alpha`, `weighting`); all extras 0 and uniform
    weights give the base loss alone. `training/objectives/` holds the losses."""

    loss: str = Field("sigmoid", description="the base loss: a name in training/objectives BASE_LOSSES "
                      "(sigmoid, cdpo, robust, ipo, simpo, orpo, kto)")
    beta: float = Field(0.1, gt=0, description="the base loss's beta (ORPO's lambda)")
    reference: Literal["precomputed", "frozen", "lora", "none"] | None = Field(None, description=(
        "precomputed log-probs from pairs, a frozen copy, or LoRA's disabled adapter; none for a reference-free "
        "loss (simpo, orpo). null: precomputed, or none where the loss is reference-free"))
    hdpo_gamma: float = Field(0.0, ge=0, description="weight of the critic offset in the preference margin")
    hdpo_m_max: float = Field(2.0, ge=0, description="the critic offset's distance gap is clipped to [0, m_max]")
    hdpo_lam: float = Field(0.0, ge=0, description="weight of the distribution regulariser")
    alpha: float = Field(0.0, ge=0, description="weight of the NLL anchor on the human answer")
    weighting: Literal["uniform", "bucket"] = Field("uniform", description="pair weights w_i")
    init: str = Field("sft@bucket", pattern=r"^sft@[A-Za-z0-9_.-]+$", description=(
        "the SFT model the variant starts from, which is also its reference model"))
    cdpo_eps: float = Field(0.1, ge=0, lt=0.5, description="cdpo: probability that a label is flipped")
    robust_eps: float = Field(0.1, ge=0, lt=0.5, description="robust: probability that a label is flipped")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin")
    kto_desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the chosen (desirable) side")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the rejected side")

    @staticmethod
    def knob_owner(name: str) -> str | None:
        """The base loss a field is a knob of (`simpo_gamma` -> simpo), None for a setting of every variant."""
        from polyalign.training.objectives import BASE_LOSSES  # imports no torch

        owner = name.split("_", 1)[0]
        return owner if owner in BASE_LOSSES else None

    @model_validator(mode="after")
    def _loss_and_knobs(self) -> HdpoVariant:
        from polyalign.training.objectives import BASE_LOSSES

        if self.loss not in BASE_LOSSES:
            raise ValueError(f"loss {self.loss!r} is not a registered preference loss ({', '.join(BASE_LOSSES)})")
        for name, field in type(self).model_fields.items():  # another loss's knob must keep its default
            owner = self.knob_owner(name)
            if owner not in (None, self.loss) and getattr(self, name) != field.default:
                raise ValueError(f"{name} applies to loss {owner} only, and this variant's loss is {self.loss}")
        return self

    def knobs(self) -> dict[str, float]:
        """The base loss's own settings, without their prefix (`simpo_gamma` -> `gamma`)."""
        return {k.removeprefix(f"{self.loss}_"): v for k, v in self.model_dump().items()
                if self.knob_owner(k) == self.loss}

    def settings(self) -> dict[str, Any]:
        """The variant's settings without the other losses' knobs (what its report records)."""
        return {k: v for k, v in self.model_dump().items() if self.knob_owner(k) in (None, self.loss)}

    def extras(self) -> dict[str, float]:
        return {"hdpo_gamma": self.hdpo_gamma, "hdpo_m_max": self.hdpo_m_max, "hdpo_lam": self.hdpo_lam,
                "alpha": self.alpha}


class HdpoParams(Section):
    """`hdpo@<variant>`: one preference model per variant, each from its `init` SFT model. The training settings
    here are shared by every variant."""

    variants: dict[str, HdpoVariant] = Field(default_factory=lambda: {
        "dpo": HdpoVariant(reference="precomputed"),
        "hdpo": HdpoVariant(reference="precomputed", hdpo_gamma=1.0, hdpo_lam=0.5, alpha=1.0, weighting="bucket"),
        "dpo_global": HdpoVariant(reference="precomputed", init="sft@global"),
        "hdpo_simpo": HdpoVariant(loss="simpo", beta=2.0, reference="none", simpo_gamma=1.0, hdpo_gamma=1.0,
                                  hdpo_lam=0.5, alpha=1.0, weighting="bucket")})
    optim: OptimParams = Field(default_factory=lambda: OptimParams(
        epochs=2, lr=5e-4, warmup_ratio=0.1, min_lr_ratio=0.1))
    batch_size: int = Field(8, ge=1)
    val_prompts: int = Field(128, ge=0, description=(
        "val prompts sampled at each validation for macro BNG, Len W1 and response length (0: none)"))
    select: Literal["last", "val_loss", "val_bng"] = Field(
        "val_bng", description="the weights exported: the last step's, or those of the validation with the "
        "lowest val loss or val macro BNG")
    rounds: int = Field(1, ge=1, description="round 1 trains on data/pairs; each later round on fresh pairs "
                        "sampled from the previous round's policy, which is also its reference")
    prompts_per_round: int = Field(0, ge=0, description="train prompts sampled in a round after the first, a seeded "
                                   "subset per round (0: all)")
    refit_critic: bool = Field(False, description="refit the critic each round after the first with the policy's "
                               "samples as 'human < model sample' negatives")

    @model_validator(mode="after")
    def _reference(self) -> HdpoParams:
        for name, v in self.variants.items():
            if v.reference == "lora" and not self.optim.lora.enabled:
                raise ValueError(f"hdpo.variants.{name}.reference is 'lora' but hdpo.optim.lora.enabled is false")
        return self


METHOD_PATTERN = r"^(base|sft@[\w.-]+|hdpo@[\w.-]+)$"


class EvaluateParams(Section):
    """`evaluate`: every method on the same test prompts with the same decoding, then the metrics (DESIGN §9)."""

    methods: list[Annotated[str, Field(pattern=METHOD_PATTERN)]] = Field(
        default_factory=lambda: ["sft@global", "sft@bucket", "sft@rs", "hdpo@dpo", "hdpo@hdpo", "hdpo@dpo_global",
                                 "hdpo@hdpo_simpo"],
        min_length=1, description="base | sft@<variant> | hdpo@<variant>")
    compare: list[tuple[str, str]] = Field(
        default_factory=lambda: [("sft@bucket", "sft@global"), ("hdpo@hdpo", "hdpo@dpo"),
                                 ("hdpo@hdpo", "sft@bucket"), ("hdpo@dpo_global", "sft@global"),
                                 ("hdpo@hdpo", "hdpo@dpo_global"), ("hdpo@hdpo", "sft@rs"),
                                 ("hdpo@hdpo_simpo", "sft@bucket")],
        description="pairs (a, b): a - b, with a paired bootstrap interval in the report and over seeds in "
        "`polyalign compare`")
    split: Literal["test", "val"] = Field("test", description="the split the methods answer: tune on val, "
                                          "report test once")
    max_prompts: int = Field(0, ge=0, description=(
        "evaluate a fixed subset of the split, the same for every seed (0: all of it)"))
    generation: GenerationParams = Field(default_factory=GenerationParams)
    bootstrap_resamples: int = Field(1000, ge=0, description="0: no intervals")
    confidence: float = Field(0.95, gt=0, lt=1)
    bng_cap: float = Field(3.0, gt=0, description="cap of each feature's gap in BNG")
    hcr_core: list[str] = Field(
        default_factory=lambda: ["n_tokens", "n_sentences", "sentence_tokens_mean", "punct_per_token", "distinct_1"],
        min_length=1, description="features of the joint human-support coverage rate")
    self_bleu_samples: int = Field(200, ge=1, description="hypotheses per bucket in self-BLEU")
    c2st_min_n: int = Field(10, ge=2, description="smallest bucket that gets a classifier two-sample test")
    c2st_folds: int = Field(5, ge=2)
    mauve: Literal["auto", "off"] = Field("auto", description="auto: computed when the `mauve` extra is installed")
    mauve_min_n: int = Field(20, ge=2, description="smallest bucket that gets a MAUVE score")

    @model_validator(mode="after")
    def _consistent(self) -> EvaluateParams:
        from polyalign.buckets.features import FEATURE_NAMES

        if len(set(self.methods)) != len(self.methods):
            raise ValueError("evaluate.methods lists a method twice")
        for a, b in self.compare:
            if a not in self.methods or b not in self.methods or a == b:
                raise ValueError(f"evaluate.compare: ({a}, {b}) must name two different methods of evaluate.methods")
        unknown = [f for f in self.hcr_core if f not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"evaluate.hcr_core: unknown features {unknown}; known: {', '.join(FEATURE_NAMES)}")
        return self


NOT_CONFIGURATION = ("seed", "logging")  # seeds vary within a configuration; logging changes no result


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, order-independent hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def flat_keys(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"a": {"b": 1}} -> {"a.b": 1} (with `prefix`, "prefix.a.b")."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items()
                for k, v in flat_keys(sub, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: value}


class Params(Section):
    seed: int = Field(42, ge=0, le=2**32 - 1, description="NumPy and Lightning take seeds in [0, 2**32 - 1]")
    paths: PathsParams = Field(default_factory=PathsParams)
    logging: LoggingParams = Field(default_factory=LoggingParams)
    data: DataParams = Field(default_factory=DataParams)
    buckets: BucketsParams = Field(default_factory=BucketsParams)
    model: ModelParams = Field(default_factory=ModelParams)
    prompt: PromptParams = Field(default_factory=PromptParams)
    trainer: TrainerParams = Field(default_factory=TrainerParams)
    sft: SftParams = Field(default_factory=SftParams)
    critic: CriticParams = Field(default_factory=CriticParams)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    pairs: PairsParams = Field(default_factory=PairsParams)
    hdpo: HdpoParams = Field(default_factory=HdpoParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)

    def configuration_id(self) -> str:
        """The configuration a run belongs to: a hash of every parameter but those in NOT_CONFIGURATION. Runs that
        differ only by seed share it; it names their W&B group and their group in `polyalign compare`."""
        return "cfg-" + settings_hash(self.model_dump(mode="json", exclude=set(NOT_CONFIGURATION)))

    @model_validator(mode="after")
    def _starts(self) -> Params:
        """Every hdpo variant starts from an SFT variant."""
        for name, v in self.hdpo.variants.items():
            self.sft.variant_of(f"hdpo.variants.{name}.init", v.init)
        return self

    @model_validator(mode="after")
    def _policy(self) -> Params:
        """`pairs.policy` names an SFT variant, and neither it nor a model it starts from trains on its samples."""
        name = self.sft.variant_of("pairs.policy", self.pairs.policy)
        if any(self.sft.variants[c].data == "best_of_k" for c in self.sft.start_chain(name)):
            raise ValueError(f"pairs.policy: {self.pairs.policy} samples the pairs, so neither it nor a model it "
                             "starts from can train on them (data: best_of_k)")
        return self

    @model_validator(mode="after")
    def _sampling(self) -> Params:
        for section in ("sft", "hdpo"):
            cfg = getattr(self, section)
            if cfg.select == "val_bng" and cfg.val_prompts == 0:
                raise ValueError(f"{section}.select: val_bng needs sampled val responses: set {section}.val_prompts > 0")
        if self.pairs.chosen != "human" and self.pairs.k < 2 and self.pairs.preference_file is None:
            raise ValueError(f"pairs.chosen: {self.pairs.chosen} takes both sides from the samples, so it needs "
                             f"pairs.k >= 2 (got {self.pairs.k})")
        if self.generation.temperature == 0 and self.pairs.k > 1 and self.pairs.preference_file is None:
            raise ValueError(f"generation.temperature = 0 decodes greedily, so pairs.k = {self.pairs.k} samples of a "
                             "prompt would all be the same; set pairs.k: 1 or a temperature > 0")
        return self


# ----------------------------------------------------------------------------------------------------------
# loading, overrides and error messages


def _keys(loc: tuple[Any, ...]) -> list[Any]:
    """The location without the discriminator value pydantic inserts after a source's list index."""
    return [p for i, p in enumerate(loc) if not (i > 0 and isinstance(loc[i - 1], int) and p in SOURCE_KINDS)]


def _location(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(_keys(loc)))


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in _keys(loc):
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Params
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part in SOURCE_MODELS:
            model = SOURCE_MODELS[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = next((a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")), annotation)
    return sorted(getattr(model, "model_fields", {}))


def format_validation_error(err: ValidationError, raw: dict, origin: str) -> str:
    lines = [f"invalid parameters in {origin}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        where = _location(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; allowed keys here: {', '.join(_allowed_keys(loc))}")
            continue
        if e["type"] == "union_tag_invalid":
            lines.append(f"  {where}.kind = {e['input'].get('kind')!r}: unknown source kind; "
                         f"allowed: {', '.join(SOURCE_KINDS)}")
            continue
        value = _lookup(raw, loc) if e["type"] != "missing" else None
        shown = "" if e["type"] == "missing" or not loc else f" = {value!r}"
        lines.append(f"  {where}{shown}: {e['msg']}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load` that refuses a key given twice in one mapping: YAML loaders keep the last one silently,
    so the first setting (often the one being edited) would be ignored."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden key by key
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports an unhashable key
            if key in first_line:
                problem = f"duplicate key {key!r} (first at line {first_line[key]}); keep one of them"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML, so 0.2 is a float and [a, b] a list)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set buckets.min_bucket_size=50")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), parsed


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
        try:
            child = node[key]
        except (KeyError, IndexError, TypeError):
            child = None
        if not isinstance(child, (dict, list)):
            if isinstance(node, list):
                raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not an existing list entry")
            child = {}
            node[key] = child
        node = child
    last: Any = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"--set {'.'.join(path)}: {last} is not an index of that list")
        last = int(last)
    node[last] = value


def _read_params_file(p: Path) -> str:
    """The text of a parameters file, or a UserError saying why it cannot be one."""
    if p.is_dir():
        raise UserError(f"--params {p}: is a folder, not a parameters file")
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{p}: line {line} is not valid UTF-8 (byte {data[exc.start]:#04x}); save the file as "
                        "UTF-8") from None


def read_params_mapping(p: Path) -> dict:
    """A parameters file as the mapping it holds (not validated), or a UserError naming the file and line."""
    if not p.exists():
        raise UserError(f"{p}: not found")
    try:
        raw = load_yaml(_read_params_file(p)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def overlay(base: dict, top: dict) -> dict:
    """`top` laid over `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in top.items():
        out[key] = overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_params(path: str | Path | Sequence[str | Path] | None = "params.yaml", overrides: Sequence[str] = ()
                ) -> Params:
    """Read params.yaml (or the built-in defaults when it is absent and was not asked for), lay any further
    files over it (several `--params`: a recipe such as configs/qwen2.5-0.5b.yaml sets only what it changes),
    apply overrides, validate. Raises UserError with a message that names the key, the bad value and what is
    allowed."""
    paths = [path] if path is None or isinstance(path, (str, Path)) else list(path) or ["params.yaml"]
    raw: dict = Params().model_dump(mode="json")
    origins = []
    for i, one in enumerate(paths):
        if one is None:
            continue
        p = Path(one)
        if p.exists():
            raw = read_params_mapping(p) if i == 0 else overlay(raw, read_params_mapping(p))
            origins.append(str(p))
        elif i > 0 or str(one) != "params.yaml":
            raise UserError(f"params file not found: {p}")
    origin = " + ".join(origins) or "built-in defaults"
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    if overrides:
        origin += " with overrides " + " ".join(f"--set {o}" for o in overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, raw, origin)) from None


def set_flags(path: str | Path) -> list[str]:
    """Every value a parameters file sets, as `-S section.key=value` flags for `dvc exp run` (values in YAML
    flow style without spaces, so that a shell's word splitting keeps each flag whole)."""
    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [flag for key, value in node.items() for flag in leaves(value, f"{prefix}{key}.")]
        return [f"{prefix[:-1]}={json.dumps(node, separators=(',', ':'), ensure_ascii=False)}"]
    flags = []
    for leaf in leaves(read_params_mapping(Path(path)), ""):
        flags += ["-S", leaf]
    return flags


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
