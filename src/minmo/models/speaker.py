"""Speaker embeddings for the flow's voice condition (192-d, as CAM++ in CosyVoice 2).

Both embedders read the same features: 16 kHz kaldi fbank (80 bins, 25 ms / 10 ms, povey
window, no dither) with the per-utterance mean removed, ``(T, 80)``.

* :class:`SpeakerEncoder` (``speaker.kind: tiny``): the project's small encoder: dilated
  conv stack (TDNN) -> attentive statistics pooling -> linear to ``embed_dim``; trained by
  speaker classification with an additive-margin cosine softmax over ``num_speakers``.
* :class:`OnnxSpeakerEmbedder` (``speaker.kind: onnx``): a CAM++-style ONNX model on local
  disk (e.g. ``campplus.onnx`` of the CosyVoice 2 release), run with onnxruntime; input
  ``(1, T, 80)`` features, output the embedding.

:func:`build_speaker_embedder` picks one from :class:`minmo.config.SpeakerEncoderConfig`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minmo.audio.features import kaldi_fbank
from minmo.config import SpeakerEncoderConfig
from minmo.modules.speech_outputs import LossOutput


def assistant_speaker(dim: int = 192) -> torch.Tensor:
    """The fixed speaker embedding ``(1, dim)`` of the one assistant voice: a unit vector, so
    it differs from the all-zero embedding that classifier-free guidance trains as "no
    speaker". The flow stage trains the assistant's speech with it; the runtime and ``minmo
    tts`` use it when no other voice is given."""
    spk = torch.zeros(1, dim)
    spk[0, 0] = 1.0
    return spk


def speaker_features(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """16 kHz waveform ``(N,)`` in [-1, 1] -> mean-normalised fbank ``(T, 80)``."""
    wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)) if not isinstance(wave, torch.Tensor) else wave.float()
    feats = kaldi_fbank(wave.reshape(-1) * 32768.0, 80, window="povey")
    return feats - feats.mean(dim=0, keepdim=True)


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over time."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(channels, hidden, 1), nn.Tanh(), nn.Conv1d(hidden, channels, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, T)``, ``mask``: ``(B, 1, T)`` -> ``(B, 2C)``."""
        w = self.attention(x).masked_fill(mask == 0, -1e4).softmax(dim=-1)
        mean = (w * x).sum(-1)
        var = (w * x.pow(2)).sum(-1) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=-1)


