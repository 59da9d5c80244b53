"""The critic network, its inputs and the scoring API used by later stages:

    Critic.load("models/critic").distance(responses, bucket_ids, prompts=None) -> np.ndarray (>= 0)

Inputs per (response, bucket): the bilingual response features standardised with the bucket's reference,
their per-feature support-band gaps, a text embedding, optionally the prompt's embedding and its elementwise
product with the response's, and a learned
embedding of the bucket; the output goes through softplus. The features in `config["heldout_features"]` are
left out of the inputs (and of the regression target), so that validation can compare the critic with the
support distance on features it never saw. Unknown bucket ids back off exactly like the references. Saved without pickle: safetensors weights, JSON config, and a manifest of SHA-256 checksums that
`load` verifies, so a tampered or substituted file is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import Reference, References, group_rows, support_distance
from polyalign.critic.encoders import load_encoder, save_encoder
from polyalign.errors import UserError
from polyalign.log import progress_bar
from polyalign.manifest import MANIFEST, verify_manifest, write_manifest

Z_CLIP = 10.0
# Version 2: held-out features, the prompt product, and the encoder saved in the right memory order (version 1
# wrote the SVD components Fortran-ordered as if C-ordered, so a loaded critic scored with a scrambled embedding).
FORMAT = 2


class CriticNet(nn.Module):
    def __init__(self, in_dim: int, n_buckets: int, bucket_dim: int, hidden: int):
        super().__init__()
        self.bucket = nn.Embedding(n_buckets, bucket_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim + bucket_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.mlp(torch.cat([x, self.bucket(bucket)], dim=-1))).squeeze(-1)


def feature_mask(refs: References, names: Sequence[str]) -> np.ndarray:
    """Boolean mask over `refs.features`: True for the named features."""
    unknown = sorted(set(names) - set(refs.features))
    if unknown:
        raise UserError(f"critic: unknown response features {unknown}")
    return np.isin(refs.features, list(names))


def feature_distance(refs: References, features: np.ndarray, bucket_ids: Sequence[str],
                     mask: np.ndarray) -> np.ndarray:
    """The support distance d(x, b) restricted to the features in `mask` (0 where a bucket has none of them
    active): the critic's regression target on its visible features, and its validation on held-out ones."""
    X = np.asarray(features, dtype=np.float64)
    out = np.zeros(len(X))
    for key, rows in group_rows(refs.resolve_many(bucket_ids)).items():
        ref = refs.buckets[key]
        out[rows] = support_distance(X[rows], Reference(ref.count, ref.stats, ref.active & mask))
    return out


def feature_inputs(refs: References, features: np.ndarray, keys: Sequence[str],
                   visible: np.ndarray | None = None) -> np.ndarray:
    """[z, gap] per row over the `visible` features (default all): features standardised with the row's
    reference bucket, and the support-band gaps.
    Features constant in a bucket stay in (the distance ignores them, but e.g. CJK share in an English bucket is
    what gives a Chinese answer away); their scale is epsilon, so any deviation clips to +-Z_CLIP."""
    visible = np.ones(features.shape[1], dtype=bool) if visible is None else visible
    n, f = len(features), int(visible.sum())
    out = np.zeros((n, 2 * f), dtype=np.float32)
    for key, rows in group_rows(keys).items():
        stats = {s: refs.buckets[key].stats[s][visible] for s in ("mean", "low", "high", "scale")}
        x = features[rows][:, visible]
        scale = stats["scale"]
        z = np.clip((x - stats["mean"]) / scale, -Z_CLIP, Z_CLIP)
        gap = np.clip(np.maximum(0.0, np.maximum(stats["low"] - x, x - stats["high"])) / scale, 0, Z_CLIP)
        out[rows, :f] = z
        out[rows, f:] = gap
    return out


