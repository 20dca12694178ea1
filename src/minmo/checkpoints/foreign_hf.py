"""Hugging Face model directories (Qwen2.5, SmolLM2 converted from GGUF, Whisper): shards
read tensor by tensor straight into a model's memory.

A HF directory holds ``config.json``, the weights as ``model.safetensors`` or as shards
``model-00001-of-0000N.safetensors`` listed in ``model.safetensors.index.json``
(``{"metadata": {...}, "weight_map": {tensor name: shard file}}``), and tokenizer files.

A safetensors file is ``u64 little-endian header length N`` + ``N`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``) + the
data; offsets count from the end of the header. :func:`read_header` parses that and checks
the file is long enough, so a truncated download is refused with its path before any
tensor is read.

:func:`load_into_meta_module` is the low-memory loader: the model is built with its
parameters on the ``meta`` device (no memory), then each tensor is allocated once, filled
with ``readinto`` from the file (no mmap, so the page cache does not count against the
process) and assigned. Peak memory is the model's size plus the largest single tensor when
a dtype conversion is needed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from minmo.checkpoints.foreign_common import ForeignCheckpointError, read_json

if TYPE_CHECKING:
    from minmo.checkpoints.foreign_common import ImportedPart
    from minmo.config import LLMConfig

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass
class TensorEntry:
    """Where one tensor lies in a safetensors file.

    Attributes:
        name: tensor name; dtype: torch dtype; shape: dims; begin/end: absolute byte range.
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class SafetensorsHeader:
    """Parsed header of one file: ``entries`` by name and the file's ``metadata``."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse a safetensors header and check that the file holds all the bytes it declares.

    Raises:
        ForeignCheckpointError: missing, truncated or malformed file (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: safetensors file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ForeignCheckpointError(f"{path}: truncated ({size} bytes; no safetensors header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ForeignCheckpointError(
                f"{path}: truncated or not safetensors (header claims {header_len} bytes, the "
                f"file has {size}); re-copy the file")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as exc:
            raise ForeignCheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    data_end = base
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ForeignCheckpointError(
                f"{path}: tensor '{name}' has an unsupported or malformed header entry "
                f"{info!r}") from None
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * dtype.itemsize:
            raise ForeignCheckpointError(
                f"{path}: tensor '{name}' declares {end - begin} bytes for shape {shape} "
                f"{info['dtype']}; the file is corrupt")
        entries[name] = TensorEntry(name, dtype, shape, base + begin, base + end)
        data_end = max(data_end, base + end)
    if data_end > size:
        raise ForeignCheckpointError(
            f"{path}: truncated: its header needs {data_end} bytes, the file has {size}; "
            "re-copy or re-download the file")
    return SafetensorsHeader(path, entries, metadata)


def read_tensor(f: Any, entry: TensorEntry, out: torch.Tensor | None = None) -> torch.Tensor:
    """Read one tensor from an open file into ``out`` (allocated when ``None``).

    ``out`` must be contiguous, on the CPU and of the entry's dtype and shape.
    """
    if out is None:
        out = torch.empty(entry.shape, dtype=entry.dtype)
    f.seek(entry.begin)
    if entry.end > entry.begin:
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        got = f.readinto(view)
        if got != entry.end - entry.begin:
            raise ForeignCheckpointError(
                f"{f.name}: truncated while reading '{entry.name}' ({got} of "
                f"{entry.end - entry.begin} bytes)")
    return out


def hf_weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a HF directory (index order), all checked to exist.

    Raises:
        ForeignCheckpointError: no weights, or a shard named by the index is missing.
    """
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ForeignCheckpointError(f"{index}: has no 'weight_map'")
        files = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in files if not (directory / name).is_file()]
        if missing:
            raise ForeignCheckpointError(
                f"{index}: names shards that are missing: {', '.join(missing)}; copy them into "
                f"{directory}")
        return [directory / name for name in files]
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    raise ForeignCheckpointError(
        f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}; expected a Hugging Face model "
        "directory with safetensors weights")


def hf_headers(directory: str | Path) -> list[SafetensorsHeader]:
    """Headers of every shard; checks the index (when there is one) against the shards."""
    files = hf_weight_files(directory)
    headers = [read_header(p) for p in files]
    index = Path(directory) / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index)["weight_map"]
        where = {name: h.path.name for h in headers for name in h.entries}
        for name, shard in weight_map.items():
            if where.get(name) != shard:
                raise ForeignCheckpointError(
                    f"{index}: tensor '{name}' is listed in {shard} but "
                    f"{'is in ' + where[name] if name in where else 'is in no shard'}")
    return headers


