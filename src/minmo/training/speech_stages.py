"""Training stages for the speech-generation models: ``speech_tokenizer``, ``flow``,
``vocoder`` and ``speaker`` (docs/speech_generation.md), run by the one training loop (``minmo train``).

Each stage brings its own model (not MinMo) and data: utterances with audio and text read
from the manifests in ``data.train`` (assistant speech ``target_audio`` of tts/s2s rows, and
English ASR rows), turned into batches by the functions below
(``scripts/train_speech_tiny.py`` runs the three stages as a bounded CPU recipe).

The shapes come from the ``speech_tokenizer`` / ``flow`` / ``vocoder`` sections of the model
config the train YAML names (``model: tiny`` -> the tiny shapes; ``minmo-7b`` -> CosyVoice 2's).
Stage-specific settings go under ``stage_options`` in the train YAML:

- ``speech_tokenizer``: ``spec_augment`` (SpecAugment on the training batches' fbank: two
  frequency masks of up to 10 bins and one time mask of up to 10 frames per second of audio;
  default ``true``; validation batches are never masked), ``speed_perturb`` (speed factors,
  e.g. ``[0.9, 1.0, 1.1]``: each training utterance is resampled by one drawn at random, which
  changes its tempo and pitch and its formants, a cheap stand-in for more voices; default
  ``[]``, off);
- ``flow``: ``tokenizer`` (path to a tokenizer checkpoint directory or ``.safetensors``; the
  speech tokens of each utterance come from it), ``max_tokens`` (crop length, default 100),
  ``voices`` (``assistant``, the default: only the assistant's speech, which the fixed
  speaker embedding stands for; ``all``: every voice, the other voices with the all-zero
  "no speaker" embedding, i.e. as the unconditional samples of classifier-free guidance, so
  the token encoder learns every voice's tokens while the speaker condition stays the
  assistant's), ``speaker_encoder`` (with ``voices: all``: a ``speaker`` checkpoint directory
  or ``.safetensors``, or a CAM++-style ``.onnx``; the other voices then train with their own
  utterance's embedding instead of "no speaker", as CosyVoice 2 does, so the flow learns to
  follow the speaker condition; the assistant keeps its fixed embedding);
- ``speaker``: ``seconds`` (crop length per utterance, default 2.0), ``speaker_pattern`` (a
  regular expression with one group: the group of a voice name that matches is its speaker
  identity, e.g. ``(.+)-s\\d+`` for the synthetic corpus, whose voice names end in the
  speaking rate; default: the whole name); one class per speaker of ``data.train`` (the
  assistant is one of them); validation scores the utterances of ``data.valid`` by those
  speakers;
- ``vocoder``: ``frames`` (crop length in 20 ms mel frames, default 24),
  ``reconstruction_steps`` (the first N steps train the generator on the mel/F0
  reconstruction loss only, a warm-up before the GAN; default 0), ``disc_channels``
  (discriminator width, default 8), ``disc_lr`` (the discriminator optimiser's peak learning
  rate; default ``optim.lr``), ``voices`` (``all``, the default, or ``assistant``), ``flow``
  with ``tokenizer`` (a flow and a tokenizer checkpoint: the generator's input becomes the
  flow's mel for the utterance's speech tokens instead of the real audio's mel, while the
  losses still compare with the real audio; this fine-tunes a vocoder to the flow's own
  output, whose frames line up with the audio's; needs ``voices: assistant``, the voice the
  flow renders; the mels are made once, at start, with the runtime's settings: chunk mask,
  the config's Euler steps, the assistant's embedding).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from minmo.audio.io import load_audio, resample
from minmo.audio.mel import estimate_f0, mel_spectrogram
from minmo.config import (ConfigError, FlowConfig, ModelConfig, OptimConfig, SpeechTokenizerConfig, TrainConfig,
                          load_model_config)
from minmo.data.manifest import read_manifests
from minmo.eval.normalize import normalize_english
from minmo.models.flow import ChunkFlowMatching
from minmo.models.speaker import (OnnxSpeakerEmbedder, SpeakerEncoder, assistant_speaker, build_speaker_embedder,
                                  speaker_features)
from minmo.models.speech_tokenizer import CharVocab, SpeechTokenizer, tokenizer_feature_frames, tokenizer_features
from minmo.models.vocoder import VocoderGAN
from minmo.training.data_source import IndexedBatchSource, ListDataset
from minmo.training.optim import build_adamw
from minmo.training.stages import (Stage, StepContext, StepOutput, accumulate_losses, register_stage,
                                   stage_options, standard_step)

log = logging.getLogger(__name__)

SPEAKER_DIM = 192
LOG_MEL_FLOOR = math.log(1e-5)
SAMPLES_PER_FRAME_24K = 480  # one 20 ms mel frame at 24 kHz


# --------------------------------------------------------------------------------------
# Utterances and batches
# --------------------------------------------------------------------------------------

def load_speech_items(paths: list[str | Path], voices: str = "all", rates: tuple[int, ...] = (16000, 24000)
                      ) -> list[dict[str, Any]]:
    """English utterances with text from manifests (files or directories).

    Args:
        paths: manifests or directories of them.
        voices: ``"all"``, or ``"assistant"`` for the assistant's speech only (others are not read).
        rates: the sample rates to load each file at (16000 -> ``"w16"``, 24000 -> ``"w24"``).

    Returns:
        ``[{"id", "text", "voice", "w16": (N16,), "w24": (N24,)}]``: assistant speech
        (``target_audio`` of tts/instruct_tts/s2s_chat rows, voice ``"assistant"``) and English
        ASR rows (voice: the row's speaker), each audio file once.
    """
    items = []
    for u in speech_utterances(paths, voices):
        path = u.pop("path")
        items.append({**u, **{f"w{sr // 1000}": torch.from_numpy(load_audio(path, sr)) for sr in rates}})
    return items


def speech_utterances(paths: list[str | Path], voices: str = "all") -> list[dict[str, str]]:
    """The utterances :func:`load_speech_items` loads, without their audio:
    ``[{"id", "text", "voice", "path"}]``."""
    seen, utts = set(), []
    for r in read_manifests(paths).rows:
        if r.task in ("tts", "instruct_tts", "s2s_chat") and r.target_audio:
            path, text, voice = r.target_audio, (r.text if r.task != "s2s_chat" else r.target), "assistant"
        elif r.task == "asr" and r.audio and (r.language or "en") == "en":
            path, text, voice = r.audio, r.text, r.speaker or "?"
        else:
            continue
        if path in seen or not text or (voices == "assistant" and voice != "assistant"):
            continue
        seen.add(path)
        utts.append({"id": r.id, "text": text, "voice": voice, "path": str(path)})
    return utts


def pad_stack(seqs: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    """Right-pad tensors along the last dim to the longest and stack: ``(B, ..., T)``."""
    n = max(s.shape[-1] for s in seqs)
    return torch.stack([torch.nn.functional.pad(s, (0, n - s.shape[-1]), value=value) for s in seqs])


def spec_augment(feats: torch.Tensor, lens: torch.Tensor, freq_masks: int = 2, max_bins: int = 10,
                 frames_per_time_mask: int = 100, max_frames: int = 10) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping, in place on ``feats (B, T, F)``:
    ``freq_masks`` bands of up to ``max_bins`` bins and one time span of up to ``max_frames``
    frames per ``frames_per_time_mask`` valid frames (at least one), each set to the
    utterance's mean feature value. Draws from torch's global generator (seeded by the loop)."""
    n_bins = feats.shape[2]
    for b in range(feats.shape[0]):
        n = int(lens[b])
        fill = feats[b, :n].mean()
        for _ in range(freq_masks):
            w = int(torch.randint(0, max_bins + 1, ()))
            f0 = int(torch.randint(0, n_bins - w + 1, ()))
            feats[b, :n, f0:f0 + w] = fill
        for _ in range(max(1, n // frames_per_time_mask)):
            w = min(int(torch.randint(0, max_frames + 1, ())), n)
            t0 = int(torch.randint(0, n - w + 1, ()))
            feats[b, t0:t0 + w] = fill
    return feats


def speed_perturb(wave: torch.Tensor, factor: float, rate: int = 16000) -> torch.Tensor:
    """``wave`` played ``factor`` times faster (Kaldi-style speed perturbation): resampled to
    ``rate / factor`` and read at ``rate``, so tempo, pitch and formants all scale by ``factor``."""
    if factor == 1.0:
        return wave
    return torch.from_numpy(resample(wave.numpy(), rate, round(rate / factor)))


def tokenizer_batch(items: list[dict[str, Any]], augment: bool = False, speeds: tuple[float, ...] = (),
                    tok_cfg: SpeechTokenizerConfig | None = None) -> dict[str, torch.Tensor]:
    """Tokenizer batch: the input features of the tokenizer ``tok_cfg`` (default tiny: fbank)
    ``feats (B, T, F)`` (with :func:`spec_augment` when ``augment``, of each utterance
    :func:`speed_perturb`-ed by a factor drawn from ``speeds`` when given), ``feat_lens (B,)``,
    CTC targets ``(B, L)`` (-1 padded; numbers spelled out) and ``ctc_target_lens (B,)``."""
    tok_cfg = tok_cfg or SpeechTokenizerConfig()
    waves = [b["w16"] for b in items]
    if speeds:
        waves = [speed_perturb(w, speeds[int(torch.randint(len(speeds), ()))]) for w in waves]
    with torch.no_grad():
        feats = tokenizer_features(tok_cfg, pad_stack(waves))
    feat_lens = torch.tensor([tokenizer_feature_frames(tok_cfg, len(w)) for w in waves])
    if augment:
        spec_augment(feats, feat_lens)
    vocab = CharVocab(tok_cfg.ctc_alphabet)
    targets = [torch.tensor(vocab.encode(normalize_english(b["text"]))) for b in items]
    return {"feats": feats, "feat_lens": feat_lens,
            "ctc_targets": pad_stack(targets, -1).long(),
            "ctc_target_lens": torch.tensor([len(t) for t in targets])}


def flow_batch(items: list[dict[str, Any]], spk: torch.Tensor, max_tokens: int = 100
               ) -> dict[str, torch.Tensor]:
    """Flow batch: a random crop of at most ``max_tokens`` tokens per item (``"tokens"``
    ``(T,)``, ``"mel"`` ``(80, 2T)``), padded; ``spk`` ``(1, 192)`` is the assistant's
    speaker embedding; items of other voices carry their own (``"spk"`` ``(192,)``, from a
    speaker encoder) or get the all-zero "no speaker" embedding.

    Returns:
        ``speech_tokens (B, T)`` (-1 padded), ``speech_token_lens (B,)``, ``mel (B, 80, 2T)``,
        ``mel_lens (B,)``, ``spk_emb (B, 192)``.
    """
    toks, mels = [], []
    for b in items:
        n = len(b["tokens"])
        s = int(torch.randint(0, max(0, n - max_tokens) + 1, ()))
        k = min(max_tokens, n - s)
        toks.append(b["tokens"][s:s + k])
        mels.append(b["mel"][:, 2 * s: 2 * (s + k)])
    return {"speech_tokens": pad_stack(toks, -1).long(),
            "speech_token_lens": torch.tensor([len(t) for t in toks]),
            "mel": pad_stack(mels, LOG_MEL_FLOOR), "mel_lens": torch.tensor([m.shape[1] for m in mels]),
            "spk_emb": torch.cat([spk if b["voice"] == "assistant"
                                  else b["spk"].reshape(spk.shape) if "spk" in b else torch.zeros_like(spk)
                                  for b in items])}


def vocoder_batch(items: list[dict[str, Any]], frames: int = 24) -> dict[str, torch.Tensor]:
    """Vocoder batch: a random crop of ``frames`` 20 ms frames per item (``"w24"`` ``(N,)``,
    ``"f0"`` ``(T,)``): ``wave (B, 480 * frames)`` and ``f0 (B, frames)``, padded. Items with
    a generator input ``"mel_in"`` ``(80, T')`` (frame ``t`` of it lines up with frame ``t``
    of the audio) also give ``mel (B, 80, frames)``, the same crop of it."""
    crops, f0s, mels = [], [], []
    for b in items:
        total = b["w24"].shape[0] // SAMPLES_PER_FRAME_24K
        s = int(torch.randint(0, max(0, total - frames) + 1, ()))
        crop = b["w24"][SAMPLES_PER_FRAME_24K * s: SAMPLES_PER_FRAME_24K * (s + frames)]
        crops.append(crop)
        f0s.append(b["f0"][s: s + frames])
        if "mel_in" in b:
            mel, n = b["mel_in"][:, s: s + frames], crop.shape[0] // SAMPLES_PER_FRAME_24K
            mels.append(torch.nn.functional.pad(mel, (0, max(0, n - mel.shape[1])), value=LOG_MEL_FLOOR)[:, :n])
    batch = {"wave": pad_stack(crops), "f0": pad_stack(f0s)}
    if mels:
        batch["mel"] = pad_stack(mels, LOG_MEL_FLOOR)
    return batch


def speaker_label(voice: str, pattern: str | None = None) -> str:
    """The speaker identity of a manifest voice name: the first group of ``pattern`` when it
    matches the whole name (e.g. ``(.+)-s\\d+`` drops the synthetic corpus's speaking-rate
    suffix, so one voice at one pitch is one speaker), else the name itself."""
    m = re.fullmatch(pattern, voice) if pattern else None
    return m.group(1) if m and m.groups() else voice


def speaker_batch(items: list[dict[str, Any]], crop_samples: int = 32000) -> dict[str, torch.Tensor]:
    """Speaker batch: a random crop of at most ``crop_samples`` 16 kHz samples per item
    (``"w16"``, ``"speaker_id"``) as :func:`~minmo.models.speaker.speaker_features`:
    ``feats (B, T, 80)``, ``feat_lens (B,)``, ``speaker_ids (B,)``."""
    feats = []
    for b in items:
        s = int(torch.randint(0, max(0, b["w16"].shape[0] - crop_samples) + 1, ()))
        feats.append(speaker_features(b["w16"][s:s + crop_samples]))
    return {"feats": pad_stack([f.t() for f in feats]).transpose(1, 2),
            "feat_lens": torch.tensor([f.shape[0] for f in feats]),
            "speaker_ids": torch.tensor([b["speaker_id"] for b in items])}


# --------------------------------------------------------------------------------------
# Stage hooks
# --------------------------------------------------------------------------------------

_OPTIONS = {"speech_tokenizer": {"spec_augment", "speed_perturb"},
            "flow": {"tokenizer", "max_tokens", "voices", "speaker_encoder"},
            "vocoder": {"frames", "reconstruction_steps", "disc_channels", "disc_lr", "voices", "flow", "tokenizer"},
            "speaker": {"seconds", "speaker_pattern"}}
_DEFAULT_VOICES = {"speech_tokenizer": "all", "flow": "assistant", "vocoder": "all", "speaker": "all"}


def _model_config(cfg: TrainConfig) -> ModelConfig:
    """The model config ``cfg.model`` names (its speech sections give the shapes)."""
    return load_model_config(cfg.model)


def _tokenizer_config(cfg: TrainConfig) -> SpeechTokenizerConfig:
    tok = _model_config(cfg).speech_tokenizer
    if tok.kind not in ("tiny", "whisper"):
        raise ConfigError(f"model {cfg.model}: speech_tokenizer.kind is '{tok.kind}'; only minmo's own "
                          "tokenizers (kind: tiny or whisper) train (the ONNX release runs as it is)")
    return tok


def _options(cfg: TrainConfig) -> dict[str, Any]:
    return stage_options(cfg, _OPTIONS[cfg.stage])


def _items(cfg: TrainConfig, paths: list[str], key: str, rates: tuple[int, ...]) -> list[dict[str, Any]]:
    """The utterances of the manifests ``paths`` (config key ``key``) the stage uses, loaded
    at the sample ``rates`` it needs."""
    if not paths:
        raise ConfigError(f"{key}: stage '{cfg.stage}' needs manifests with audio and text")
    voices = _options(cfg).get("voices", _DEFAULT_VOICES[cfg.stage])
    if voices not in ("assistant", "all"):
        raise ConfigError(f"stage_options.voices: '{voices}' is not 'assistant' or 'all'")
    items = load_speech_items(paths, voices, rates)
    if not items:
        raise ConfigError(f"{key} {paths}: no English utterance with audio and text "
                          f"(asr rows, or tts/s2s rows with target_audio; voices: {voices})")
    return items


def _checkpoint_file(path: str | Path, option: str, stage: str) -> Path:
    """The weights of ``stage_options.<option>``: a checkpoint directory's
    ``trainable.safetensors``, or a ``.safetensors`` file.

    Raises:
        ConfigError: no such file.
    """
    path = Path(path)
    file = path / "trainable.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"stage_options.{option}: {file} not found (give a {stage} checkpoint directory, "
                          f"e.g. runs/{stage}/checkpoints/step_..., or a .safetensors file)")
    return file


def load_tokenizer(path: str | Path, tok_cfg: SpeechTokenizerConfig | None = None) -> SpeechTokenizer:
    """A :class:`SpeechTokenizer` (shape ``tok_cfg``, default tiny) from a checkpoint directory
    (its ``trainable.safetensors``) or a ``.safetensors`` file, in eval mode.

    Raises:
        ConfigError: the file is missing or its tensors do not match the model.
    """
    from safetensors.torch import load_file

    file = _checkpoint_file(path, "tokenizer", "speech_tokenizer")
    model = SpeechTokenizer(tok_cfg or SpeechTokenizerConfig())
    try:
        model.load_trained(load_file(file), str(file))
    except ValueError as e:
        raise ConfigError(f"stage_options.tokenizer: {e}; set the train YAML's model to the config "
                          "the tokenizer trained with") from None
    return model.eval()


def load_flow(path: str | Path, flow_cfg: FlowConfig) -> ChunkFlowMatching:
    """A :class:`ChunkFlowMatching` (shape ``flow_cfg``) from a ``flow`` checkpoint directory or
    a ``.safetensors`` file, strictly, in eval mode.

    Raises:
        ConfigError: the file is missing or its tensors do not match the model.
    """
    from safetensors.torch import load_file

    file = _checkpoint_file(path, "flow", "flow")
    flow = ChunkFlowMatching(flow_cfg)
    try:
        flow.load_state_dict(load_file(file))
    except RuntimeError as e:
        raise ConfigError(f"stage_options.flow: {file} does not match the model's flow section "
                          f"({str(e).splitlines()[0]}); set the train YAML's model to the config the flow "
                          "trained with") from None
    return flow.eval()


Inputs = tuple[list[dict[str, Any]], Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]]


def _tokenizer_inputs(cfg: TrainConfig, paths: list[str], key: str) -> Inputs:
    opts = _options(cfg)
    augment = opts.get("spec_augment", True)
    if not isinstance(augment, bool):
        raise ConfigError(f"stage_options.spec_augment: {augment!r} is not true or false")
    speeds = opts.get("speed_perturb", [])
    if not isinstance(speeds, list) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0.5 <= f <= 2.0 for f in speeds):
        raise ConfigError(f"stage_options.speed_perturb: {speeds!r} is not a list of speed factors "
                          "between 0.5 and 2.0 (e.g. [0.9, 1.0, 1.1])")
    train = key == "data.train"
    speeds = tuple(float(f) for f in speeds) if train else ()
    tok_cfg = _tokenizer_config(cfg)
    return _items(cfg, paths, key, (16000,)), lambda b: tokenizer_batch(b, augment and train, speeds, tok_cfg)


def _speaker_embedder(cfg: TrainConfig) -> SpeakerEncoder | OnnxSpeakerEmbedder | None:
    """The flow stage's ``speaker_encoder`` (a ``speaker`` checkpoint, or a CAM++-style
    ``.onnx``), or None."""
    path = _options(cfg).get("speaker_encoder")
    if path is None:
        return None
    if _options(cfg).get("voices", _DEFAULT_VOICES["flow"]) != "all":
        raise ConfigError("stage_options.speaker_encoder embeds the other voices' utterances: it needs "
                          "stage_options.voices: all (the assistant's speech keeps its fixed embedding)")
    spk = _model_config(cfg).speaker
    spk = (replace(spk, kind="onnx", onnx_path=str(path)) if str(path).endswith(".onnx")
           else replace(spk, kind="tiny", path=str(path)))
    try:
        return build_speaker_embedder(spk)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"stage_options.speaker_encoder: {e}") from None


