"""Checkpoint files: safetensors save/load with atomic writes and strict key checking."""

from minmo.checkpoints.io import (
    CheckpointError,
    LoadReport,
    atomic_directory,
    atomic_file,
    check_keys,
    load_file_into,
    load_into,
    load_tensors,
    save_tensors,
)

__all__ = [
    "CheckpointError",
    "LoadReport",
    "atomic_directory",
    "atomic_file",
    "check_keys",
    "load_file_into",
    "load_into",
    "load_tensors",
    "save_tensors",
]
