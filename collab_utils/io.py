"""Atomic writes, and digest markers that tell whether stored outputs are current.

Writes go to a temporary file beside the target, then rename over it: an interrupted run never
leaves a half-written table, JSON file or notebook behind. A marker file records the digest of
the inputs a stage's outputs were made from (`mark_done`); `up_to_date` compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the finished file to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file its usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | Path, frame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_folder(target: str | Path, write: Callable[[Path], None], *, replace: bool) -> Path:
    """Fill a staging folder with `write(folder)`, then rename it to `target`.

    An existing `target` is swapped out when `replace`, else kept (another process finished
    first). A failed or killed write never leaves a half-written `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        write(staging)
        if not target.exists():
            staging.rename(target)
        elif replace:
            retired = target.with_name(f".{target.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def save_pretrained(target: str | Path, *parts, replace: bool) -> Path:
    """`part.save_pretrained(folder)` for each part (model, tokenizer), as one atomic folder."""

    def save(folder: Path) -> None:
        for part in parts:
            part.save_pretrained(folder)

    return write_folder(target, save, replace=replace)


def inputs_digest(*inputs) -> str:
    """A digest of files (their bytes) and values (their JSON), to tell if a stage is stale."""
    digest = hashlib.sha256()
    for item in inputs:
        if isinstance(item, Path):
            digest.update(item.read_bytes())
        else:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def up_to_date(marker: Path, *inputs) -> bool:
    """True when `marker` records the digest of these inputs (the outputs are current)."""
    return marker.is_file() and marker.read_text().strip() == inputs_digest(*inputs)


def mark_done(marker: Path, *inputs) -> None:
    """Record the digest of the inputs that the outputs beside `marker` were made from."""
    write_text(marker, inputs_digest(*inputs) + "\n")
