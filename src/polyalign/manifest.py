"""Checksum manifests of the folders stages write (every model folder and the critic).

`manifest.json` maps each file of the folder to its SHA-256. A loader verifies it before reading anything, so
a file that was modified, truncated, replaced or added (a pickle beside the safetensors weights) is refused
with the command that writes the folder again, instead of being loaded or failing deep inside a library."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from polyalign.errors import UserError, rerun_hint, shown

MANIFEST = "manifest.json"
# formats that unpickle when loaded, and so can run arbitrary code; no stage writes them
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_files(folder: Path) -> list[str]:
    """The folder's files (relative, with /), the manifest itself left out."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Checksum every file of `folder` into its manifest; call it last, once the folder is complete."""
    manifest = {name: sha256_file(folder / name) for name in folder_files(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def read_manifest(folder: Path, what: str) -> dict[str, str]:
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{what} {shown(folder)} has no {MANIFEST} (it was not written by a polyalign stage, or by "
                        f"an older version), so its files cannot be checked; {rerun_hint(folder)}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown(path)} is corrupt (not JSON: {exc}); {rerun_hint(folder)}") from None
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        raise UserError(f"{shown(path)} is corrupt (expected a mapping of file names to SHA-256 checksums); "
                        f"{rerun_hint(folder)}")
    return manifest


def verify_manifest(folder: Path, what: str) -> None:
    """Refuse `folder` unless its files are exactly those of its manifest, unchanged, and none is a pickle."""
    folder = Path(folder)
    manifest = read_manifest(folder, what)
    present = set(folder_files(folder))
    if present != set(manifest):
        odd = sorted(present ^ set(manifest))
        pickled = [name for name in odd if name.endswith(PICKLE_SUFFIXES)]
        note = (f" ({', '.join(pickled)}: pickled weights, which no stage writes and which can run code when "
                "loaded)" if pickled else "")
        raise UserError(f"{what} {shown(folder)}: unexpected or missing files {odd}{note}; {rerun_hint(folder)}")
    pickled = sorted(name for name in manifest if name.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise UserError(f"{what} {shown(folder)} holds pickled weights {pickled}, which no stage writes and which "
                        f"can run code when loaded; {rerun_hint(folder)}")
    for name, digest in sorted(manifest.items()):
        if sha256_file(folder / name) != digest:
            raise UserError(f"{shown(folder / name)} does not match its checksum (modified, truncated or replaced); "
                            f"{rerun_hint(folder)}")
