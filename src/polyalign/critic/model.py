"""The critic network, its inputs and the scoring API used by later stages:

    Critic.load("models/critic").distance(responses, bucket_ids, prompts=None) -> np.ndarray (>= 0)

Inputs per (response, bucket): the bilingual response features standardised with the bucket's reference,
their per-feature support-band gaps, a text embedding, optionally the prompt's embedding, and a learned
embedding of the bucket; the output goes through softplus. Unknown bucket ids back off exactly like the
references. Saved without pickle: safetensors weights, JSON config, and a manifest of SHA-256 checksums that
`load` verifies, so a tampered or substituted file is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polyalign.buckets.features import FEATURE_NAMES, compute_features
from polyalign.buckets.references import References, group_rows
from polyalign.critic.encoders import load_encoder, save_encoder
from polyalign.errors import UserError
from polyalign.log import progress_bar

Z_CLIP = 10.0


class CriticNet(nn.Module):
    def __init__(self, in_dim: int, n_buckets: int, bucket_dim: int, hidden: int):
        super().__init__()
        self.bucket = nn.Embedding(n_buckets, bucket_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim + bucket_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.mlp(torch.cat([x, self.bucket(bucket)], dim=-1))).squeeze(-1)


def feature_inputs(refs: References, features: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """[z, gap] per row: features standardised with the row's reference bucket, and the support-band gaps.
    Features constant in a bucket stay in (the distance ignores them, but e.g. CJK share in an English bucket is
    what gives a Chinese answer away); their scale is epsilon, so any deviation clips to +-Z_CLIP."""
    n, f = features.shape
    out = np.zeros((n, 2 * f), dtype=np.float32)
    for key, rows in group_rows(keys).items():
        ref = refs.buckets[key]
        x = features[rows]
        scale = ref.stats["scale"]
        z = np.clip((x - ref.stats["mean"]) / scale, -Z_CLIP, Z_CLIP)
        gap = np.clip(np.maximum(0.0, np.maximum(ref.stats["low"] - x, x - ref.stats["high"])) / scale, 0, Z_CLIP)
        out[rows, :f] = z
        out[rows, f:] = gap
    return out


def build_inputs(refs: References, encoder, bucket_index: dict[str, int], use_prompt: bool,
                 responses: Sequence[str], bucket_ids: Sequence[str], prompts: Sequence[str] | None = None,
                 features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs and bucket indices for (response, bucket) rows; buckets resolve through the backoff."""
    keys = refs.resolve_many(bucket_ids)
    feats = compute_features(responses) if features is None else features
    parts = [feature_inputs(refs, feats, keys), encoder.encode(responses)]
    if use_prompt:
        if prompts is None:
            raise UserError("this critic was trained with critic.use_prompt: true; pass prompts")
        parts.append(encoder.encode(prompts))
    return np.concatenate(parts, axis=1).astype(np.float32), np.array([bucket_index[k] for k in keys])


class Critic:
    def __init__(self, net: CriticNet, encoder, refs: References, config: dict):
        self.net, self.encoder, self.refs, self.config = net.eval(), encoder, refs, config
        self.bucket_index = {b: i for i, b in enumerate(config["buckets"])}

    def inputs(self, responses: Sequence[str], bucket_ids: Sequence[str], prompts: Sequence[str] | None = None,
               features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return build_inputs(self.refs, self.encoder, self.bucket_index, self.config["use_prompt"], responses,
                            bucket_ids, prompts, features)

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
        config = {**self.config, "encoder": save_encoder(self.encoder, folder)}
        (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
        (folder / "references.json").write_text(json.dumps(self.refs.to_json(), ensure_ascii=False),
                                                encoding="utf-8")
        files = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
        manifest = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Critic:
        folder = Path(path)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise UserError(f"no critic in {folder} (manifest.json missing; run `polyalign fit-critic`)")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        present = {p.name for p in folder.iterdir()} - {"manifest.json"}
        if present != set(manifest):
            raise UserError(f"critic {folder}: unexpected or missing files {sorted(present ^ set(manifest))}")
        for name, digest in manifest.items():
            if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
                raise UserError(f"critic {folder}: {name} does not match its checksum (modified or replaced)")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
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