class SpeakerEncoder(nn.Module):
    """Small TDNN speaker encoder: fbank ``(B, T, n_mels)`` -> embedding ``(B, embed_dim)``.

    Args:
        cfg: shapes (:class:`minmo.config.SpeakerEncoderConfig`).
    """

    def __init__(self, cfg: SpeakerEncoderConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        layers: list[nn.Module] = []
        for i in range(cfg.num_layers):
            dilation = i + 1
            layers += [nn.Conv1d(cfg.n_mels if i == 0 else c, c, 5 if i == 0 else 3, dilation=dilation,
                                 padding=2 if i == 0 else dilation), nn.ReLU(), nn.BatchNorm1d(c)]
        self.frames = nn.Sequential(*layers)
        self.pool = AttentiveStatsPool(c)
        self.embedding = nn.Linear(2 * c, cfg.embed_dim)
        self.classifier = nn.Parameter(torch.randn(cfg.num_speakers, cfg.embed_dim) * 0.01)

    def embed(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, n_mels)`` features -> ``(B, embed_dim)`` (not normalised)."""
        if feat_lens is None:  # all frames valid (written shape-generically so ONNX export stays dynamic)
            mask = torch.ones_like(feats[:, :, :1]).transpose(1, 2)
        else:
            mask = (torch.arange(feats.shape[1], device=feats.device)[None, :] < feat_lens[:, None]).unsqueeze(1)
        x = self.frames(feats.transpose(1, 2) * mask)
        return self.embedding(self.pool(x, mask.float()))

    def embed_wave(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """One 16 kHz waveform -> ``(embed_dim,)``."""
        with torch.no_grad():
            return self.embed(speaker_features(wave).unsqueeze(0).to(self.classifier.device))[0]

    def forward(self, batch: dict[str, torch.Tensor], losses: tuple[str, ...] = ("speaker",)) -> LossOutput:
        """Additive-margin cosine softmax (scale 30, margin 0.2) over speaker ids.

        Args:
            batch: ``feats`` ``(B, T, n_mels)`` (:func:`speaker_features`), ``feat_lens``
                ``(B,)``, ``speaker_ids`` ``(B,)`` in ``[0, num_speakers)``.
        """
        if "speaker" not in losses:
            raise ValueError(f"SpeakerEncoder trains with the 'speaker' loss, got losses={losses}")
        emb = F.normalize(self.embed(batch["feats"], batch.get("feat_lens")), dim=-1)
        cos = emb @ F.normalize(self.classifier, dim=-1).t()
        labels = batch["speaker_ids"].to(cos.device)
        logits = 30.0 * (cos - 0.2 * F.one_hot(labels, cos.shape[1]))
        loss = F.cross_entropy(logits, labels)
        acc = (cos.argmax(-1) == labels).float().mean()
        return LossOutput(loss, {"speaker_loss": float(loss.detach()), "speaker_acc": float(acc)})

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{"speaker": {name: parameter}}`` for the training loop."""
        return {"speaker": dict(self.named_parameters())}


class OnnxSpeakerEmbedder:
    """CAM++-style ONNX speaker model from a local file (onnxruntime, CPU).

    Args:
        path: the ``.onnx`` file (input ``(1, T, 80)`` mean-normalised fbank).
        embed_dim: expected output size (192).
    """

    def __init__(self, path: str | Path, embed_dim: int = 192):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"speaker.onnx_path: {path} not found (point it at campplus.onnx of a local "
                                    "CosyVoice 2 release, or use speaker.kind: tiny)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("speaker.kind: onnx needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.embed_dim = embed_dim
        self.path = path

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``(T, 80)`` features -> ``(embed_dim,)`` float32 tensor."""
        out = self.session.run(None, {self.input_name: feats.unsqueeze(0).cpu().numpy().astype(np.float32)})[0]
        emb = torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(-1))
        if emb.numel() != self.embed_dim:
            raise ValueError(f"{self.path}: speaker model returned {emb.numel()} values, expected "
                             f"speaker.embed_dim={self.embed_dim}")
        return emb

    def embed_wave(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """One 16 kHz waveform -> ``(embed_dim,)``."""
        return self.embed_features(speaker_features(wave))


def load_speaker_encoder(path: str | Path, cfg: SpeakerEncoderConfig | None = None) -> SpeakerEncoder:
    """A trained :class:`SpeakerEncoder` (shape ``cfg``, default tiny) from a ``speaker``
    training checkpoint directory (its ``trainable.safetensors``) or a ``.safetensors`` file,
    in eval mode; the classification head's size comes from the file (one row per training
    speaker). Loading is strict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the tensors do not match the encoder's shape.
    """
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "trainable.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"speaker encoder {file} not found (give a 'speaker' training checkpoint "
                                "directory, e.g. runs/speaker/checkpoints/step_..., or its .safetensors)")
    tensors, cfg = load_file(file), cfg or SpeakerEncoderConfig()
    rows = tensors["classifier"].shape[0] if "classifier" in tensors else cfg.num_speakers
    model = SpeakerEncoder(replace(cfg, num_speakers=rows))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{file} does not match the speaker encoder's shape: {e}") from None
    return model.eval()


def build_speaker_embedder(cfg: SpeakerEncoderConfig) -> SpeakerEncoder | OnnxSpeakerEmbedder:
    """The embedder ``cfg.kind`` names (a tiny encoder loads ``cfg.path`` weights when set)."""
    if cfg.kind == "onnx":
        if not cfg.onnx_path:
            raise ValueError("speaker.kind is 'onnx' but speaker.onnx_path is not set (path to campplus.onnx)")
        return OnnxSpeakerEmbedder(cfg.onnx_path, cfg.embed_dim)
    return load_speaker_encoder(cfg.path, cfg) if cfg.path else SpeakerEncoder(cfg).eval()