def _flow_inputs(cfg: TrainConfig, paths: list[str], key: str) -> Inputs:
    opts = _options(cfg)
    if "tokenizer" in opts:
        tok = load_tokenizer(opts["tokenizer"], _tokenizer_config(cfg))
    else:
        log.warning("flow: no stage_options.tokenizer; tokens come from an untrained tokenizer")
        tok = SpeechTokenizer(_tokenizer_config(cfg)).eval()
    embedder = _speaker_embedder(cfg)
    items = _items(cfg, paths, key, (16000, 24000))
    with torch.no_grad():
        for start in range(0, len(items), 16):
            chunk = items[start:start + 16]
            for it, ids in zip(chunk, tok.tokenize_waves([it["w16"] for it in chunk])):
                it["tokens"] = ids
                it["mel"] = mel_spectrogram(it.pop("w24"))
                if embedder is not None and it["voice"] != "assistant":
                    it["spk"] = embedder.embed_wave(it["w16"]).float().cpu()
                del it["w16"]  # the batches use the tokens, the mel and the embedding only
    spk, max_tokens = assistant_speaker(SPEAKER_DIM), int(opts.get("max_tokens", 100))
    return items, lambda b: flow_batch(b, spk, max_tokens)


def _vocoder_inputs(cfg: TrainConfig, paths: list[str], key: str) -> Inputs:
    opts = _options(cfg)
    frames = int(opts.get("frames", 24))
    from_flow = "flow" in opts or "tokenizer" in opts
    if from_flow and not ("flow" in opts and "tokenizer" in opts):
        raise ConfigError("stage_options: the vocoder learns from the flow's mels with both flow and tokenizer "
                          "(the flow's input tokens come from the tokenizer)")
    if from_flow and opts.get("voices", _DEFAULT_VOICES["vocoder"]) != "assistant":
        raise ConfigError("stage_options.flow: the flow renders the assistant's voice; it needs "
                          "stage_options.voices: assistant")
    items = _items(cfg, paths, key, (16000, 24000) if from_flow else (24000,))
    with torch.no_grad():
        for it in items:
            it["f0"] = estimate_f0(it["w24"])
    if from_flow:
        add_flow_mels(items, load_tokenizer(opts["tokenizer"], _tokenizer_config(cfg)),
                      load_flow(opts["flow"], _model_config(cfg).flow))
    return items, lambda b: vocoder_batch(b, frames)


