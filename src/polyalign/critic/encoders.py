"""Text encoders for the critic, behind one interface: `fit(texts)`, `encode(texts) -> [n, dim]`, and state that
is saved without pickle (arrays in safetensors, the rest in JSON).

- `ngram` (default): character n-gram TF-IDF (across word boundaries) reduced by truncated SVD (scikit-learn), fit on training
  responses only; character n-grams work for English and Chinese alike.
- `hf`: any Hugging Face encoder or causal LM directory, frozen, mean-pooled last hidden state, batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from polyalign.errors import UserError

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer


class NgramEncoder:
    kind = "ngram"

    def __init__(self, ngram_range: tuple[int, int] = (1, 3), max_features: int = 20000, dim: int = 64,
                 seed: int = 0):
        self.ngram_range, self.max_features, self.dim, self.seed = tuple(ngram_range), max_features, dim, seed
        self.vectorizer: TfidfVectorizer | None = None
        self.components: np.ndarray | None = None

    def _new_vectorizer(self, vocabulary=None) -> TfidfVectorizer:
        # imported here: stages that only import the critic's classes (sft, hdpo) skip scikit-learn's second
        from sklearn.feature_extraction.text import TfidfVectorizer

        # `char` (not `char_wb`): n-grams across word boundaries also see word order
        return TfidfVectorizer(analyzer="char", ngram_range=self.ngram_range, max_features=self.max_features,
                               sublinear_tf=True, dtype=np.float32, vocabulary=vocabulary)

    def fit(self, texts: Sequence[str]) -> NgramEncoder:
        self.vectorizer = self._new_vectorizer()
        matrix = self.vectorizer.fit_transform(list(texts))
        dim = max(1, min(self.dim, matrix.shape[1] - 1, matrix.shape[0] - 1))
        from sklearn.decomposition import TruncatedSVD

        svd = TruncatedSVD(n_components=dim, random_state=self.seed).fit(matrix)
        self.components = svd.components_.astype(np.float32)
        return self

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[0])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.vectorizer.transform(list(texts)) @ self.components.T, dtype=np.float32)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        vocabulary = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        config = {"kind": self.kind, "ngram_range": list(self.ngram_range), "max_features": self.max_features,
                  "dim": self.dim, "vocabulary": vocabulary}
        # safetensors writes an array's memory as if it were C-ordered, and SVD components come Fortran-ordered
        arrays = {"idf": self.vectorizer.idf_, "components": self.components}
        return config, {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in arrays.items()}

    @classmethod
    def from_state(cls, config: dict, arrays: dict[str, np.ndarray]) -> NgramEncoder:
        enc = cls(tuple(config["ngram_range"]), config["max_features"], config["dim"])
        enc.vectorizer = enc._new_vectorizer(vocabulary=config["vocabulary"])
        enc.vectorizer.idf_ = arrays["idf"]
        enc.components = arrays["components"]
        return enc


class HFEncoder:
    """Mean-pooled last hidden state of a frozen Hugging Face model (the directory is referenced, not copied)."""

    kind = "hf"

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        if not Path(path).is_dir():
            raise UserError(f"critic.encoder_path: {path} is not a model directory")
        self.path, self.batch_size, self.max_length = str(path), batch_size, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(path).eval()

    def fit(self, texts: Sequence[str]) -> HFEncoder:
        return self  # frozen

    @property
    def out_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer([t or " " for t in texts[start: start + self.batch_size]], return_tensors="pt",
                                   padding=True, truncation=True, max_length=self.max_length)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.out_dim), np.float32)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"kind": self.kind, "path": self.path, "batch_size": self.batch_size,
                "max_length": self.max_length}, {}

    @classmethod
    def from_state(cls, config: dict, arrays: dict[str, np.ndarray]) -> HFEncoder:
        return cls(config["path"], config["batch_size"], config["max_length"])


ENCODERS = {"ngram": NgramEncoder, "hf": HFEncoder}


def save_encoder(encoder, folder: Path) -> dict:
    config, arrays = encoder.state()
    if arrays:
        save_file(arrays, str(folder / "encoder.safetensors"))
    return config


def load_encoder(config: dict, folder: Path):
    if config.get("kind") not in ENCODERS:
        raise UserError(f"unknown critic encoder {config.get('kind')!r}; known: {', '.join(ENCODERS)}")
    path = folder / "encoder.safetensors"
    arrays = load_file(str(path)) if path.is_file() else {}
    return ENCODERS[config["kind"]].from_state(config, arrays)
