"""Create, load and save causal LMs in Hugging Face `save_pretrained` form (safetensors), so every later stage
and any user loads them with plain `AutoModelForCausalLM` / `AutoTokenizer`. Every model folder a stage writes
carries a checksum manifest (`manifest.json`), verified whenever a stage loads it: a modified file or a pickle
slipped into the folder is refused before anything is read."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from polyalign.errors import UserError, producer, rerun_hint, shown
from polyalign.manifest import PICKLE_SUFFIXES, verify_manifest, write_manifest
from polyalign.modeling.tokenizer import CHATML_TEMPLATE


@dataclass(frozen=True)
class Loading:
    """How every stage loads a model: its dtype (`model.dtype`; auto keeps the dtype the folder was saved in),
    its attention kernel (`model.attn_implementation`), and whether training recomputes activations in the
    backward pass (`trainer.gradient_checkpointing`)."""

    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False

    @classmethod
    def from_params(cls, params) -> Loading:
        return cls(params.model.dtype, params.model.attn_implementation, params.trainer.gradient_checkpointing)

    def kwargs(self) -> dict:
        """`from_pretrained`'s dtype and attention arguments."""
        return {"dtype": "auto" if self.dtype == "auto" else getattr(torch, self.dtype),
                "attn_implementation": self.attn_implementation}

    def prepare_for_training(self, model: PreTrainedModel) -> None:
        """Gradient checkpointing, when asked for (before any adapter wraps the model); generation during
        validation runs in eval mode, where nothing is recomputed."""
        if not self.gradient_checkpointing:
            return
        if not model.supports_gradient_checkpointing:
            raise UserError(f"trainer.gradient_checkpointing: {type(model).__name__} does not support it")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False


AS_SAVED = Loading()  # the defaults: each folder's own dtype, sdpa attention, no gradient checkpointing


