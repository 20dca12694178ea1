"""CosyVoice 2 release directory (``CosyVoice2-0.5B``) -> minmo's speech-generation parts.

The release folder::

    cosyvoice2.yaml            HyperPyYAML hyperparameters (read as data, nothing executed)
    llm.pt                     state dict of ``Qwen2LM`` (the voice token LM)
    flow.pt                    state dict of ``CausalMaskedDiffWithXvec`` (flow matching)
    hift.pt                    state dict of ``HiFTGenerator`` (vocoder)
    campplus.onnx              CAM++ speaker embedding (onnxruntime; ``speaker.onnx_path``)
    speech_tokenizer_v2.onnx   S3 tokenizer v2 (onnxruntime / the s3tokenizer package)
    CosyVoice-BlankEN/         the Qwen2.5-0.5B config + tokenizer the LM was built from

Voice LM (``llm.pt``) keys -> :class:`~minmo.models.voice_lm.VoiceTokenLM`::

    llm_embedding.weight          (2, 896)      -> special_embedding.weight   (SOS, TASK)
    llm.model.model.<k>           Qwen2Model    -> body.<k>
    llm_decoder.{weight,bias}     (6564, 896)   -> decoder.{weight,bias}
    speech_embedding.weight       (6564, 896)   -> speech_embedding.weight
    llm.model.model.embed_tokens.weight         dropped: the text embedding, unused by MinMo
                                                (semantic vectors replace text tokens)
    llm.model.lm_head.weight                    dropped: the text head, never used

Speech-vocabulary rows are laid out alike: ``EOS = 6561``, row 6562 unused,
``FILL = 6563`` (``speech_token_size + 2``), so the rows load one to one.

The Qwen2 body's head counts are read from ``CosyVoice-BlankEN/config.json``; without it
they are inferred from the tensors with Qwen2.5's head size 64.

``flow.pt`` and ``hift.pt`` map one to one onto :class:`~minmo.models.flow.ChunkFlowMatching`
and :class:`~minmo.models.vocoder.HiFTVocoder`, whose module names follow CosyVoice 2's
(1121 flow tensors, weight-norm parametrizations ``parametrizations.weight.original{0,1}`` in
HiFT). Their shapes come from the ``flow:`` / ``hift:`` sections of the yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from minmo.checkpoints.foreign_common import (
    ForeignCheckpointError,
    ImportedPart,
    PartReport,
    TaggedNode,
    check_against_module,
    read_json,
    read_tagged_yaml,
    require_file,
    torch_load_state_dict,
)
from minmo.config import VoiceLMConfig

if TYPE_CHECKING:
    from minmo.config import FlowConfig, HiFTConfig

CONFIG_FILE = "cosyvoice2.yaml"
LLM_FILE = "llm.pt"
FLOW_FILE = "flow.pt"
HIFT_FILE = "hift.pt"
SPEAKER_FILE = "campplus.onnx"
TOKENIZER_FILE = "speech_tokenizer_v2.onnx"
BLANK_QWEN_DIR = "CosyVoice-BlankEN"
QWEN_HEAD_DIM = 64

_BODY = "llm.model.model."
DROPPED_LLM_KEYS = {
    "llm.model.model.embed_tokens.weight": "the Qwen2 text embedding: MinMo feeds semantic "
                                           "vectors instead of text tokens",
    "llm.model.lm_head.weight": "the Qwen2 text output head: the voice LM predicts speech tokens "
                                "with llm_decoder",
}


def read_cosyvoice2_config(directory: str | Path) -> dict[str, Any]:
    """``cosyvoice2.yaml`` as data (tags kept as :class:`TaggedNode`, ``!ref`` resolved).

    Raises:
        ForeignCheckpointError: missing file or no ``llm: !new:...Qwen2LM`` section.
    """
    path = require_file(directory, CONFIG_FILE, "CosyVoice 2 hyperparameters")
    config = read_tagged_yaml(path)
    llm = config.get("llm")
    if not isinstance(llm, TaggedNode) or not llm.target.endswith("Qwen2LM"):
        raise ForeignCheckpointError(f"{path}: 'llm' is not a !new:cosyvoice.llm.llm.Qwen2LM "
                                     "node; is this a CosyVoice 2 release?")
    return config


def voice_lm_config(directory: str | Path, state: dict[str, torch.Tensor] | None = None
                    ) -> VoiceLMConfig:
    """Voice-LM shape and sampling settings from the release (yaml + Qwen config/tensors)."""
    directory = Path(directory)
    config = read_cosyvoice2_config(directory)
    llm = config["llm"]
    sampling = llm.get("sampling")
    sampling = sampling if isinstance(sampling, TaggedNode) else TaggedNode("name", "")
    hidden = int(llm.get("llm_input_size", config.get("llm_input_size", 896)))
    qwen = Path(directory) / BLANK_QWEN_DIR / "config.json"
    if qwen.is_file():
        q = read_json(qwen)
        try:
            body = dict(intermediate_size=int(q["intermediate_size"]),
                        num_layers=int(q["num_hidden_layers"]),
                        num_heads=int(q["num_attention_heads"]),
                        num_kv_heads=int(q.get("num_key_value_heads", q["num_attention_heads"])),
                        max_position_embeddings=int(q.get("max_position_embeddings", 32768)),
                        rope_theta=float(q.get("rope_theta", 1000000.0)),
                        rms_norm_eps=float(q.get("rms_norm_eps", 1e-6)))
        except KeyError as exc:
            raise ForeignCheckpointError(f"{qwen}: lacks {exc.args[0]}") from None
        if int(q.get("hidden_size", hidden)) != hidden:
            raise ForeignCheckpointError(f"{qwen}: hidden_size {q['hidden_size']} != "
                                         f"llm_input_size {hidden} of {CONFIG_FILE}")
    elif state is not None:
        layers = {int(k[len(_BODY) + 7:].split(".")[0]) for k in state if k.startswith(_BODY + "layers.")}
        kv_rows = state[_BODY + "layers.0.self_attn.k_proj.weight"].shape[0]
        body = dict(intermediate_size=int(state[_BODY + "layers.0.mlp.gate_proj.weight"].shape[0]),
                    num_layers=len(layers), num_heads=hidden // QWEN_HEAD_DIM,
                    num_kv_heads=kv_rows // QWEN_HEAD_DIM, max_position_embeddings=32768,
                    rope_theta=1000000.0, rms_norm_eps=1e-6)
    else:
        raise ForeignCheckpointError(f"{directory}: no {BLANK_QWEN_DIR}/config.json to read the "
                                     "Qwen2 body's shape from")
    mix = llm.get("mix_ratio", [5, 15])
    return VoiceLMConfig(
        hidden_size=hidden, speech_vocab=int(llm.get("speech_token_size", 6561)),
        mix_ratio=[int(m) for m in mix], top_p=float(sampling.get("top_p", 0.8)),
        top_k=int(sampling.get("top_k", 25)), ras_window=int(sampling.get("win_size", 10)),
        ras_tau=float(sampling.get("tau_r", 0.1)), **body)


def import_cosyvoice2_llm(directory: str | Path) -> ImportedPart:
    """Read ``llm.pt`` of a CosyVoice 2 release as minmo's voice token LM.

    Returns:
        :class:`ImportedPart` ``voice_lm`` with ``sections = {"voice_lm": VoiceLMConfig}``;
        the report names the dropped text embedding/head and the fresh 1-row embedding of
        the stock ``Qwen2Model`` body.

    Raises:
        ForeignCheckpointError: missing/corrupt files or keys that do not fit (named).
    """
    from minmo.models.voice_lm import VoiceTokenLM

    directory = Path(directory)
    path = require_file(directory, LLM_FILE, "CosyVoice 2 voice token LM weights")
    state = torch_load_state_dict(path)
    cfg = voice_lm_config(directory, state)
    report = PartReport("voice_lm", str(path))
    tensors: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        value = value.float() if value.is_floating_point() else value
        if key in DROPPED_LLM_KEYS:
            report.dropped[key] = DROPPED_LLM_KEYS[key]
        elif key == "llm_embedding.weight":
            tensors["special_embedding.weight"] = value
        elif key.startswith(_BODY):
            tensors["body." + key[len(_BODY):]] = value
        elif key.startswith("llm_decoder."):
            tensors["decoder." + key[len("llm_decoder."):]] = value
        elif key == "speech_embedding.weight":
            tensors[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ForeignCheckpointError(
            f"{path}: unexpected keys for a CosyVoice 2 Qwen2LM: {', '.join(sorted(unknown)[:8])}")
    with torch.device("meta"):
        module = VoiceTokenLM(cfg)
    fresh = check_against_module(module, tensors, str(path), allow_fresh=("body.embed_tokens.weight",))
    report.fresh = [f"{k} (the stock Qwen2Model's unused 1-row text table)" for k in fresh]
    report.loaded = len(tensors)
    return ImportedPart("voice_lm", tensors, {"voice_lm": cfg}, report)


# --------------------------------------------------------------------------------------
# Flow matching (flow.pt) and HiFT vocoder (hift.pt)
# --------------------------------------------------------------------------------------


def _node(config: dict[str, Any], key: str, path: Path, target: str) -> TaggedNode:
    node = config.get(key)
    if not isinstance(node, TaggedNode) or not node.target.endswith(target):
        raise ForeignCheckpointError(f"{path}: '{key}' is not a !new:...{target} node")
    return node


def flow_config(directory: str | Path, base: "FlowConfig | None" = None) -> "FlowConfig":
    """``flow:`` of ``cosyvoice2.yaml`` -> :class:`FlowConfig` (fields the yaml does not
    set, e.g. minmo's ``chunk_tokens`` = 15, are kept from ``base``).

    Raises:
        ForeignCheckpointError: a layout minmo's flow does not implement (named).
    """
    import copy

    from minmo.config import FlowConfig

    path = Path(directory) / CONFIG_FILE
    config = read_cosyvoice2_config(directory)
    flow = _node(config, "flow", path, "CausalMaskedDiffWithXvec")
    enc = flow.get("encoder")
    dec = flow.get("decoder")
    if not isinstance(enc, TaggedNode) or not isinstance(dec, TaggedNode):
        raise ForeignCheckpointError(f"{path}: flow has no encoder/decoder nodes")
    est = dec.get("estimator")
    cfm = dec.get("cfm_params")
    cfm = cfm.get("content", {}) if isinstance(cfm, TaggedNode) else {}
    channels = est.get("channels", [256]) if isinstance(est, TaggedNode) else [256]
    if not isinstance(est, TaggedNode) or len(channels) != 1:
        raise ForeignCheckpointError(f"{path}: flow.decoder.estimator must have one channel level "
                                     f"(channels: [C]); got {channels}")
    n_mels = int(flow.get("output_size", 80))
    if int(est.get("in_channels", 4 * n_mels)) != 4 * n_mels:
        raise ForeignCheckpointError(f"{path}: estimator in_channels {est.get('in_channels')} != "
                                     f"4 x output_size {n_mels}")
    if int(flow.get("input_size", 512)) != int(enc.get("output_size", 512)):
        raise ForeignCheckpointError(f"{path}: flow input_size != encoder output_size")
    for key, want in (("use_cnn_module", False), ("macaron_style", False),
                      ("selfattention_layer_type", "rel_selfattn")):
        if enc.get(key, want) != want:
            raise ForeignCheckpointError(f"{path}: flow.encoder.{key}: {enc.get(key)} is not supported")
    cfg = copy.deepcopy(base) if base is not None else FlowConfig()
    cfg.vocab_size = int(flow.get("vocab_size", 6561))
    cfg.n_mels = n_mels
    cfg.spk_embed_dim = int(flow.get("spk_embed_dim", 192))
    cfg.token_mel_ratio = int(flow.get("token_mel_ratio", 2))
    cfg.pre_lookahead_len = int(flow.get("pre_lookahead_len", 3))
    cfg.encoder_dim = int(enc.get("output_size", 512))
    cfg.encoder_heads = int(enc.get("attention_heads", 8))
    cfg.encoder_ffn_dim = int(enc.get("linear_units", 2048))
    cfg.encoder_blocks = int(enc.get("num_blocks", 6))
    cfg.encoder_up_blocks = 4  # fixed in CosyVoice 2's UpsampleConformerEncoder
    cfg.estimator_channels = int(channels[0])
    cfg.estimator_heads = int(est.get("num_heads", 8))
    cfg.estimator_head_dim = int(est.get("attention_head_dim", 64))
    cfg.estimator_transformer_blocks = int(est.get("n_blocks", 4))
    cfg.estimator_mid_blocks = int(est.get("num_mid_blocks", 12))
    cfg.sigma_min = float(cfm.get("sigma_min", cfg.sigma_min))
    cfg.training_cfg_rate = float(cfm.get("training_cfg_rate", cfg.training_cfg_rate))
    cfg.inference_cfg_rate = float(cfm.get("inference_cfg_rate", cfg.inference_cfg_rate))
    return cfg


def hift_config(directory: str | Path, base: "HiFTConfig | None" = None) -> "HiFTConfig":
    """``hift:`` of ``cosyvoice2.yaml`` -> :class:`HiFTConfig` (streaming/discriminator
    fields kept from ``base``)."""
    import copy

    from minmo.config import HiFTConfig

    path = Path(directory) / CONFIG_FILE
    hift = _node(read_cosyvoice2_config(directory), "hift", path, "HiFTGenerator")
    f0 = hift.get("f0_predictor")
    istft = hift.get("istft_params") or {}
    cfg = copy.deepcopy(base) if base is not None else HiFTConfig()
    cfg.n_mels = int(hift.get("in_channels", 80))
    cfg.base_channels = int(hift.get("base_channels", 512))
    cfg.nb_harmonics = int(hift.get("nb_harmonics", 8))
    cfg.sample_rate = int(hift.get("sampling_rate", 24000))
    cfg.nsf_alpha = float(hift.get("nsf_alpha", 0.1))
    cfg.nsf_sigma = float(hift.get("nsf_sigma", 0.003))
    cfg.nsf_voiced_threshold = float(hift.get("nsf_voiced_threshold", 10))
    cfg.upsample_rates = [int(r) for r in hift.get("upsample_rates", [8, 5, 3])]
    cfg.upsample_kernel_sizes = [int(k) for k in hift.get("upsample_kernel_sizes", [16, 11, 7])]
    cfg.istft_n_fft = int(istft.get("n_fft", 16))
    cfg.istft_hop = int(istft.get("hop_len", 4))
    for key in ("resblock_kernel_sizes", "source_resblock_kernel_sizes"):
        setattr(cfg, key, [int(k) for k in hift.get(key, getattr(cfg, key))])
    for key in ("resblock_dilation_sizes", "source_resblock_dilation_sizes"):
        setattr(cfg, key, [[int(d) for d in ds] for ds in hift.get(key, getattr(cfg, key))])
    cfg.lrelu_slope = float(hift.get("lrelu_slope", 0.1))
    cfg.audio_limit = float(hift.get("audio_limit", 0.99))
    if isinstance(f0, TaggedNode):
        cfg.f0_channels = int(f0.get("cond_channels", 512))
    return cfg


def _legacy_weight_norm(key: str) -> str:
    """Old ``weight_norm`` names (``weight_g``/``weight_v``) -> parametrization names."""
    if key.endswith(".weight_g"):
        return key[: -len("weight_g")] + "parametrizations.weight.original0"
    if key.endswith(".weight_v"):
        return key[: -len("weight_v")] + "parametrizations.weight.original1"
    return key


def import_cosyvoice2_flow(directory: str | Path, base: "FlowConfig | None" = None) -> ImportedPart:
    """``flow.pt`` -> :class:`~minmo.models.flow.ChunkFlowMatching` (names one to one)."""
    from minmo.models.flow import ChunkFlowMatching

    directory = Path(directory)
    path = require_file(directory, FLOW_FILE, "CosyVoice 2 flow-matching weights")
    cfg = flow_config(directory, base)
    tensors = {k: v.float() if v.is_floating_point() else v
               for k, v in torch_load_state_dict(path).items()}
    with torch.device("meta"):
        module = ChunkFlowMatching(cfg)
    check_against_module(module, tensors, str(path))
    report = PartReport("flow", str(path), loaded=len(tensors))
    report.notes.append(f"chunk_tokens kept at minmo's {cfg.chunk_tokens} (CosyVoice 2 trained "
                        "chunk masks of 25 tokens; the four-mask training makes other sizes work)")
    return ImportedPart("flow", tensors, {"flow": cfg}, report)


def import_cosyvoice2_hift(directory: str | Path, base: "HiFTConfig | None" = None) -> ImportedPart:
    """``hift.pt`` -> :class:`~minmo.models.vocoder.HiFTVocoder` (a ``generator.`` prefix of
    training checkpoints is dropped, old ``weight_g``/``weight_v`` names are mapped)."""
    from minmo.models.vocoder import HiFTVocoder

    directory = Path(directory)
    path = require_file(directory, HIFT_FILE, "CosyVoice 2 HiFT vocoder weights")
    cfg = hift_config(directory, base)
    tensors = {_legacy_weight_norm(k.removeprefix("generator.")): v.float() if v.is_floating_point() else v
               for k, v in torch_load_state_dict(path).items()}
    with torch.device("meta"):
        module = HiFTVocoder(cfg)
    check_against_module(module, tensors, str(path))
    return ImportedPart("vocoder", tensors, {"vocoder": cfg},
                        PartReport("vocoder", str(path), loaded=len(tensors)))


# config section each of the release's ONNX models serves (``kind: onnx`` + ``onnx_path``)
ONNX_SECTIONS = {SPEAKER_FILE: "speaker", TOKENIZER_FILE: "speech_tokenizer"}


def check_cosyvoice2_onnx(directory: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Run the release's ONNX models (``campplus.onnx``, ``speech_tokenizer_v2.onnx``) once
    with onnxruntime on a 1 s test signal and check what they return.

    Returns:
        ``{file name: path}`` of the models present (to copy) and one note per model.

    Raises:
        ForeignCheckpointError: a model that does not load or returns the wrong shape/range.
    """
    import math

    from minmo.models.speaker import OnnxSpeakerEmbedder
    from minmo.models.speech_tokenizer import OnnxSpeechTokenizer

    t = torch.arange(16000) / 16000.0
    probe = 0.3 * torch.sin(2 * math.pi * 220.0 * t) * torch.sin(math.pi * t)  # 1 s, 16 kHz
    found, notes = {}, []
    for name in (SPEAKER_FILE, TOKENIZER_FILE):
        path = Path(directory) / name
        if not path.exists():
            notes.append(f"{name}: absent (speaker/speech tokenizer stay minmo's own)")
            continue
        try:
            if name == SPEAKER_FILE:
                emb = OnnxSpeakerEmbedder(path, embed_dim=192).embed_wave(probe)
                notes.append(f"{name}: ran with onnxruntime (1 s probe -> {emb.numel()}-d embedding)")
            else:
                ids = OnnxSpeechTokenizer(path).tokenize_waves([probe])[0]
                if ids.numel() != 25:
                    raise ValueError(f"1 s of audio gave {ids.numel()} tokens, expected 25 (25 Hz)")
                notes.append(f"{name}: ran with onnxruntime (1 s probe -> {ids.numel()} tokens < 6561)")
        except (ValueError, ImportError, OSError) as err:
            raise ForeignCheckpointError(f"{path}: {err}") from None
        found[name] = path
    return found, notes