def build_inputs(refs: References, encoder, bucket_index: dict[str, int], use_prompt: bool,
                 responses: Sequence[str], bucket_ids: Sequence[str], prompts: Sequence[str] | None = None,
                 features: np.ndarray | None = None,
                 heldout: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs and bucket indices for (response, bucket) rows; buckets resolve through the backoff.
    The `heldout` features are not among the inputs."""
    keys = refs.resolve_many(bucket_ids)
    feats = compute_features(responses) if features is None else features
    parts = [feature_inputs(refs, feats, keys, ~feature_mask(refs, heldout)), encoder.encode(responses)]
    if use_prompt:
        if prompts is None:
            raise UserError("this critic was trained with critic.use_prompt: true; pass prompts")
        prompt = encoder.encode(prompts)
        # the elementwise product lets the MLP compare response and prompt (with the prompt's embedding alone it
        # learns nothing about whether a response fits its prompt: own-vs-other prompt AUROC ~0.5)
        parts += [prompt, parts[1] * prompt]
    return np.concatenate(parts, axis=1).astype(np.float32), np.array([bucket_index[k] for k in keys])


def critic_prompt(record: Mapping[str, Any]) -> str:
    """The prompt text a critic with `use_prompt` sees for a record: its last user turn. Training (fit-critic)
    and every stage that scores with the critic (pairs, evaluate) take it from here, so they agree."""
    return str(record.get("question") or "")


class Critic:
    def __init__(self, net: CriticNet, encoder, refs: References, config: dict):
        self.net, self.encoder, self.refs, self.config = net.eval(), encoder, refs, config
        self.bucket_index = {b: i for i, b in enumerate(config["buckets"])}

    def inputs(self, responses: Sequence[str], bucket_ids: Sequence[str], prompts: Sequence[str] | None = None,
               features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return build_inputs(self.refs, self.encoder, self.bucket_index, self.config["use_prompt"], responses,
                            bucket_ids, prompts, features, self.config.get("heldout_features", ()))

    @property
    def uses_prompt(self) -> bool:
        return bool(self.config.get("use_prompt"))

    def score_responses(self, responses: Sequence[str], records: Sequence[Mapping[str, Any]],
                        progress: bool | None = None) -> np.ndarray:
        """Distances of responses written for `records` (one per record): each is scored under the record's
        `bucket_id` and, for a critic trained with prompts, with the record's prompt (`critic_prompt`)."""
        prompts = [critic_prompt(r) for r in records] if self.uses_prompt else None
        return self.distance(list(responses), [r["bucket_id"] for r in records], prompts, progress=progress)

    @torch.no_grad()
    def score_inputs(self, x: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        return self.net(torch.from_numpy(x), torch.from_numpy(buckets).long()).numpy().astype(np.float64)

    def distance(self, responses: Sequence[str], bucket_ids: Sequence[str], prompts: Sequence[str] | None = None,
                 batch_size: int = 8192, progress: bool | None = None) -> np.ndarray:
        """Distance >= 0 of each response from the human support of its bucket (after backoff)."""
        if len(responses) != len(bucket_ids) or (prompts is not None and len(prompts) != len(responses)):
            raise ValueError("responses, bucket_ids (and prompts) must have the same length")
        out = np.zeros(len(responses))
        show = progress if progress is not None else len(responses) > 4 * batch_size
        with progress_bar(show) as bar:
            task = bar.add_task("critic distances", total=len(responses))
            for start in range(0, len(responses), batch_size):
                end = start + batch_size
                x, b = self.inputs(responses[start:end], bucket_ids[start:end],
                                   None if prompts is None else prompts[start:end])
                out[start:end] = self.score_inputs(x, b)
                bar.advance(task, len(x))
        return out

    # ------------------------------------------------------------------------------------------------- io

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(folder / "model.safetensors"))
        config = {**self.config, "format": FORMAT, "encoder": save_encoder(self.encoder, folder)}
        (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
        (folder / "references.json").write_text(json.dumps(self.refs.to_json(), ensure_ascii=False),
                                                encoding="utf-8")
        write_manifest(folder)

    @classmethod
    def load(cls, path: str | Path) -> Critic:
        folder = Path(path)
        if not (folder / MANIFEST).is_file():
            raise UserError(f"no critic in {folder} (manifest.json missing; run `polyalign fit-critic`)")
        verify_manifest(folder, "critic")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("format") != FORMAT:
            raise UserError(f"critic {folder} was saved by an older version of polyalign (format "
                            f"{config.get('format', 1)}, this version reads {FORMAT}); rerun `polyalign fit-critic`")
        refs = References.from_json(json.loads((folder / "references.json").read_text(encoding="utf-8")))
        if refs.features != FEATURE_NAMES:
            raise UserError(f"critic {folder} was built on other response features than this version computes; "
                            "rerun `polyalign bucketize` and `polyalign fit-critic`")
        encoder = load_encoder(config["encoder"], folder)
        try:
            weights = load_file(str(folder / "model.safetensors"))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"critic {folder}: model.safetensors is not a safetensors file ({exc})") from None
        net = CriticNet(config["in_dim"], len(config["buckets"]), config["bucket_dim"], config["hidden_size"])
        net.load_state_dict(weights)
        return cls(net, encoder, refs, config)