def folder_dtype(path: str | Path) -> str:
    """The dtype a model folder's weights were saved in (its config's `dtype`; float32 when it names none)."""
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def create_scratch_model(tokenizer: PreTrainedTokenizerBase, cfg, seed: int) -> Qwen3ForCausalLM:
    """A small Qwen3-style causal LM from config (no download), initialised from `seed`.

    Qwen3 rather than Qwen2: its normalised queries and keys train stably at the high learning rates a model
    trained from scratch wants, and transformers loads a `qwen2` folder's tokenizer as Qwen2's own byte-level
    tokenizer whatever tokenizer.json says, which would silently replace ours."""
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attention_dropout=cfg.attention_dropout,
        attn_implementation=cfg.attn_implementation,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _exists_locally(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def _refuse_pickle_only(folder: Path) -> None:
    """A local model whose weights exist only as pickles: say so (transformers only says a file is missing)."""
    pickled = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickled and not any(folder.glob("*.safetensors")):
        raise UserError(f"model.name_or_path={str(folder)!r} holds its weights only as pickles ({', '.join(pickled)}), "
                        "and loading a pickle can run arbitrary code: convert them to safetensors, or set "
                        "model.allow_pickle: true if you trust where they come from")


def load_pretrained(name_or_path: str, trust_remote_code: bool = False, chat_template: str | None = None,
                    loading: Loading = AS_SAVED, allow_pickle: bool = False,
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Any Hugging Face causal LM (hub id or local directory) through the Auto classes.

    Weights load from safetensors only, unless `allow_pickle` accepts pickled ones (`pytorch_model.bin`).
    A chat template is required: the tokenizer's own, or `chat_template` (`chatml` or a path to a .jinja
    file). A model without one and no `chat_template` is refused: guessing a format silently would train the
    model on prompts it never sees elsewhere."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if _exists_locally(name_or_path) and not allow_pickle:
        _refuse_pickle_only(Path(name_or_path).expanduser())
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if allow_pickle else True,
                                                     **loading.kwargs())
    except ImportError as exc:  # e.g. flash_attention_2 without the flash-attn package or without CUDA
        raise UserError(f"model.attn_implementation={loading.attn_implementation!r} cannot be used here: "
                        f"{str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:
        where = "local directory" if _exists_locally(name_or_path) else "hub id"
        hint = (" HF_HUB_OFFLINE=1 is set, so only local directories and already-cached models load."
                if offline and not _exists_locally(name_or_path) else "")
        raise UserError(f"cannot load model.name_or_path={name_or_path!r} ({where}): "
                        f"{str(exc).splitlines()[0]}.{hint}") from None
    if chat_template is not None:
        tokenizer.chat_template = CHATML_TEMPLATE if chat_template == "chatml" else _read_template(chat_template)
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError(f"model.name_or_path={name_or_path!r} has no chat template; set model.chat_template to "
                        "'chatml' or to a .jinja file")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _read_template(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model.chat_template: file not found: {path} (or use 'chatml')")
    return p.read_text(encoding="utf-8")


def check_model_dir(path: str | Path, what: str = "model") -> Path:
    """A model folder an earlier stage wrote, exactly as it wrote it: present, every file matching the checksum
    manifest, no pickle. Anything else is refused with the command that writes the folder again."""
    path = Path(path)
    if not (path / "config.json").is_file():
        command = f"`{producer(path)}`" if producer(path) else "the stage that writes it"
        raise UserError(f"{what} not found in {shown(path)} (run {command} first)")
    verify_manifest(path, what)
    return path


def _loading(path: Path, what: str, load):
    """Run `load`; a library's complaint about the folder becomes one line naming it and what rewrites it."""
    try:
        return load()
    except ImportError as exc:  # e.g. flash_attention_2 without the flash-attn package or without CUDA
        raise UserError(f"{what} in {shown(path)} cannot be loaded with model.attn_implementation as set: "
                        f"{str(exc).splitlines()[0]}") from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{what} in {shown(path)} cannot be loaded ({reason}); {rerun_hint(path)}") from None


def load_tokenizer(path: str | Path, what: str = "model") -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder an earlier stage wrote (checked like `load_model_dir`)."""
    path = check_model_dir(path, what)
    return _loading(path, what, lambda: AutoTokenizer.from_pretrained(path))


def load_model_weights(path: str | Path, what: str = "model", loading: Loading = AS_SAVED) -> PreTrainedModel:
    """The causal LM of a model folder an earlier stage wrote, from safetensors only, as `loading` says."""
    return _weights(check_model_dir(path, what), what, loading)


def _weights(path: Path, what: str, loading: Loading) -> PreTrainedModel:
    return _loading(path, what, lambda: AutoModelForCausalLM.from_pretrained(path, use_safetensors=True,
                                                                            **loading.kwargs()))


def load_model_dir(path: str | Path, what: str = "model",
                   loading: Loading = AS_SAVED) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model folder written by an earlier stage, verified against its manifest before anything is read."""
    path = check_model_dir(path, what)
    tokenizer = _loading(path, what, lambda: AutoTokenizer.from_pretrained(path))
    return _weights(path, what, loading), tokenizer


TOKENIZER_PROBE = "Hello,  world!\n\n你好吗？ It's 2026."


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """save_pretrained form (safetensors), plus the checksum manifest that every later load verifies.

    The saved tokenizer is loaded back with plain AutoTokenizer and must tokenise a probe text exactly as the
    one in memory: transformers picks the tokenizer class from the model type, and a mismatch would train
    and evaluate every later stage on different token ids than the ones written here."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    loaded = AutoTokenizer.from_pretrained(folder)
    if loaded(TOKENIZER_PROBE)["input_ids"] != tokenizer(TOKENIZER_PROBE)["input_ids"]:
        raise UserError(f"the tokenizer saved in {shown(folder)} loads back as {type(loaded).__name__}, which "
                        f"tokenises differently from the {type(tokenizer).__name__} that was saved")
    write_manifest(folder)


def model_dir(name: str, params, root: Path = Path(".")) -> Path:
    """The folder of a model named as params name models: `base`, `sft@<variant>` or `hdpo@<variant>`."""
    stage, _, variant = name.partition("@")
    models = root / params.paths.models
    return models / "base" if stage == "base" else models / stage / variant


def model_context(folder: Path) -> int | None:
    """The model's context length from its config.json (read without loading the weights)."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return config.get("max_position_embeddings")


def folder_digest(folder: Path) -> str:
    """SHA-256 over a folder's file names and contents: which exact model (weights, tokenizer, template) this is."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def inference_device(accelerator: str) -> torch.device:
    """The device for the stages that run a model outside Lightning (sampling, scoring), chosen by the same
    `trainer.accelerator` setting that places training: `auto` takes a CUDA GPU when there is one."""
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if accelerator == "auto":
            return torch.device("cpu")
        raise UserError(f"trainer.accelerator={accelerator!r}, but torch sees no CUDA GPU on this machine")
    if accelerator == "mps":
        if torch.backends.mps.is_available():
            return torch.device("mps")
        raise UserError("trainer.accelerator='mps', but MPS is not available on this machine")
    raise UserError(f"trainer.accelerator={accelerator!r}: sampling and scoring run on cpu, gpu (cuda), mps or auto")


def disable_dropout(model) -> None:
    """Turn every dropout of `model` off, attention dropout included. Preference training compares the policy's
    log-probs with the reference's, which are computed without dropout: with it on, the two would differ from
    the first step by noise alone."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
