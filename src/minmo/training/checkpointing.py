"""Training checkpoints: layout, atomic save, discovery, pruning and resume state.

One checkpoint is one directory ``<output_dir>/checkpoints/step_<8 digits>/``::

    trainable.safetensors   trainable tensors, names as in model.named_parameters()
    carried.safetensors     frozen tensors this run took from its ``init`` (earlier stages'
                            results), so that a later stage's init gets them too (not
                            written beside model.safetensors, which holds them)
    model.safetensors       every tensor, LoRA merged into the base weights, so it loads
                            into a plain model (only with save_full_weights)
    optimizer.pt            {optimizer name: full optimizer state keyed by parameter name}
    trainer.pt              {"schedulers": {name: state}, "rng": [per-rank RNG states]}
    state.json              step, data position, bad rows, world size, stage, last loss
    config.yaml             the resolved TrainConfig
    model.yaml              the resolved ModelConfig (MinMo stages)
    lora/                   LoRA adapters alone, peft layout (when the LLM has LoRA)

The directory is written under a temporary name, fsynced and renamed, so a directory named
``step_*`` is always complete; leftovers of a crash (``.tmp-*``) are deleted at start. All
tensors are full (gathered), so any number of processes can resume from it.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minmo.checkpoints import CheckpointError, atomic_directory, check_keys, load_tensors, save_tensors
from minmo.checkpoints.io import is_temporary
from minmo.checkpoints.overlay import package_dir, package_tensors
from minmo.config import save_yaml
from minmo.training.data_source import DataPosition

log = logging.getLogger(__name__)
CHECKPOINT_SUBDIR = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
CARRIED_FILE = "carried.safetensors"
FULL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer.pt"
STATE_FILE = "state.json"
LORA_DIR = "lora"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


# --------------------------------------------------------------------------------------
# RNG
# --------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, every CUDA device), in types
    that ``torch.load(weights_only=True)`` reads back."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------
# Discovery and pruning
# --------------------------------------------------------------------------------------


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Path of the checkpoint of ``step``."""
    return Path(output_dir) / CHECKPOINT_SUBDIR / f"step_{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINT_SUBDIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or ``None``."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def remove_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete half-written checkpoint directories a crash left behind."""
    root = Path(output_dir) / CHECKPOINT_SUBDIR
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if is_temporary(p):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                removed.append(p)
    return removed


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (``keep_last <= 0`` keeps all)."""
    if keep_last <= 0:
        return []
    old = list_checkpoints(output_dir)[:-keep_last]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its latest checkpoint).

    Raises:
        CheckpointError: nothing usable at ``path``.
    """
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    raise CheckpointError(f"{path}: no checkpoint here (expected a step_* directory with "
                          f"{STATE_FILE}, or a run directory holding {CHECKPOINT_SUBDIR}/step_*)")


# --------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------


@dataclass
class CheckpointPayload:
    """What one checkpoint holds (gathered on rank 0 before writing)."""

    step: int
    position: DataPosition
    trainable: dict[str, torch.Tensor]
    optimizers: dict[str, Any]
    schedulers: dict[str, Any]
    rng: list[dict[str, Any]]
    state: dict[str, Any] = field(default_factory=dict)
    full: dict[str, torch.Tensor] | None = None
    configs: dict[str, Any] = field(default_factory=dict)  # file name -> dataclass
    carried: dict[str, torch.Tensor] | None = None  # frozen tensors taken from init


def write_checkpoint(output_dir: str | Path, payload: CheckpointPayload,
                     lora_writer: Any = None) -> Path:
    """Write ``payload`` atomically as ``checkpoints/step_<step>``. Rank 0 only.

    Args:
        output_dir: run directory.
        payload: gathered tensors and states.
        lora_writer: ``callable(directory)`` that writes the peft adapter (config +
            tensors); called inside the temporary directory.
    """
    final = checkpoint_dir(output_dir, payload.step)
    with atomic_directory(final) as tmp:
        save_tensors(payload.trainable, tmp / TRAINABLE_FILE, metadata={"format": "pt"})
        if payload.carried and payload.full is None:  # init_tensors reads the full file first
            save_tensors(payload.carried, tmp / CARRIED_FILE, metadata={"format": "pt"})
        if payload.full is not None:
            save_tensors(payload.full, tmp / FULL_FILE, metadata={"format": "pt"})
        torch.save(payload.optimizers, tmp / OPTIMIZER_FILE)
        torch.save({"schedulers": payload.schedulers, "rng": payload.rng}, tmp / TRAINER_FILE)
        state = {"step": payload.step, "position": payload.position.to_dict(), **payload.state}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        for name, cfg in payload.configs.items():
            save_yaml(cfg, tmp / name)
        if lora_writer is not None:
            lora_writer(tmp / LORA_DIR)
    return final


# --------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------


@dataclass
class ResumeState:
    """A checkpoint read back for resuming."""

    path: Path
    step: int
    position: DataPosition
    state: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    optimizers: dict[str, Any]
    schedulers: dict[str, Any]
    rng: list[dict[str, Any]]


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint; it is incomplete or not a "
                              "minmo checkpoint: point resume= to another one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); the checkpoint is corrupt: delete "
                              "it to resume from the one before") from None


def read_checkpoint(path: str | Path) -> ResumeState:
    """Read a checkpoint directory for resuming.

    Raises:
        CheckpointError: a file is missing or corrupt (the message names it).
    """
    path = resolve_checkpoint(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        step = int(state["step"])
        position = DataPosition.from_dict(state["position"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable training state ({exc})") from None
    trainer = _torch_load(path / TRAINER_FILE)
    return ResumeState(
        path=path,
        step=step,
        position=position,
        state=state,
        trainable=load_tensors(path / TRAINABLE_FILE),
        optimizers=_torch_load(path / OPTIMIZER_FILE),
        schedulers=trainer["schedulers"],
        rng=trainer["rng"],
    )


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load a checkpoint's trainable tensors into ``model``: the names must be exactly the
    model's trainable parameters (same stage), with the same shapes.

    Raises:
        CheckpointError: naming missing, unexpected and mis-shaped keys.
    """
    params = dict(model.named_parameters())
    expected = {n: p.shape for n, p in params.items() if p.requires_grad}
    check_keys(expected, {k: v.shape for k, v in tensors.items()}, source)
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(dtype=params[name].dtype))