@torch.no_grad()
def add_flow_mels(items: list[dict[str, Any]], tok: SpeechTokenizer, flow: ChunkFlowMatching,
                  batch: int = 16) -> None:
    """Give each item (``"w16"``, which is dropped) ``"mel_in"``: the flow's mel for the item's
    speech tokens as the runtime makes it (chunk mask, the flow config's Euler steps and
    guidance, the assistant's embedding), ``ratio`` frames per token."""
    spk = assistant_speaker(SPEAKER_DIM)
    log.info("vocoder: the flow's mels for %d utterances", len(items))
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        tokens = tok.tokenize_waves([it.pop("w16") for it in chunk])
        lens = torch.tensor([len(t) for t in tokens])
        mels = flow.synthesize(pad_stack(tokens).long(), spk.expand(len(chunk), -1), token_lens=lens)
        for it, mel, n in zip(chunk, mels, lens.tolist()):
            it["mel_in"] = mel[:, : flow.ratio * n].clone()
        if (start // batch) % 50 == 49:
            log.info("vocoder: flow mels %d/%d", start + len(chunk), len(items))


def _speaker_index(train: list[str], pattern: str | None) -> dict[str, int]:
    """Speaker identity -> class id over the training manifests (sorted, so every rank and
    every resumed run agrees)."""
    labels = {speaker_label(u["voice"], pattern) for u in speech_utterances(train)}
    return {label: i for i, label in enumerate(sorted(labels))}


def _speaker_pattern(cfg: TrainConfig) -> str | None:
    pattern = _options(cfg).get("speaker_pattern")
    try:
        if pattern is not None and re.compile(pattern).groups != 1:
            raise re.error("needs exactly one group")
    except (re.error, TypeError) as e:
        raise ConfigError(f"stage_options.speaker_pattern: {pattern!r} is not a regular expression with one "
                          f"group, the speaker identity, e.g. '(.+)-s\\d+' ({e})") from None
    return pattern


def _build_speaker(cfg: TrainConfig) -> SpeakerEncoder:
    spk = _model_config(cfg).speaker
    if spk.kind != "tiny":
        raise ConfigError(f"model {cfg.model}: speaker.kind is '{spk.kind}'; only minmo's own speaker "
                          "encoder (kind: tiny) trains (an ONNX model runs as it is)")
    n = len(_speaker_index(cfg.data.train, _speaker_pattern(cfg)))
    if n < 2:
        raise ConfigError(f"data.train {cfg.data.train}: {n} speaker(s); speaker classification needs "
                          "at least two (the manifests' speaker field names them)")
    return SpeakerEncoder(replace(spk, num_speakers=n))  # the head has one row per training speaker


def _speaker_inputs(cfg: TrainConfig, paths: list[str], key: str) -> Inputs:
    seconds = _options(cfg).get("seconds", 2.0)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0.5 <= seconds <= 30:
        raise ConfigError(f"stage_options.seconds: {seconds!r} is not a crop length in seconds (0.5 to 30)")
    pattern = _speaker_pattern(cfg)
    index = _speaker_index(cfg.data.train, pattern)
    items = _items(cfg, paths, key, (16000,))
    for it in items:
        it["speaker_id"] = index.get(speaker_label(it["voice"], pattern), -1)
    known = [it for it in items if it["speaker_id"] >= 0]
    if len(known) < len(items):
        log.info("%s: %d of %d utterances by speakers not in data.train left out (classification "
                 "validates on seen speakers)", key, len(items) - len(known), len(items))
    if not known:
        raise ConfigError(f"{key} {paths}: no utterance by a speaker of data.train")
    return known, lambda b: speaker_batch(b, round(16000 * seconds))


def _train_data(inputs: Callable[[TrainConfig, list[str], str], Inputs]) -> Callable[..., IndexedBatchSource]:
    """A stage's ``build_data`` hook: ``inputs`` over ``data.train``, shuffled per rank."""
    def build(cfg: TrainConfig, model: nn.Module, rank: int, world_size: int) -> IndexedBatchSource:
        if cfg.data.augment.prob > 0:
            raise ConfigError(f"data.augment.prob = {cfg.data.augment.prob}: stage '{cfg.stage}' "
                              "trains on the corpus's clean audio (acoustic augmentation is for "
                              "the stages that hear speech through the manifest loader: s2t_*, "
                              "t2s_*, duplex); set data.augment.prob=0")
        items, collate = inputs(cfg, cfg.data.train, "data.train")
        return IndexedBatchSource(ListDataset(items), collate, cfg.data.batch_size, seed=cfg.seed,
                                  shuffle=cfg.data.shuffle, rank=rank, world_size=world_size)
    return build


def _valid_data(inputs: Callable[[TrainConfig, list[str], str], Inputs]) -> Callable[[TrainConfig], Inputs]:
    """A stage's ``build_valid_data`` hook: ``inputs`` over ``data.valid``."""
    return lambda cfg: inputs(cfg, cfg.data.valid, "data.valid")


def _build_vocoder(cfg: TrainConfig) -> VocoderGAN:
    opts = _options(cfg)
    voc_cfg = replace(_model_config(cfg).vocoder, disc_channels=int(opts.get("disc_channels", 8)))
    gan = VocoderGAN(voc_cfg)
    gan.reconstruction_steps = int(opts.get("reconstruction_steps", 0))  # read by vocoder_step
    gan.disc_lr = float(opts.get("disc_lr", cfg.optim.lr))  # read by _vocoder_optimizers
    return gan


def _vocoder_optimizers(model: nn.Module, optim_cfg: OptimConfig) -> dict[str, torch.optim.Optimizer]:
    groups = model.param_groups()
    disc_cfg = replace(optim_cfg, lr=getattr(model, "disc_lr", optim_cfg.lr))
    return {"generator": build_adamw(groups["generator"].values(), optim_cfg),
            "discriminator": build_adamw(groups["discriminator"].values(), disc_cfg)}


def vocoder_step(ctx: StepContext) -> StepOutput:
    """One vocoder update. During the ``reconstruction_steps`` warm-up: generator on the
    mel/F0 reconstruction loss only. Then the GAN step: discriminator loss -> backward ->
    clip and step ``"discriminator"``; generator loss -> backward -> clip and step
    ``"generator"`` (each optimizer's parameters clipped separately)."""
    n_real = sum(1 for _b, w in ctx.micro_batches if w > 0)
    for opt in ctx.optimizers.values():
        opt.zero_grad(set_to_none=True)
    if ctx.step < getattr(ctx.raw_model, "reconstruction_steps", 0):
        loss, metrics, examples = accumulate_losses(ctx, ("reconstruction",))
        g_norm, applied = ctx.clip_and_step("generator")
        return StepOutput(loss=loss, metrics=metrics, grad_norms={"grad_norm_generator": g_norm},
                          examples=examples, weight=n_real, skipped_update=not applied)
    d_loss, d_metrics, _ = accumulate_losses(ctx, ("discriminator",))
    d_norm, d_applied = ctx.clip_and_step("discriminator")
    ctx.optimizers["generator"].zero_grad(set_to_none=True)
    loss, metrics, examples = accumulate_losses(ctx, ("generator",))
    ctx.optimizers["discriminator"].zero_grad(set_to_none=True)  # D grads of the G loss
    g_norm, g_applied = ctx.clip_and_step("generator")
    metrics = {**{f"d_{k}" if k in metrics else k: v for k, v in d_metrics.items()}, **metrics,
               "d_loss": d_loss}
    return StepOutput(loss=loss, metrics=metrics,
                      grad_norms={"grad_norm_generator": g_norm, "grad_norm_discriminator": d_norm},
                      examples=examples, weight=n_real,
                      skipped_update=not (d_applied and g_applied))


for _stage in (
    Stage("speech_tokenizer", ("tokenizer",), ("ctc",),
          "speech tokenizer (FSQ + CTC head) on audio with text", step=standard_step,
          build_model=lambda cfg: SpeechTokenizer(_tokenizer_config(cfg)),
          build_data=_train_data(_tokenizer_inputs), build_valid_data=_valid_data(_tokenizer_inputs)),
    Stage("flow", ("flow",), ("flow",),
          "chunk-aware flow matching: speech tokens -> mel", step=standard_step,
          build_model=lambda cfg: ChunkFlowMatching(_model_config(cfg).flow),
          build_data=_train_data(_flow_inputs), build_valid_data=_valid_data(_flow_inputs)),
    Stage("vocoder", ("generator", "discriminator"), ("generator",),
          "HiFT vocoder GAN: mel -> waveform (reconstruction warm-up option)",
          step=vocoder_step, build_model=_build_vocoder, build_optimizers=_vocoder_optimizers,
          build_data=_train_data(_vocoder_inputs), build_valid_data=_valid_data(_vocoder_inputs),
          valid_losses=("reconstruction",)),
    Stage("speaker", ("speaker",), ("speaker",),
          "speaker encoder: speaker classification (additive-margin softmax) on every voice",
          step=standard_step, build_model=_build_speaker,
          build_data=_train_data(_speaker_inputs), build_valid_data=_valid_data(_speaker_inputs)),
):
    register_stage(_stage, replace=True)
