"""Shared pieces of the foreign-checkpoint importers: safe file reading and key-map reports.

Nothing here executes code from a checkpoint: ``.pt`` files go through
``torch.load(weights_only=True)``, YAML through a safe loader that keeps HyperPyYAML's
``!new:`` / ``!name:`` / ``!ref`` tags as plain data, JSON through :mod:`json`.

Every error is a :class:`ForeignCheckpointError` (a :class:`CheckpointError`) that names
the file, the key and what to do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from minmo.checkpoints.io import CheckpointError, check_keys


class ForeignCheckpointError(CheckpointError):
    """A foreign checkpoint directory is incomplete, corrupt or does not fit minmo's
    module. The message names the path and the offending keys."""


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def require_file(directory: str | Path, name: str, what: str) -> Path:
    """``directory / name``, or an error naming the missing file and what it is for."""
    path = Path(directory) / name
    if not path.is_file():
        raise ForeignCheckpointError(
            f"{path}: missing ({what}); is {directory} a complete copy of the release?")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path`` (errors name the file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ForeignCheckpointError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise ForeignCheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ForeignCheckpointError(f"{path}: expected a JSON object at the top level")
    return data


def torch_load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.pt`` state dict read with ``torch.load(weights_only=True)`` (no pickled code).

    Accepts a plain ``{name: tensor}`` mapping or one wrapped as ``{"state_dict": ...}``,
    ``{"model": ...}`` or ``{"model_state_dict": ...}`` (FunASR/CosyVoice trainers). Non-tensor
    entries next to the tensors (step counters, epochs) are ignored.

    Raises:
        ForeignCheckpointError: missing, truncated or corrupt file, or no tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: checkpoint file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # pickle/zip errors for truncated or foreign files
        raise ForeignCheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); the file is "
            "truncated or corrupt (compare its size with the release) or holds pickled code, "
            "which minmo refuses to run") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict):
        raise ForeignCheckpointError(f"{path}: expected a state dict, got {type(data).__name__}")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ForeignCheckpointError(f"{path}: holds no tensors")
    return tensors


# --------------------------------------------------------------------------------------
# YAML with HyperPyYAML tags, read as data
# --------------------------------------------------------------------------------------


@dataclass
class TaggedNode:
    """A HyperPyYAML ``!new:`` / ``!name:`` / ``!apply:`` node kept as data.

    Attributes:
        tag: ``new``, ``name`` or ``apply``.
        target: the dotted Python name it would have called (never imported here).
        args: keyword arguments (mapping node) or positional ones (sequence node).
    """

    tag: str
    target: str
    args: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        """Keyword argument ``key`` (``default`` when absent or positional)."""
        return self.args.get(key, default) if isinstance(self.args, dict) else default


@dataclass
class RefNode:
    """A HyperPyYAML ``!ref <key>`` (or ``!ref <a> * <b>`` expression), resolved later."""

    expression: str


class _TagSafeLoader(yaml.SafeLoader):
    """SafeLoader that turns HyperPyYAML tags into :class:`TaggedNode` / :class:`RefNode`."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> TaggedNode:
    tag, _, target = suffix.partition(":")
    if isinstance(node, yaml.MappingNode):
        args: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        args = loader.construct_scalar(node) or None
    return TaggedNode(tag=tag, target=target, args=args)


def _construct_ref(loader: yaml.SafeLoader, node: yaml.Node) -> RefNode:
    return RefNode(str(loader.construct_scalar(node)))


for _tag in ("new", "name", "apply"):
    _TagSafeLoader.add_multi_constructor(
        f"!{_tag}:", lambda loader, suffix, node, _t=_tag: _construct_tagged(loader, f"{_t}:{suffix}", node))
_TagSafeLoader.add_constructor("!ref", _construct_ref)
_TagSafeLoader.add_constructor("!copy", _construct_ref)

_REF_TOKEN = re.compile(r"<([^<>]+)>")


def _resolve(value: Any, root: dict[str, Any], path: str, depth: int = 0) -> Any:
    if depth > 20:
        raise ForeignCheckpointError(f"{path}: !ref chain too deep (a cycle?)")
    if isinstance(value, RefNode):
        expr = value.expression.strip()
        names = _REF_TOKEN.findall(expr)
        values = {}
        for name in names:
            node: Any = root
            for part in name.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ForeignCheckpointError(f"{path}: !ref <{name}> names no key")
                node = node[part]
            values[name] = _resolve(node, root, path, depth + 1)
        if len(names) == 1 and expr == f"<{names[0]}>":
            return values[names[0]]
        # a small arithmetic expression of numbers, e.g. "<chunk_size> * <token_mel_ratio>"
        text = _REF_TOKEN.sub(lambda m: repr(values[m.group(1)]), expr)
        if not re.fullmatch(r"[0-9eE.+\-*/() ]+", text):
            raise ForeignCheckpointError(f"{path}: cannot evaluate !ref {expr!r} as arithmetic")
        return _safe_arithmetic(text, path)
    if isinstance(value, TaggedNode):
        return TaggedNode(value.tag, value.target, _resolve(value.args, root, path, depth + 1))
    if isinstance(value, dict):
        return {k: _resolve(v, root, path, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root, path, depth + 1) for v in value]
    return value


