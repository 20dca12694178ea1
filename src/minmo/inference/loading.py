"""Model selection for the commands: ``--model PRESET_OR_DIR`` -> :class:`MinMoRuntime`.

* no ``--model`` (or ``minmo-small``): the embedded default. Its trained checkpoint ships in
  ``minmo/assets/models/minmo-small/`` once trained; until then the ``tiny`` config is built
  on **random weights** and every command says so.
* a preset name (``tiny``, ``minmo-7b``, ...): that config, random weights (same warning).
* a directory: a minmo model directory, ``model.yaml`` (the resolved ``ModelConfig``) plus
  ``model.safetensors`` (every tensor, names as ``MinMo.state_dict()``), loaded strictly. A
  training run or checkpoint directory written with ``save_full_weights`` has exactly these
  files (``<run>/checkpoints/step_*/``); the latest checkpoint of a run is used.

The speech decoder is the speech-generation package's streaming token2wav when it is
available for the model, else :class:`~minmo.inference.vocoder.PlaceholderVocoder` (tones,
not speech), which the model info says.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from minmo.config import ConfigError, load_model_config
from minmo.inference.runtime import MinMoRuntime, ModelInfo
from minmo.inference.vocoder import PlaceholderVocoder, SpeechDecoder

DEFAULT_MODEL = "minmo-small"
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "models"
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


def _speech_decoder(model: torch.nn.Module) -> tuple[SpeechDecoder, list[str]]:
    """The real streaming token2wav if the speech package provides one for this model."""
    notes: list[str] = []
    try:
        from minmo.inference.token2wav import build_speech_decoder  # type: ignore[attr-defined]
    except ImportError:
        build_speech_decoder = None
    if build_speech_decoder is not None:
        try:
            dec = build_speech_decoder(model.cfg)
            if dec is not None:
                return dec, notes
        except (ConfigError, FileNotFoundError, ValueError) as exc:
            notes.append(f"token2wav unavailable ({exc})")
    notes.append("speech is rendered by a placeholder (tones, not a trained token2wav)")
    return PlaceholderVocoder(), notes


def load_runtime(spec: str | None = None, seed: int = 0,
                 device: str | torch.device = "cpu") -> MinMoRuntime:
    """Build the runtime named by ``spec`` (see module docstring).

    Raises:
        ModelLoadError / ConfigError / CheckpointError: with the path and the fix.
    """
    from minmo.checkpoints import load_file_into
    from minmo.models.builders import build_model

    spec = spec or DEFAULT_MODEL
    path = Path(spec)
    notes: list[str] = []
    if spec == DEFAULT_MODEL and not path.exists():
        embedded = EMBEDDED_DIR / DEFAULT_MODEL
        if (embedded / MODEL_FILE).is_file():
            path = embedded
        else:
            spec = "tiny"
            notes.append(f"the embedded '{DEFAULT_MODEL}' is not trained yet; using 'tiny'")
    if path.is_dir():
        directory = _model_dir(path)
        cfg = load_model_config(directory / CONFIG_FILE)
        torch.manual_seed(seed)
        model = build_model(cfg)
        load_file_into(model, directory / MODEL_FILE)
        info = ModelInfo(cfg.name, str(directory), random_weights=False)
    else:
        if path.suffix in (".yaml", ".yml") or "/" in spec:
            if not path.exists():
                raise ModelLoadError(f"{spec}: no such model directory or config file")
        cfg = load_model_config(spec)
        torch.manual_seed(seed)
        model = build_model(cfg)
        info = ModelInfo(cfg.name, f"preset:{spec}", random_weights=True)
    model = model.to(device)
    vocoder, vnotes = _speech_decoder(model)
    info.vocoder = vocoder.name
    info.notes = notes + vnotes
    return MinMoRuntime(model, vocoder, info)
