"""Safetensors save/load with atomic writes and strict, explained loading.

Every write goes through a temporary name that is fsynced and then renamed, so a reader
(or a resumed run after a crash) never sees half a file or half a checkpoint directory.

Loading is strict: keys the module does not have, keys it has that the file lacks (unless
the caller allows a subset) and shape mismatches are all errors that name the key and the
file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt or does not match the model. The message names
    the path and the offending keys."""


# --------------------------------------------------------------------------------------
# fsync + atomic rename
# --------------------------------------------------------------------------------------


def fsync_file(path: str | Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry table (makes renames inside it durable). No-op where the
    platform cannot open directories."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and directory under ``path`` (inclusive)."""
    path = Path(path)
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


@contextlib.contextmanager
def atomic_file(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; on success fsync it and rename it onto
    ``final_path``; on error remove it.

    Example:
        >>> with atomic_file("out/metrics.json") as tmp:
        ...     tmp.write_text("{}")
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_path.with_name(f".{final_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final_path)
        fsync_dir(final_path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``final_path``; on success fsync its whole tree
    and rename it to ``final_path`` (replacing nothing: ``final_path`` must not exist); on
    error remove it.

    Temporary directories are named ``.tmp-<name>-<random>`` so that :func:`is_temporary`
    recognises leftovers of a crash.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    if final_path.exists():
        raise CheckpointError(f"{final_path}: already exists; refusing to overwrite it")
    tmp = final_path.with_name(f".tmp-{final_path.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        os.rename(tmp, final_path)
        fsync_dir(final_path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_temporary(path: str | Path) -> bool:
    """True for the temporary names :func:`atomic_directory`/:func:`atomic_file` use."""
    name = Path(path).name
    return name.startswith(".tmp-") or ".tmp-" in name


# --------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------


def save_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write ``{name: tensor}`` as one safetensors file, atomically.

    Tensors are detached, moved to CPU and made contiguous; tensors that share storage (tied
    weights) are cloned so safetensors accepts them.
    """
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        out[name] = t
    with atomic_file(path) as tmp:
        save_file(out, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file.

    Raises:
        CheckpointError: the file is missing or not a readable safetensors file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); the file is "
                              "corrupt or truncated: delete it or point to another checkpoint"
                              ) from None


@dataclass
class LoadReport:
    """What :func:`load_into` did: names loaded and names the module kept (``missing``)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_keys(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    got: Mapping[str, torch.Size | tuple[int, ...]],
    source: str,
    allow_missing: bool = False,
) -> list[str]:
    """Compare the names and shapes a module expects with those a file holds.

    Args:
        expected: ``{name: shape}`` of the module.
        got: ``{name: shape}`` of the file.
        source: path or label used in the error message.
        allow_missing: the file may hold a subset of the module's tensors.

    Returns:
        Names the module has that the file lacks (empty unless ``allow_missing``).

    Raises:
        CheckpointError: naming unexpected, missing and mis-shaped keys.
    """
    unexpected = sorted(set(got) - set(expected))
    missing = sorted(set(expected) - set(got))
    mis_shaped = [
        f"{k} (file {tuple(got[k])}, model {tuple(expected[k])})"
        for k in sorted(set(got) & set(expected))
        if tuple(got[k]) != tuple(expected[k])
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys (not in the model): {_preview(unexpected)}")
    if missing and not allow_missing:
        problems.append(f"missing keys (model has, file lacks): {_preview(missing)}")
    if mis_shaped:
        problems.append(f"shape mismatch: {_preview(mis_shaped)}")
    if problems:
        raise CheckpointError(
            f"{source}: does not match the model: " + "; ".join(problems)
            + ". Check that the checkpoint was written for this model config and stage."
        )
    return missing


def load_into(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    source: str = "<tensors>",
    allow_missing: bool = False,
) -> LoadReport:
    """Copy ``tensors`` into ``module``'s parameters and buffers by name, strictly.

    Args:
        module: the target (a plain, unsharded module).
        tensors: ``{name: tensor}`` with names as in ``module.state_dict()``.
        source: file name for error messages.
        allow_missing: accept a file that holds only some of the module's tensors.

    Raises:
        CheckpointError: unexpected keys, missing keys (unless allowed), shape mismatches.
    """
    targets = dict(module.state_dict(keep_vars=True))
    missing = check_keys(
        {k: v.shape for k, v in targets.items()}, {k: v.shape for k, v in tensors.items()},
        source, allow_missing,
    )
    with torch.no_grad():
        for name, value in tensors.items():
            targets[name].copy_(value.to(dtype=targets[name].dtype, device=targets[name].device))
    return LoadReport(loaded=sorted(tensors), missing=missing)


def load_file_into(module: nn.Module, path: str | Path, allow_missing: bool = False) -> LoadReport:
    """:func:`load_tensors` + :func:`load_into`, with the path in every error."""
    return load_into(module, load_tensors(path), source=str(path), allow_missing=allow_missing)
