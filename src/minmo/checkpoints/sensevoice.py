"""SenseVoice-Small FunASR directory -> minmo's SenseVoice encoder (+ CTC head, + front end).

The release (``iic/SenseVoiceSmall``) is a folder of::

    model.pt                               torch state dict of FunASR's ``SenseVoiceSmall``
    config.yaml                            FunASR config: encoder_conf, frontend_conf, ...
    am.mvn                                 CMVN (Kaldi nnet text: <AddShift> / <Rescale>)
    chn_jpn_yue_eng_ko_spectok.bpe.model   SentencePiece model of the CTC vocabulary

State-dict keys map one to one (:func:`minmo.models.encoder.convert_sensevoice_state_dict`):
``encoder.*`` -> the encoder's blocks, ``embed.weight`` -> ``query_embed.weight`` (16
query rows of the 560-d input), ``ctc.ctc_lo.*`` -> ``ctc_lo.*``. ``model.pt`` is read
with ``torch.load(weights_only=True)``.

The CTC head makes the encoder a usable ASR baseline: :class:`SentencePieceVocab` reads
the tokenizer's piece table (a small protobuf reader: no sentencepiece dependency) and
:func:`ctc_greedy_decode` turns CTC logits into text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minmo.checkpoints.foreign_common import (
    ForeignCheckpointError,
    ImportedPart,
    PartReport,
    check_against_module,
    read_tagged_yaml,
    require_file,
    torch_load_state_dict,
)
from minmo.config import EncoderConfig, FrontendConfig

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
CMVN_FILE = "am.mvn"
TOKENIZER_FILE = "chn_jpn_yue_eng_ko_spectok.bpe.model"

# config values minmo's SAN-M encoder implements; anything else is refused by name
_SUPPORTED = {
    "encoder": ("SenseVoiceEncoderSmall",),
    "encoder_conf.input_layer": ("pe",),
    "encoder_conf.pos_enc_class": ("SinusoidalPositionEncoder",),
    "encoder_conf.normalize_before": (True,),
    "encoder_conf.sanm_shfit": (0, None),
    "encoder_conf.selfattention_layer_type": ("sanm",),
    "frontend": ("WavFrontend",),
}


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def read_sensevoice_config(path: str | Path) -> tuple[FrontendConfig, dict[str, Any]]:
    """FunASR ``config.yaml`` -> minmo front-end config and encoder fields.

    Returns:
        ``(frontend, encoder_fields)``; the encoder fields still lack the table sizes
        (``query_vocab``, ``ctc_vocab``) that only the weights tell.

    Raises:
        ForeignCheckpointError: a value minmo does not implement (named with the file).
    """
    path = Path(path)
    config = read_tagged_yaml(path)
    for dotted, allowed in _SUPPORTED.items():
        value = _lookup(config, dotted)
        if value is not None and value not in allowed:
            raise ForeignCheckpointError(
                f"{path}: '{dotted}: {value}' is not supported by minmo's SenseVoice encoder "
                f"(expected {' or '.join(map(str, allowed))})")
    enc = config.get("encoder_conf")
    if not isinstance(enc, dict):
        raise ForeignCheckpointError(f"{path}: no 'encoder_conf' mapping")
    fe = config.get("frontend_conf") or {}
    n_mels, lfr_m, lfr_n = int(fe.get("n_mels", 80)), int(fe.get("lfr_m", 7)), int(fe.get("lfr_n", 6))
    if int(fe.get("fs", 16000)) != 16000:
        raise ForeignCheckpointError(f"{path}: frontend_conf.fs must be 16000, got {fe.get('fs')}")
    if (fe.get("frame_length", 25), fe.get("frame_shift", 10)) != (25, 10):
        raise ForeignCheckpointError(
            f"{path}: frontend_conf frame_length/frame_shift must be 25/10 ms "
            f"(got {fe.get('frame_length')}/{fe.get('frame_shift')})")
    window = fe.get("window", "hamming")
    if window not in ("hamming", "povey", "hann", "rectangular"):
        raise ForeignCheckpointError(f"{path}: frontend_conf.window '{window}' is not supported")
    frontend = FrontendConfig(kind="sensevoice", n_mels=n_mels, lfr_m=lfr_m, lfr_n=lfr_n,
                              window=window, dither=float(fe.get("dither", 0.0)))
    try:
        fields = dict(
            kind="sensevoice", input_dim=n_mels * lfr_m, d_model=int(enc["output_size"]),
            num_heads=int(enc["attention_heads"]), ffn_dim=int(enc["linear_units"]),
            num_blocks=int(enc["num_blocks"]), tp_blocks=int(enc.get("tp_blocks", 0)),
            fsmn_kernel=int(enc.get("kernel_size", 11)), num_queries=4,
        )
    except KeyError as exc:
        raise ForeignCheckpointError(f"{path}: encoder_conf lacks {exc.args[0]}") from None
    return frontend, fields


def import_sensevoice(directory: str | Path, with_ctc: bool = True) -> ImportedPart:
    """Read a SenseVoice-Small FunASR directory as minmo's encoder part.

    Args:
        directory: the release folder.
        with_ctc: keep the CTC head (``encoder.ctc_vocab`` = its rows); else drop it.

    Returns:
        :class:`ImportedPart` with ``sections = {"encoder", "frontend"}`` and ``am.mvn`` /
        the tokenizer model as side files.

    Raises:
        ForeignCheckpointError: missing files, unsupported config, or keys/shapes that do
            not fit (all named).
    """
    from minmo.models.encoder import EncoderError, SenseVoiceEncoder, convert_sensevoice_state_dict

    directory = Path(directory)
    model_path = require_file(directory, MODEL_FILE, "FunASR SenseVoiceSmall weights")
    frontend, fields = read_sensevoice_config(require_file(directory, CONFIG_FILE,
                                                           "FunASR model config"))
    state = torch_load_state_dict(model_path)
    try:
        tensors = convert_sensevoice_state_dict(state, source=str(model_path))
    except EncoderError as exc:
        raise ForeignCheckpointError(str(exc)) from None
    report = PartReport("encoder", str(model_path))
    for name in ("query_embed.weight", "ctc_lo.weight"):
        if name not in tensors:
            raise ForeignCheckpointError(
                f"{model_path}: no '{'embed.weight' if name.startswith('query') else 'ctc.ctc_lo.weight'}' "
                "tensor; not a SenseVoiceSmall checkpoint")
    fields["query_vocab"] = int(tensors["query_embed.weight"].shape[0])
    if with_ctc:
        fields["ctc_vocab"] = int(tensors["ctc_lo.weight"].shape[0])
    else:
        for name in ("ctc_lo.weight", "ctc_lo.bias"):
            tensors.pop(name, None)
            report.dropped[f"ctc.{name}"] = "CTC head not requested (with_ctc=False)"
    encoder_cfg = EncoderConfig(**fields)
    with torch.device("meta"):
        module = SenseVoiceEncoder(encoder_cfg)
    check_against_module(module, tensors, str(model_path))
    report.loaded = len(tensors)
    files: dict[str, Path] = {}
    if (directory / CMVN_FILE).is_file():
        files[CMVN_FILE] = directory / CMVN_FILE
        frontend.cmvn_file = str(directory / CMVN_FILE)
    else:
        report.notes.append(f"no {CMVN_FILE}: features will not be mean/variance normalised, "
                            "unlike FunASR's front end")
    if (directory / TOKENIZER_FILE).is_file():
        files[TOKENIZER_FILE] = directory / TOKENIZER_FILE
    return ImportedPart("encoder", tensors, {"encoder": encoder_cfg, "frontend": frontend},
                        report, files)


# --------------------------------------------------------------------------------------
# CTC vocabulary (SentencePiece model protobuf) and greedy decoding
# --------------------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Top-level ``(field number, wire type, value)`` of a protobuf message."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("field runs past the end")
        out.append((number, wire, value))
    return out


@dataclass
class SentencePieceVocab:
    """The piece table of a SentencePiece ``.model`` file.

    Attributes:
        pieces: piece text by id (``▁`` marks a word start).
        types: piece type by id (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte).
    """

    pieces: list[str]
    types: list[int]

    @classmethod
    def load(cls, path: str | Path) -> "SentencePieceVocab":
        """Read ``ModelProto.pieces`` (field 1: piece = 1, score = 2, type = 3).

        Raises:
            ForeignCheckpointError: not a SentencePiece model (names the file).
        """
        path = Path(path)
        try:
            pieces, types = [], []
            for number, wire, value in _fields(path.read_bytes()):
                if number != 1 or wire != 2:
                    continue
                piece, kind = "", 1
                for sub_number, sub_wire, sub_value in _fields(value):
                    if sub_number == 1 and sub_wire == 2:
                        piece = sub_value.decode("utf-8")
                    elif sub_number == 3 and sub_wire == 0:
                        kind = sub_value
                pieces.append(piece)
                types.append(kind)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ForeignCheckpointError(f"{path}: not a SentencePiece model ({exc})") from None
        if not pieces:
            raise ForeignCheckpointError(f"{path}: SentencePiece model has no pieces")
        return cls(pieces, types)

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids: list[int], keep_special: bool = False) -> str:
        """Ids -> text; control/unknown pieces are left out, ``<|...|>`` tags (SenseVoice's
        language/emotion/event markers) unless ``keep_special``; byte pieces are joined."""
        out = bytearray()
        for i in ids:
            piece, kind = self.pieces[i], self.types[i]
            if kind in (2, 3):
                continue
            if not keep_special and piece.startswith("<|") and piece.endswith("|>"):
                continue
            if kind == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out.append(int(piece[3:-1], 16))
            else:
                out += piece.replace("\u2581", " ").encode("utf-8")
        return out.decode("utf-8", errors="replace").strip()


def ctc_greedy_decode(logits: torch.Tensor, lengths: torch.Tensor | None = None,
                      blank_id: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks.

    Args:
        logits: ``(B, T, V)`` CTC logits (or log-probabilities).
        lengths: ``(B,)`` valid frames (None: all).
        blank_id: the blank symbol (SenseVoice: 0).

    Returns:
        Token ids per example.
    """
    best = logits.argmax(-1)
    out = []
    for b in range(best.shape[0]):
        n = int(lengths[b]) if lengths is not None else best.shape[1]
        ids, prev = [], None
        for t in best[b, :n].tolist():
            if t != prev and t != blank_id:
                ids.append(t)
            prev = t
        out.append(ids)
    return out

