"""Reader of CTranslate2's ``model.bin`` container (the faster-whisper model format).

Layout (little endian; ``string`` = ``u16 length incl. NUL`` + UTF-8 bytes + ``NUL``)::

    u32 binary_version                      (6 today; 1..6 read)
    string spec_name, u32 spec_revision     (version >= 2; e.g. "WhisperSpec", 3)
    u32 num_variables
    num_variables x:
        string name                         scope path, e.g. "encoder/layer_0/ffn/linear_0/weight"
        u8 rank, rank x u32 dims
        version >= 4: u8 dtype id (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 num_bytes
        version <  4: u8 item size (4 f32, 2 i16, 1 i8),  u32 num_items
        num_bytes of raw data
    version >= 3: u32 num_aliases, num_aliases x (string alias, string variable name)

Quantised weights come with a ``<name>_scale`` variable (int8: one scale per output row,
``float = int8 / scale``). Each tensor is read straight into its own buffer; a short read
is reported as a truncated file with the variable's name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from minmo.checkpoints.foreign_common import ForeignCheckpointError

CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
LEGACY_ITEM_SIZES = {4: torch.float32, 2: torch.int16, 1: torch.int8}
MAX_BINARY_VERSION = 6


@dataclass
class CT2Model:
    """The content of a ``model.bin``.

    Attributes:
        path: the file read.
        binary_version: container version.
        spec: model specification name (``WhisperSpec``, ``TransformerSpec``, ...).
        revision: specification revision.
        variables: tensors by scope name, in file order.
        aliases: ``{alias: variable name}`` (duplicated tensors stored once).
    """

    path: Path
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor:
        """A variable by name, following aliases.

        Raises:
            ForeignCheckpointError: no such variable (names the file).
        """
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        if name not in self.variables:
            raise ForeignCheckpointError(f"{self.path}: no variable '{name}' in this "
                                         f"{self.spec} model")
        return self.variables[name]

    def has(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def dequantized(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A weight as floats: int8/int16 weights are divided by their ``_scale`` (per
        output row, or one scalar); float weights are cast."""
        value = self.get(name)
        if value.dtype.is_floating_point:
            return value.to(dtype)
        scale_name = name + "_scale"
        if not self.has(scale_name):
            raise ForeignCheckpointError(
                f"{self.path}: '{name}' is {value.dtype} but has no '{scale_name}'")
        scale = self.get(scale_name).to(torch.float32)
        floats = value.to(torch.float32)
        shape = (-1,) + (1,) * (floats.dim() - 1)
        return (floats / (scale.reshape(shape) if scale.numel() > 1 else scale)).to(dtype)


def _read_exact(f: BinaryIO, count: int, path: Path, what: str) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise ForeignCheckpointError(
            f"{path}: truncated while reading {what} ({len(data)} of {count} bytes); "
            "re-copy the model directory")
    return data


def _read_string(f: BinaryIO, path: Path, what: str) -> str:
    (length,) = struct.unpack("<H", _read_exact(f, 2, path, what))
    raw = _read_exact(f, length, path, what)
    if length == 0 or raw[-1:] != b"\0":
        raise ForeignCheckpointError(f"{path}: malformed string in {what}")
    return raw[:-1].decode("utf-8")


def read_model_bin(path: str | Path) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (or a directory holding one).

    Raises:
        ForeignCheckpointError: missing, truncated or malformed file, unknown version or
            dtype (all naming the file and the variable).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: CTranslate2 model.bin not found")
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", _read_exact(f, 4, path, "the header"))
        if not 1 <= version <= MAX_BINARY_VERSION:
            raise ForeignCheckpointError(
                f"{path}: binary version {version} is not a CTranslate2 model.bin minmo reads "
                f"(1..{MAX_BINARY_VERSION})")
        spec, revision = "", 1
        if version >= 2:
            spec = _read_string(f, path, "the spec name")
            (revision,) = struct.unpack("<I", _read_exact(f, 4, path, "the spec revision"))
        model = CT2Model(path, version, spec, revision)
        (count,) = struct.unpack("<I", _read_exact(f, 4, path, "the variable count"))
        for index in range(count):
            name = _read_string(f, path, f"variable #{index} name")
            (rank,) = struct.unpack("<B", _read_exact(f, 1, path, name))
            dims = struct.unpack(f"<{rank}I", _read_exact(f, 4 * rank, path, name))
            if version >= 4:
                type_id, num_bytes = struct.unpack("<BI", _read_exact(f, 5, path, name))
                if type_id >= len(CT2_DTYPES):
                    raise ForeignCheckpointError(f"{path}: variable '{name}' has unknown dtype id {type_id}")
                dtype = CT2_DTYPES[type_id]
            else:
                item_size, num_items = struct.unpack("<BI", _read_exact(f, 5, path, name))
                if item_size not in LEGACY_ITEM_SIZES:
                    raise ForeignCheckpointError(f"{path}: variable '{name}' has item size {item_size}")
                dtype, num_bytes = LEGACY_ITEM_SIZES[item_size], num_items * item_size
            tensor = torch.empty(dims, dtype=dtype)
            if tensor.numel() * tensor.element_size() != num_bytes:
                raise ForeignCheckpointError(
                    f"{path}: variable '{name}' declares {num_bytes} bytes for shape {dims} {dtype}")
            if num_bytes:
                got = f.readinto(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
                if got != num_bytes:
                    raise ForeignCheckpointError(
                        f"{path}: truncated while reading variable '{name}' ({got} of {num_bytes} "
                        "bytes); re-copy the model directory")
            model.variables[name] = tensor
        if version >= 3:
            (num_aliases,) = struct.unpack("<I", _read_exact(f, 4, path, "the alias count"))
            for _ in range(num_aliases):
                alias = _read_string(f, path, "an alias")
                model.aliases[alias] = _read_string(f, path, f"alias '{alias}'")
        if f.read(1):
            raise ForeignCheckpointError(f"{path}: unexpected bytes after the last record")
    return model
