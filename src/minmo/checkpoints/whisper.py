"""Whisper encoders for minmo's encoder slot, from a transformers Whisper directory or a
CTranslate2 (faster-whisper) directory.

transformers layout: ``config.json`` (``model_type: whisper``, ``d_model``,
``encoder_layers``, ``encoder_attention_heads``, ``encoder_ffn_dim``, ``num_mel_bins``,
``max_source_positions``) + ``model.safetensors`` (or shards, or ``pytorch_model.bin``)
with ``model.encoder.*`` keys, mapped one to one
(:func:`minmo.models.whisper_encoder.convert_hf_whisper_state_dict`).

CTranslate2 layout: ``model.bin`` (``WhisperSpec``), ``config.json`` (decoding settings
only), ``tokenizer.json``, ``vocabulary.*``. Encoder variables map as::

    encoder/conv{1,2}/{weight,bias}                        -> conv{1,2}.{weight,bias}
    encoder/position_encodings/encodings                   -> embed_positions.weight
    encoder/layer_i/self_attention/layer_norm/{gamma,beta} -> layers.i.self_attn_layer_norm.*
    encoder/layer_i/self_attention/linear_0/{weight,bias}  -> q/k/v_proj (fused rows q|k|v;
                                                              the k bias must be zero: Whisper's
                                                              k_proj has none)
    encoder/layer_i/self_attention/linear_1/*              -> layers.i.self_attn.out_proj.*
    encoder/layer_i/ffn/layer_norm/{gamma,beta}            -> layers.i.final_layer_norm.*
    encoder/layer_i/ffn/linear_{0,1}/*                     -> layers.i.fc{1,2}.*
    encoder/layer_norm/{gamma,beta}                        -> layer_norm.*
    encoder/num_heads                                      -> encoder.num_heads (config)

int8/int16 weights are dequantised with their ``_scale``; float16 becomes float32. The
decoder's variables are reported as dropped (minmo uses the encoder only).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from minmo.checkpoints.ct2 import CT2Model, read_model_bin
from minmo.checkpoints.foreign_common import (
    ForeignCheckpointError,
    ImportedPart,
    PartReport,
    check_against_module,
    read_json,
    require_file,
    torch_load_state_dict,
)
from minmo.config import EncoderConfig, FrontendConfig


def _build_meta(cfg: EncoderConfig) -> torch.nn.Module:
    from minmo.models.whisper_encoder import WhisperEncoderWrapper

    with torch.device("meta"):
        return WhisperEncoderWrapper(cfg)


def _whisper_sections(n_mels: int, d_model: int, heads: int, ffn: int, layers: int,
                      positions: int) -> dict[str, object]:
    encoder = EncoderConfig(kind="whisper", input_dim=n_mels, d_model=d_model, num_heads=heads,
                            ffn_dim=ffn, num_blocks=layers, tp_blocks=0, num_queries=0,
                            max_positions=positions)
    return {"encoder": encoder, "frontend": FrontendConfig(kind="whisper", n_mels=n_mels)}


# --------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------


def import_hf_whisper(directory: str | Path) -> ImportedPart:
    """Read the encoder of a transformers Whisper directory.

    Raises:
        ForeignCheckpointError: not a Whisper directory, or tensors that do not fit (named).
    """
    from minmo.checkpoints.foreign_hf import INDEX_FILE, SINGLE_FILE, iter_hf_tensors
    from minmo.models.whisper_encoder import convert_hf_whisper_state_dict

    directory = Path(directory)
    config_path = require_file(directory, "config.json", "transformers Whisper config")
    config = read_json(config_path)
    if config.get("model_type") != "whisper":
        raise ForeignCheckpointError(
            f"{config_path}: model_type is {config.get('model_type')!r}, expected 'whisper'")
    try:
        sections = _whisper_sections(
            int(config["num_mel_bins"]), int(config["d_model"]),
            int(config["encoder_attention_heads"]), int(config["encoder_ffn_dim"]),
            int(config["encoder_layers"]), int(config.get("max_source_positions", 1500)))
    except KeyError as exc:
        raise ForeignCheckpointError(f"{config_path}: lacks {exc.args[0]}") from None
    if (directory / SINGLE_FILE).is_file() or (directory / INDEX_FILE).is_file():
        state = dict(iter_hf_tensors(directory))
        source = str(directory / (INDEX_FILE if (directory / INDEX_FILE).is_file() else SINGLE_FILE))
    else:
        source = str(require_file(directory, "pytorch_model.bin", "Whisper weights"))
        state = torch_load_state_dict(source)
    try:
        tensors = convert_hf_whisper_state_dict(state, source)
    except ValueError as exc:
        raise ForeignCheckpointError(str(exc)) from None
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    report = PartReport("encoder", source, loaded=len(tensors))
    decoder = [k for k in state if not _is_encoder_key(k)]
    if decoder:
        report.dropped[f"{len(decoder)} decoder/head tensors (model.decoder.*, proj_out.*)"] = \
            "minmo uses the Whisper encoder only"
    check_against_module(_build_meta(sections["encoder"]), tensors, source)
    return ImportedPart("encoder", tensors, sections, report)


def _is_encoder_key(key: str) -> bool:
    name = key.removeprefix("model.").removeprefix("encoder.")
    return not key.startswith(("model.decoder.", "decoder.", "proj_out.")) and name.startswith(
        ("conv1.", "conv2.", "embed_positions.", "layers.", "layer_norm."))


# --------------------------------------------------------------------------------------
# CTranslate2
# --------------------------------------------------------------------------------------

_LAYER = re.compile(r"^encoder/layer_(\d+)/")


def ct2_whisper_encoder_tensors(model: CT2Model) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Map a ``WhisperSpec`` model's encoder variables to transformers' encoder names.

    Returns:
        ``(tensors, shape)``: float32 tensors and ``{n_mels, d_model, heads, ffn, layers,
        positions}``.

    Raises:
        ForeignCheckpointError: not a Whisper model, missing variables, nonzero key bias.
    """
    if model.spec != "WhisperSpec":
        raise ForeignCheckpointError(f"{model.path}: spec is {model.spec!r}, expected 'WhisperSpec'")
    f = model.dequantized
    layers = sorted({int(m.group(1)) for name in model.variables if (m := _LAYER.match(name))})
    if not layers or layers != list(range(len(layers))):
        raise ForeignCheckpointError(f"{model.path}: encoder layers {layers} are not 0..N-1")
    conv1 = f("encoder/conv1/weight")
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    tensors: dict[str, torch.Tensor] = {
        "conv1.weight": conv1, "conv1.bias": f("encoder/conv1/bias"),
        "conv2.weight": f("encoder/conv2/weight"), "conv2.bias": f("encoder/conv2/bias"),
        "embed_positions.weight": f("encoder/position_encodings/encodings"),
        "layer_norm.weight": f("encoder/layer_norm/gamma"),
        "layer_norm.bias": f("encoder/layer_norm/beta"),
    }
    for i in layers:
        src, dst = f"encoder/layer_{i}/", f"layers.{i}."
        qkv_w = f(src + "self_attention/linear_0/weight")
        qkv_b = f(src + "self_attention/linear_0/bias")
        if qkv_w.shape[0] != 3 * d_model:
            raise ForeignCheckpointError(
                f"{model.path}: '{src}self_attention/linear_0/weight' has {qkv_w.shape[0]} rows, "
                f"expected 3 x {d_model} (fused q|k|v)")
        q_w, k_w, v_w = qkv_w.split(d_model)
        q_b, k_b, v_b = qkv_b.split(d_model)
        if k_b.abs().max() > 0:
            raise ForeignCheckpointError(
                f"{model.path}: '{src}self_attention/linear_0/bias' has a nonzero key bias; "
                "Whisper's k_proj has none, so this is not a Whisper encoder")
        tensors.update({
            dst + "self_attn.q_proj.weight": q_w, dst + "self_attn.q_proj.bias": q_b,
            dst + "self_attn.k_proj.weight": k_w,
            dst + "self_attn.v_proj.weight": v_w, dst + "self_attn.v_proj.bias": v_b,
            dst + "self_attn.out_proj.weight": f(src + "self_attention/linear_1/weight"),
            dst + "self_attn.out_proj.bias": f(src + "self_attention/linear_1/bias"),
            dst + "self_attn_layer_norm.weight": f(src + "self_attention/layer_norm/gamma"),
            dst + "self_attn_layer_norm.bias": f(src + "self_attention/layer_norm/beta"),
            dst + "fc1.weight": f(src + "ffn/linear_0/weight"),
            dst + "fc1.bias": f(src + "ffn/linear_0/bias"),
            dst + "fc2.weight": f(src + "ffn/linear_1/weight"),
            dst + "fc2.bias": f(src + "ffn/linear_1/bias"),
            dst + "final_layer_norm.weight": f(src + "ffn/layer_norm/gamma"),
            dst + "final_layer_norm.bias": f(src + "ffn/layer_norm/beta"),
        })
    heads = int(model.get("encoder/num_heads").item()) if model.has("encoder/num_heads") else 0
    if heads <= 0 or d_model % heads:
        raise ForeignCheckpointError(f"{model.path}: encoder/num_heads is {heads}, which does "
                                     f"not divide d_model {d_model}")
    shape = dict(n_mels=n_mels, d_model=d_model, heads=heads,
                 ffn=int(tensors["layers.0.fc1.weight"].shape[0]), layers=len(layers),
                 positions=int(tensors["embed_positions.weight"].shape[0]))
    return tensors, shape


def import_ct2_whisper(directory: str | Path) -> ImportedPart:
    """Read the encoder of a CTranslate2 Whisper directory (faster-whisper format).

    Raises:
        ForeignCheckpointError: missing/truncated ``model.bin``, not Whisper, or tensors that
            do not fit (named).
    """
    directory = Path(directory)
    path = require_file(directory, "model.bin", "CTranslate2 model")
    model = read_model_bin(path)
    tensors, shape = ct2_whisper_encoder_tensors(model)
    sections = _whisper_sections(shape["n_mels"], shape["d_model"], shape["heads"], shape["ffn"],
                                 shape["layers"], shape["positions"])
    report = PartReport("encoder", str(path), loaded=len(tensors))
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for k, v in model.variables.items()
                     if k.startswith("encoder/") and v.dim() > 1})
    report.notes.append(f"encoder weights stored as {', '.join(dtypes)}; loaded as float32")
    decoder = [k for k in model.variables if not k.startswith("encoder/")]
    if decoder:
        report.dropped[f"{len(decoder)} decoder variables (decoder/*)"] = \
            "minmo uses the Whisper encoder only"
    check_against_module(_build_meta(sections["encoder"]), tensors, str(path))
    return ImportedPart("encoder", tensors, sections, report)