def merge_lora(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold peft LoRA adapters into their base linear layers (``W + scaling * B @ A``).

    Keys ``<m>.base_layer.weight/bias``, ``<m>.lora_A.<adapter>.weight`` and
    ``<m>.lora_B.<adapter>.weight`` become ``<m>.weight/bias``: the result loads into the
    same model *without* LoRA adapters. ``scaling`` is ``lora_alpha / r``.
    """
    out: dict[str, torch.Tensor] = {}
    lora_a = {k.split(".lora_A.")[0]: v for k, v in state.items() if ".lora_A." in k}
    lora_b = {k.split(".lora_B.")[0]: v for k, v in state.items() if ".lora_B." in k}
    if lora_a.keys() != lora_b.keys():
        raise CheckpointError(f"LoRA A/B tensors do not pair up: {sorted(lora_a.keys() ^ lora_b.keys())[:5]}")
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." in key:
            module, leaf = key.split(".base_layer.")
            if leaf == "weight" and module in lora_a:
                delta = lora_b[module].float() @ lora_a[module].float()
                value = (value.float() + scaling * delta).to(value.dtype)
            key = f"{module}.{leaf}"
        out[key] = value
    return out


def init_tensors(path: str | Path, lora_scaling: float | None = None
                 ) -> tuple[Path, dict[str, torch.Tensor]]:
    """Weights to start a stage from: a checkpoint (or run) directory's full weights when it
    has them (LoRA merged in), else its carried + trainable tensors (everything earlier
    stages trained); a single ``.safetensors`` file; or an overlay package (a directory, or
    ``minmo-small`` for the shipped one): its base weights with its trained tensors on top
    (:func:`~minmo.checkpoints.overlay.package_tensors`, LoRA checked against
    ``lora_scaling``).

    Returns:
        (the file or directory read, ``{name: tensor}``).
    """
    package = package_dir(path)
    if package is not None:
        return package, package_tensors(package, lora_scaling, log=log.info)
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, load_tensors(path)
    try:
        ckpt = resolve_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; init also takes a .safetensors file or a model package "
                              "(a directory with overlay.json, or minmo-small)") from None
    if (ckpt / FULL_FILE).is_file():
        return ckpt / FULL_FILE, load_tensors(ckpt / FULL_FILE)
    tensors = load_tensors(ckpt / CARRIED_FILE) if (ckpt / CARRIED_FILE).is_file() else {}
    tensors.update(load_tensors(ckpt / TRAINABLE_FILE))
    return ckpt, tensors
