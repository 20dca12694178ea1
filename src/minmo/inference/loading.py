"""Model selection for the commands: ``--model PRESET_OR_DIR`` -> :class:`MinMoRuntime`.

* no ``--model`` (or ``minmo-small``): the embedded default. Its trained checkpoint ships in
  ``minmo/assets/models/minmo-small/`` once trained; until then the ``tiny`` config is built
  on **random weights** and every command says so.
* a preset name (``tiny``, ``minmo-7b``, ...): that config, random weights (same warning).
* an overlay package (``overlay.json``, see :mod:`minmo.checkpoints.overlay`): only the
  trained tensors, on base weights rebuilt from local packages (the embedded minmo-small).
* a directory: a minmo model directory, ``model.yaml`` (the resolved ``ModelConfig``) plus
  ``model.safetensors`` (every tensor, names as ``MinMo.state_dict()``), loaded strictly. A
  training run or checkpoint directory written with ``save_full_weights`` has exactly these
  files (``<run>/checkpoints/step_*/``); the latest checkpoint of a run is used.

The speech decoder is the speech-generation package's streaming token2wav (flow matching +
HiFT; random weights for presets, so the audio is noise), or on request
:class:`~minmo.inference.vocoder.PlaceholderVocoder` (tones, cheaper, for tests and
latency work); the model info says which.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from minmo.checkpoints import overlay
from minmo.config import load_model_config
from minmo.inference.quantize import quantize_llm, resolve_quantize
from minmo.inference.runtime import MinMoRuntime, ModelInfo
from minmo.inference.vocoder import PlaceholderVocoder, SpeechDecoder

DEFAULT_MODEL = "minmo-small"
EMBEDDED_DIR = overlay.EMBEDDED_DIR  # where minmo's own packages lie (tests point it elsewhere)
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model.yaml"
_STEP = re.compile(r"^step_(\d+)$")


class ModelLoadError(FileNotFoundError):
    """A model directory cannot be used. The message names the path and the fix."""


def _model_dir(path: Path) -> Path:
    """A directory holding model.yaml + model.safetensors (or a run dir's latest step)."""
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        return path
    steps = sorted((p for p in (path / "checkpoints").glob("step_*") if _STEP.match(p.name)),
                   key=lambda p: int(_STEP.match(p.name).group(1))) if path.is_dir() else []
    for step in reversed(steps):
        if (step / CONFIG_FILE).is_file() and (step / MODEL_FILE).is_file():
            return step
    raise ModelLoadError(
        f"{path}: not a minmo model directory: expected {CONFIG_FILE} and {MODEL_FILE} there "
        f"(or in {path}/checkpoints/step_*/; train with save_full_weights: true), or give a "
        "preset name such as 'tiny'")


def _speech_decoder(model: torch.nn.Module, directory: Path | None, trained: bool,
                    choice: str) -> tuple[SpeechDecoder, list[str]]:
    """The speech decoder for ``model``.

    ``choice``: ``token2wav`` (flow matching + HiFT from ``cfg.flow`` / ``cfg.vocoder``,
    weights from ``flow.safetensors`` / ``vocoder.safetensors`` in the model directory or
    the configs' ``path``; the assistant voice from ``speaker.safetensors`` (tensor
    ``embedding``), else the fixed embedding the flow stage trains it with), ``placeholder`` (tones), or ``auto`` (token2wav).
    """
    if choice == "placeholder":
        return PlaceholderVocoder(), ["speech is rendered by a placeholder (tones, not speech)"]
    if choice not in ("auto", "token2wav"):
        raise ValueError(f"unknown vocoder '{choice}': use auto, token2wav or placeholder")
    import dataclasses

    from minmo.checkpoints import load_tensors
    from minmo.inference.token2wav import build_token2wav
    from minmo.inference.vocoder import Token2WavDecoder
    from minmo.models.speaker import assistant_speaker

    cfg = model.cfg
    paths = {}
    for part, cfg_path in (("flow", cfg.flow.path), ("vocoder", cfg.vocoder.path)):
        local = directory / f"{part}.safetensors" if directory is not None else None
        if local is not None and local.is_file():
            paths[part] = str(local)
        elif cfg_path:
            paths[part] = cfg_path
    t2w_cfg = dataclasses.replace(
        cfg, flow=dataclasses.replace(cfg.flow, path=paths.get("flow")),
        vocoder=dataclasses.replace(cfg.vocoder, path=paths.get("vocoder")))
    device = next(model.parameters()).device
    # strict loading (the vocoder may be a GAN file); on a GPU, chunks replay as CUDA graphs
    t2w = build_token2wav(t2w_cfg, device, cuda_graphs=device.type == "cuda")
    notes: list[str] = []
    if len(paths) < 2:
        missing = ", ".join(sorted({"flow", "vocoder"} - set(paths)))
        notes.append("token2wav has random weights: reply audio is noise" if not trained else
                     f"token2wav weights missing ({missing}): reply audio is noise")
    speaker = assistant_speaker(cfg.flow.spk_embed_dim)[0]
    spk_file = directory / "speaker.safetensors" if directory is not None else None
    if spk_file is not None and spk_file.is_file():
        speaker = load_tensors(spk_file)["embedding"].reshape(-1).float()
    return Token2WavDecoder(t2w, speaker.to(device), name="token2wav (flow + HiFT)"), notes


def load_runtime(spec: str | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 vocoder: str = "auto", quantize: str = "none") -> MinMoRuntime:
    """Build the runtime named by ``spec`` (see module docstring); ``vocoder`` picks the speech
    decoder (``auto``/``token2wav`` or ``placeholder``); ``quantize="int8"`` stores the LLM's
    linear weights as int8 (CPU only; ``auto``: on a CPU: :mod:`minmo.inference.quantize`).

    Raises:
        ModelLoadError / ConfigError / CheckpointError: with the path and the fix.
    """
    from minmo.checkpoints import load_file_into
    from minmo.checkpoints.overlay import is_overlay_dir, load_overlay_model
    from minmo.models.builders import build_model

    quantize = resolve_quantize(quantize, device)
    spec = spec or DEFAULT_MODEL
    path = Path(spec)
    notes: list[str] = []
    if spec == DEFAULT_MODEL and not path.exists():
        embedded = EMBEDDED_DIR / DEFAULT_MODEL
        if (embedded / MODEL_FILE).is_file() or is_overlay_dir(embedded):
            path = embedded
        else:
            spec = "tiny"
            notes.append(f"the embedded '{DEFAULT_MODEL}' is not trained yet; using 'tiny'")
    if path.is_dir() and is_overlay_dir(path):
        model, meta = load_overlay_model(path, seed=seed)
        cfg = model.cfg
        info = ModelInfo(cfg.name, str(path), random_weights=False,
                         untrained=list(meta.get("untrained_groups", [])))
        if meta.get("untrained_groups"):
            notes.append("not trained yet: " + ", ".join(meta["untrained_groups"]))
        notes += meta.get("notes", [])
        model_dir = path
    elif path.is_dir():
        directory = _model_dir(path)
        cfg = load_model_config(directory / CONFIG_FILE)
        torch.manual_seed(seed)
        model = build_model(cfg)
        load_file_into(model, directory / MODEL_FILE)
        info = ModelInfo(cfg.name, str(directory), random_weights=False)
        model_dir: Path | None = directory
    else:
        if path.suffix in (".yaml", ".yml") or "/" in spec:
            if not path.exists():
                raise ModelLoadError(f"{spec}: no such model directory or config file")
        cfg = load_model_config(spec)
        torch.manual_seed(seed)
        model = build_model(cfg)
        info = ModelInfo(cfg.name, f"preset:{spec}", random_weights=True)
        model_dir = None
    model = model.to(device)
    if quantize == "int8":
        report = quantize_llm(model.llm)
        if report.layers:
            info.quantization = report.summary()
        else:  # the kernel is missing or wrong on this machine: say so, run float
            notes.append("int8 LLM weights unavailable here, the LLM runs in float: "
                         + (report.skipped[0] if report.skipped else "no linear layers"))
    decoder, vnotes = _speech_decoder(model, model_dir, not info.random_weights, vocoder)
    info.vocoder = decoder.name
    info.notes = notes + vnotes
    return MinMoRuntime(model, decoder, info)
