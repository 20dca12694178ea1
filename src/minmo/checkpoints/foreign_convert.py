"""Foreign release directories -> one minmo checkpoint directory (``minmo convert``).

Output layout::

    OUT/
      config.yaml         the ModelConfig: the base config with the sections the sources
                          determine (encoder, frontend, llm, voice_lm) replaced
      model.safetensors   every converted tensor, named as in ``MinMo.state_dict()``
                          (``encoder.*``, ``llm.model.*``, ``voice_lm.*``)
      flow.safetensors    CosyVoice 2 flow matching / HiFT vocoder in their modules' naming
      vocoder.safetensors (``flow.path`` / ``vocoder.path``; the runtime also finds them here)
      tokenizer/          the LLM's tokenizer files (HF layout; ``llm.tokenizer`` points here)
      am.mvn, *.bpe.model SenseVoice CMVN (``frontend.cmvn_file``) and CTC vocabulary
      campplus.onnx       CosyVoice 2 speaker model (``speaker.kind: onnx``) and speech
      speech_tokenizer_v2.onnx  tokenizer (``speech_tokenizer.kind: onnx``), each run once
                          with onnxruntime on a probe signal before it is copied
      convert.json        sources, per-part reports (dropped/fresh keys), fresh modules

Parts no release provides (input projector, output projector, duplex predictor: MinMo
trains them) are not in ``model.safetensors``; ``build_model`` initialises them. Start a
training stage from the directory with ``model: OUT/config.yaml`` and
``init: OUT/model.safetensors``. Paths in ``config.yaml`` are absolute.

Every tensor is checked against the MinMo built (on the meta device) from the final config
before anything is written: unexpected, missing or mis-shaped keys are errors naming them.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from minmo.checkpoints.cosyvoice2 import ONNX_SECTIONS
from minmo.checkpoints.foreign_common import ForeignCheckpointError, ImportedPart, prefixed
from minmo.checkpoints.io import CheckpointError, atomic_directory, check_keys, save_tensors
from minmo.config import ModelConfig, save_yaml

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "convert.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "tokenizer.model", "generation_config.json")
PART_PREFIX = {"encoder": "encoder.", "llm": "llm.", "voice_lm": "voice_lm."}
SEPARATE_FILES = {"flow": "flow.safetensors", "vocoder": "vocoder.safetensors"}  # not in MinMo


@dataclass
class ConvertSources:
    """Foreign directories to import (any subset).

    Attributes:
        sensevoice: SenseVoice-Small FunASR folder (encoder + CTC head + front end).
        whisper_hf: transformers Whisper folder (encoder).
        whisper_ct2: CTranslate2 Whisper folder (encoder).
        llm_hf: HF causal LM folder (Qwen2.5, or a converted GGUF).
        llm_gguf: a ``.gguf`` file, converted once into a HF directory at ``gguf_cache``.
        gguf_cache: where that conversion is kept (default: the GGUF path with ``.hf``).
        cosyvoice2: CosyVoice 2 release folder (voice token LM, speaker ONNX).
        llm_reference: point ``llm.path`` at ``llm_hf`` instead of copying its weights
            (for 7B: no second copy of the LLM on disk).
    """

    sensevoice: Path | None = None
    whisper_hf: Path | None = None
    whisper_ct2: Path | None = None
    llm_hf: Path | None = None
    llm_gguf: Path | None = None
    gguf_cache: Path | None = None
    cosyvoice2: Path | None = None
    llm_reference: bool = False


def import_parts(sources: ConvertSources, log: Callable[[str], None] = print,
                 base: ModelConfig | None = None) -> list[ImportedPart]:
    """Read every requested source into :class:`ImportedPart` objects (none written yet).
    ``base`` supplies the config fields a release does not set (flow/vocoder streaming).

    Raises:
        ForeignCheckpointError: conflicting sources (two encoders, two LLMs) or any import
            error.
    """
    encoders = [s for s in (sources.sensevoice, sources.whisper_hf, sources.whisper_ct2) if s]
    if len(encoders) > 1:
        raise ForeignCheckpointError("give one encoder source: --sensevoice, --whisper-hf or "
                                     "--whisper-ct2")
    if sources.llm_hf and sources.llm_gguf:
        raise ForeignCheckpointError("give one LLM source: --llm-hf or --llm-gguf")
    parts: list[ImportedPart] = []

    def timed(what: str, fn: Callable[[], ImportedPart]) -> None:
        start = time.perf_counter()
        part = fn()
        log(f"[convert] {what}: {part.report.loaded} tensors in {time.perf_counter() - start:.1f}s")
        parts.append(part)

    if sources.sensevoice:
        from minmo.checkpoints.sensevoice import import_sensevoice

        timed(f"SenseVoice {sources.sensevoice}", lambda: import_sensevoice(sources.sensevoice))
    if sources.whisper_hf:
        from minmo.checkpoints.whisper import import_hf_whisper

        timed(f"Whisper (transformers) {sources.whisper_hf}", lambda: import_hf_whisper(sources.whisper_hf))
    if sources.whisper_ct2:
        from minmo.checkpoints.whisper import import_ct2_whisper

        timed(f"Whisper (CTranslate2) {sources.whisper_ct2}", lambda: import_ct2_whisper(sources.whisper_ct2))
    llm_dir = sources.llm_hf
    if sources.llm_gguf:
        from minmo.checkpoints.gguf import gguf_to_hf_dir

        cache = sources.gguf_cache or sources.llm_gguf.with_suffix(".hf")
        if not (cache / "config.json").is_file():
            start = time.perf_counter()
            gguf_to_hf_dir(sources.llm_gguf, cache)
            log(f"[convert] GGUF -> safetensors (once) {cache} in {time.perf_counter() - start:.1f}s")
        llm_dir = cache
    if llm_dir:
        from minmo.checkpoints.foreign_hf import import_hf_llm, llm_config_from_hf

        if sources.llm_reference:
            cfg = llm_config_from_hf(llm_dir)
            cfg.path, cfg.tokenizer = str(Path(llm_dir).resolve()), "auto"
            from minmo.checkpoints.foreign_common import PartReport

            report = PartReport("llm", str(llm_dir), notes=["weights referenced by llm.path, not copied"])
            parts.append(ImportedPart("llm", {}, {"llm": cfg}, report))
        else:
            timed(f"LLM {llm_dir}", lambda: import_hf_llm(llm_dir))
    if sources.cosyvoice2:
        from minmo.checkpoints.cosyvoice2 import (
            check_cosyvoice2_onnx,
            import_cosyvoice2_flow,
            import_cosyvoice2_hift,
            import_cosyvoice2_llm,
        )

        cv2 = Path(sources.cosyvoice2)
        timed(f"CosyVoice 2 voice LM {cv2}", lambda: import_cosyvoice2_llm(cv2))
        onnx_files, notes = check_cosyvoice2_onnx(cv2)
        parts[-1].files.update(onnx_files)
        parts[-1].report.notes.extend(notes)
        timed(f"CosyVoice 2 flow {cv2}", lambda: import_cosyvoice2_flow(cv2, base.flow if base else None))
        timed(f"CosyVoice 2 HiFT {cv2}", lambda: import_cosyvoice2_hift(cv2, base.vocoder if base else None))
    if not parts:
        raise ForeignCheckpointError("nothing to convert: give at least one source directory")
    return parts


def merged_config(base: ModelConfig, parts: list[ImportedPart], name: str | None = None) -> ModelConfig:
    """``base`` with the sections the parts determine replaced (deep copies)."""
    cfg = copy.deepcopy(base)
    for part in parts:
        for section, value in part.sections.items():
            if section == "llm":
                value.lora = copy.deepcopy(cfg.llm.lora)
            setattr(cfg, section, copy.deepcopy(value))
    if name:
        cfg.name = name
    return cfg


def check_against_minmo(cfg: ModelConfig, tensors: dict[str, torch.Tensor], source: str) -> list[str]:
    """Build MinMo from ``cfg`` on the meta device and check names and shapes strictly.

    Returns:
        Top-level module groups the tensors leave at their fresh initialisation.
    """
    from minmo.models.builders import build_model

    shape_cfg = copy.deepcopy(cfg)
    shape_cfg.llm.path = None  # shapes only: nothing is read on the meta device
    if shape_cfg.llm.tokenizer == "auto":
        shape_cfg.llm.tokenizer = cfg.llm.path or "auto"
    with torch.device("meta"):
        model = build_model(shape_cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    try:
        check_keys(expected, {k: v.shape for k, v in tensors.items()}, source, allow_missing=True)
    except CheckpointError as exc:
        raise ForeignCheckpointError(str(exc)) from None
    groups = sorted({k.split(".")[0] for k in expected})
    covered = {k.split(".")[0] for k in tensors}
    if cfg.llm.path:
        covered.add("llm")
    return [g for g in groups if g not in covered]


def write_minmo_checkpoint(out_dir: str | Path, base: ModelConfig, parts: list[ImportedPart],
                           sources: dict[str, str] | None = None, name: str | None = None,
                           log: Callable[[str], None] = print) -> Path:
    """Write imported parts as a minmo checkpoint directory (layout in the module doc).

    Raises:
        ForeignCheckpointError: names/shapes that do not fit MinMo (nothing is written).
        CheckpointError: ``out_dir`` exists.
    """
    out_dir = Path(out_dir).resolve()
    cfg = merged_config(base, parts, name)
    tensors: dict[str, torch.Tensor] = {}
    llm_part = next((p for p in parts if p.part == "llm"), None)
    if llm_part is not None and llm_part.tensors:
        cfg.llm.tokenizer = str(out_dir / TOKENIZER_DIR)
    for part in parts:
        if part.part in SEPARATE_FILES:
            getattr(cfg, part.part).path = str(out_dir / SEPARATE_FILES[part.part])
        else:
            tensors.update(prefixed(part.tensors, PART_PREFIX[part.part]))
        for file_name in part.files:
            if file_name.endswith(".mvn"):
                cfg.frontend.cmvn_file = str(out_dir / file_name)
            if file_name in ONNX_SECTIONS:
                section = getattr(cfg, ONNX_SECTIONS[file_name])
                section.kind, section.onnx_path = "onnx", str(out_dir / file_name)
    check_cfg = copy.deepcopy(cfg)  # the same config with the side files still at their sources
    if llm_part is not None and llm_part.tensors:
        check_cfg.llm.tokenizer = llm_part.sections["llm"].tokenizer
    for part in parts:
        for file_name, path in part.files.items():
            if file_name.endswith(".mvn"):
                check_cfg.frontend.cmvn_file = str(path)
    fresh = check_against_minmo(check_cfg, tensors, str(out_dir))
    with atomic_directory(out_dir) as tmp:
        if llm_part is not None and llm_part.tensors:
            source = Path(llm_part.sections["llm"].tokenizer)
            (tmp / TOKENIZER_DIR).mkdir()
            copied = [n for n in TOKENIZER_FILES if (source / n).is_file()]
            for n in copied:
                shutil.copy2(source / n, tmp / TOKENIZER_DIR / n)
            if "tokenizer.json" not in copied:
                raise ForeignCheckpointError(f"{source}: no tokenizer.json to copy")
        for part in parts:
            for file_name, path in part.files.items():
                shutil.copy2(path, tmp / file_name)
        if tensors:
            save_tensors(tensors, tmp / MODEL_FILE, metadata={"format": "pt", "producer": "minmo convert"})
        for part in parts:
            if part.part in SEPARATE_FILES:
                save_tensors(part.tensors, tmp / SEPARATE_FILES[part.part], metadata={"format": "pt"})
        save_yaml(cfg, tmp / CONFIG_FILE)
        report = {"sources": sources or {}, "parts": [p.report.to_dict() for p in parts],
                  "fresh_modules": fresh, "tensors": len(tensors)}
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    for part in parts:
        log(part.report.summary())
    log(f"[convert] fresh (trained by MinMo's stages): {', '.join(fresh) or 'none'}")
    log(f"[convert] wrote {out_dir} ({len(tensors)} tensors)")
    return out_dir