def _safe_arithmetic(text: str, path: str) -> float | int:
    """Evaluate ``+ - * /`` of numbers without ``eval``."""
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.USub: operator.neg}

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.operand))
        raise ForeignCheckpointError(f"{path}: unsupported expression {text!r}")

    return walk(ast.parse(text, mode="eval"))


def read_tagged_yaml(path: str | Path) -> dict[str, Any]:
    """Read a (Hyper)PyYAML file as data: tags become :class:`TaggedNode`, ``!ref`` values
    are resolved against the top level. Nothing is imported or called.

    Raises:
        ForeignCheckpointError: missing file, invalid YAML, unresolvable reference.
    """
    path = Path(path)
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_TagSafeLoader)  # noqa: S506 (safe subclass)
    except yaml.YAMLError as exc:
        raise ForeignCheckpointError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ForeignCheckpointError(f"{path}: top level must be a mapping")
    return _resolve(data, data, str(path))


# --------------------------------------------------------------------------------------
# Reports and strict checks
# --------------------------------------------------------------------------------------


@dataclass
class PartReport:
    """What an importer did with one part.

    Attributes:
        part: minmo part name (``llm``, ``encoder``, ``voice_lm``, ...).
        source: the file(s) read.
        loaded: number of tensors mapped into the part.
        dropped: source keys deliberately not used, with the reason.
        fresh: part tensors the source does not provide (left at their initial values).
        notes: remarks (row permutations, dequantisation, ...).
    """

    part: str
    source: str
    loaded: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable paragraph."""
        lines = [f"{self.part}: {self.loaded} tensors from {self.source}"]
        for key, why in self.dropped.items():
            lines.append(f"  dropped {key}: {why}")
        for key in self.fresh:
            lines.append(f"  fresh (not in the source) {key}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.part, "source": self.source, "loaded": self.loaded,
                "dropped": dict(self.dropped), "fresh": list(self.fresh), "notes": list(self.notes)}


def check_against_module(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str,
                         allow_fresh: tuple[str, ...] = ()) -> list[str]:
    """Strictly compare mapped tensors with a module's state dict (names and shapes).

    Args:
        module: the target part (may live on the meta device).
        tensors: ``{name: tensor}`` in the module's naming.
        source: path named in errors.
        allow_fresh: module keys that the source may lack (they keep their initial values).

    Returns:
        The allowed module keys the source lacks.

    Raises:
        ForeignCheckpointError: unexpected, missing or mis-shaped keys (named).
    """
    expected = {k: v.shape for k, v in module.state_dict().items()}
    got = {k: v.shape for k, v in tensors.items()}
    try:
        missing = check_keys(expected, got, source, allow_missing=True)
    except CheckpointError as exc:
        raise ForeignCheckpointError(str(exc)) from None
    not_allowed = [k for k in missing if k not in allow_fresh]
    if not_allowed:
        shown = ", ".join(not_allowed[:8]) + (f", ... ({len(not_allowed)} in all)"
                                              if len(not_allowed) > 8 else "")
        raise ForeignCheckpointError(
            f"{source}: does not match the model: missing keys (model has, file lacks): "
            f"{shown}. Check that the directory is the release it claims to be.")
    return missing


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + name: tensor}``."""
    return {prefix + k: v for k, v in tensors.items()}


@dataclass
class ImportedPart:
    """One minmo part read from a foreign directory, ready to be written or loaded.

    Attributes:
        part: minmo part name: ``encoder``, ``llm``, ``voice_lm``, ``flow``, ``vocoder``.
        tensors: ``{name: tensor}`` in the part module's own naming (no part prefix).
        sections: config sections this source determines, ``{section name: dataclass}``
            (e.g. ``{"encoder": EncoderConfig, "frontend": FrontendConfig}``).
        files: side files to copy into a minmo checkpoint directory, ``{name: source}``
            (e.g. ``am.mvn``); the config fields that point at them are set by the writer.
        report: what was loaded, dropped and left fresh.
    """

    part: str
    tensors: dict[str, torch.Tensor]
    sections: dict[str, Any]
    report: PartReport
    files: dict[str, Path] = field(default_factory=dict)