def iter_hf_tensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of a HF directory, one at a time."""
    for header in hf_headers(directory):
        with open(header.path, "rb") as f:
            for entry in header.entries.values():
                yield entry.name, read_tensor(f, entry)


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


def load_into_meta_module(
    model: nn.Module,
    directory: str | Path,
    dtype: torch.dtype,
    tied: dict[str, str] | None = None,
    rename: dict[str, str] | None = None,
) -> list[str]:
    """Fill a model whose parameters live on the meta device from a HF directory.

    Each tensor is allocated on the CPU in ``dtype``, read from its shard and assigned in
    place of the meta parameter (``requires_grad`` kept). Buffers already materialised (e.g.
    rotary frequencies computed at construction) are left alone unless the file has them.

    Args:
        model: the module (``state_dict`` names as in the files, after ``rename``).
        directory: HF model directory.
        dtype: floating dtype of the loaded parameters (integer tensors keep theirs).
        tied: ``{name: source name}`` parameters that may be absent from the files because
            they share the source's tensor (tied embeddings); they are re-tied afterwards.
        rename: ``{file name: model name}`` for tensors stored under another name.

    Returns:
        Names loaded.

    Raises:
        ForeignCheckpointError: unexpected keys, shape mismatches, or model parameters no
            shard provides (all named, with the directory).
    """
    tied = tied or {}
    rename = rename or {}
    targets = dict(model.state_dict(keep_vars=True))
    headers = hf_headers(directory)
    seen: set[str] = set()
    unexpected, mis_shaped = [], []
    for header in headers:
        for entry in header.entries.values():
            name = rename.get(entry.name, entry.name)
            if name not in targets:
                unexpected.append(f"{entry.name} ({header.path.name})")
            elif tuple(targets[name].shape) != entry.shape:
                mis_shaped.append(f"{entry.name} (file {entry.shape}, model "
                                  f"{tuple(targets[name].shape)})")
            seen.add(name)
    missing = sorted(set(targets) - seen - set(tied) - _materialised_buffers(model, targets))
    problems = []
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:8]))
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:8])
                        + (f" ... ({len(missing)} in all)" if len(missing) > 8 else ""))
    if mis_shaped:
        problems.append("shape mismatch: " + ", ".join(mis_shaped[:8]))
    if problems:
        raise ForeignCheckpointError(
            f"{directory}: does not match the model built from its config.json: "
            + "; ".join(problems))
    loaded = []
    for header in headers:
        with open(header.path, "rb") as f:
            for entry in header.entries.values():
                name = rename.get(entry.name, entry.name)
                target = targets[name]
                want = dtype if entry.dtype.is_floating_point else entry.dtype
                if entry.dtype == want:
                    value = read_tensor(f, entry)
                else:
                    value = read_tensor(f, entry).to(want)
                owner, leaf = _owner(model, name)
                if isinstance(target, nn.Parameter):
                    owner._parameters[leaf] = nn.Parameter(value, requires_grad=target.requires_grad)
                else:
                    owner._buffers[leaf] = value
                loaded.append(name)
    for name, source in tied.items():
        if name not in seen:
            owner, leaf = _owner(model, name)
            src_owner, src_leaf = _owner(model, source)
            owner._parameters[leaf] = src_owner._parameters[src_leaf]
    still_meta = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if still_meta:
        raise ForeignCheckpointError(f"{directory}: tensors left unloaded: {', '.join(still_meta[:8])}")
    return loaded


def _materialised_buffers(model: nn.Module, targets: dict[str, torch.Tensor]) -> set[str]:
    """State-dict buffers already holding values (not meta): files need not provide them."""
    buffers = {n for n, _ in model.named_buffers()}
    return {n for n in buffers & set(targets) if not targets[n].is_meta}


# --------------------------------------------------------------------------------------
# A HF causal LM directory as minmo's LLM part
# --------------------------------------------------------------------------------------

SUPPORTED_ARCHS = {"qwen2": "qwen2", "llama": "llama"}


def llm_config_from_hf(directory: str | Path) -> "LLMConfig":
    """``config.json`` of a Qwen2/Llama HF directory -> minmo :class:`LLMConfig` (shapes).

    Raises:
        ForeignCheckpointError: another architecture, or a feature minmo's LLM config cannot
            express (explicit head_dim, biases in Llama, rope scaling) - named.
    """
    from minmo.config import LLMConfig

    path = Path(directory) / "config.json"
    config = read_json(path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHS:
        raise ForeignCheckpointError(
            f"{path}: model_type {model_type!r} is not supported (minmo's LLM slot builds "
            f"{', '.join(SUPPORTED_ARCHS)} from its config)")
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        rope = config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta"))
        fields = dict(
            arch=SUPPORTED_ARCHS[model_type], vocab_size=int(config["vocab_size"]),
            hidden_size=hidden, intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads", heads)),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            rope_theta=float(rope if rope is not None else 10000.0),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ForeignCheckpointError(f"{path}: missing or malformed field ({exc})") from None
    if config.get("head_dim") not in (None, hidden // heads):
        raise ForeignCheckpointError(f"{path}: head_dim {config['head_dim']} != hidden_size / "
                                     f"num_attention_heads; minmo's LLM config cannot express it")
    for flag in ("attention_bias", "mlp_bias"):
        if model_type == "llama" and config.get(flag):
            raise ForeignCheckpointError(f"{path}: '{flag}: true' is not supported")
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or \
        (config.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type not in (None, "default"):
        raise ForeignCheckpointError(f"{path}: rope scaling '{rope_type}' is not supported")
    return LLMConfig(**fields)


def import_hf_llm(directory: str | Path, lora: Any = None) -> "ImportedPart":
    """Read a HF causal LM directory as minmo's LLM part.

    Tensors are named as in minmo's ``LLM`` module (``model.<HF key>``), in float32. The
    tokenizer (with minmo's two speech delimiters added) decides the embedding rows: when it
    has more tokens than the checkpoint's table, new rows are the mean of the existing ones
    (transformers' ``mean_resizing``), for the input table and an untied output head.

    Args:
        directory: HF model directory with tokenizer files.
        lora: LoRA settings to carry into the config (default: :class:`LoraConfig`).

    Returns:
        :class:`ImportedPart` with ``sections = {"llm": LLMConfig}`` whose ``tokenizer`` is
        the source directory (the writer copies it); ``report.notes`` tells added rows.
    """
    from minmo.checkpoints.foreign_common import ImportedPart, PartReport
    from minmo.models.llm import load_tokenizer

    directory = Path(directory)
    cfg = llm_config_from_hf(directory)
    if lora is not None:
        cfg.lora = lora
    cfg.tokenizer = str(directory)
    tokenizer = load_tokenizer(cfg)
    tensors = {f"model.{name}": value.float() if value.is_floating_point() else value
               for name, value in iter_hf_tensors(directory)}
    report = PartReport("llm", str(directory))
    embed_key, head_key = "model.model.embed_tokens.weight", "model.lm_head.weight"
    if embed_key not in tensors:
        raise ForeignCheckpointError(f"{directory}: no 'model.embed_tokens.weight' tensor")
    if cfg.tie_word_embeddings:
        if head_key in tensors and not torch.equal(tensors[head_key], tensors[embed_key]):
            raise ForeignCheckpointError(f"{directory}: tie_word_embeddings is true but "
                                         "lm_head.weight differs from embed_tokens.weight")
        tensors[head_key] = tensors[embed_key]
    rows = tensors[embed_key].shape[0]
    if rows != cfg.vocab_size:
        raise ForeignCheckpointError(f"{directory}: embed_tokens has {rows} rows but config.json "
                                     f"says vocab_size {cfg.vocab_size}")
    if len(tokenizer) > rows:
        keys = [embed_key] if cfg.tie_word_embeddings else [embed_key, head_key]
        for key in keys:
            table = tensors[key]
            extra = table.mean(dim=0, keepdim=True).expand(len(tokenizer) - rows, -1)
            tensors[key] = torch.cat([table, extra])
        if cfg.tie_word_embeddings:
            tensors[head_key] = tensors[embed_key]
        report.notes.append(f"embedding rows {rows} -> {len(tokenizer)} for the tokenizer's added "
                            "tokens (<|startofspeech|>, <|endofspeech|>), new rows = mean row")
        cfg.vocab_size = len(tokenizer)
    report.loaded = len(tensors)
    return ImportedPart("llm", tensors, {"llm": cfg}, report)
