"""Encoder front ends: 16 kHz waveform -> feature frames, offline and streaming.

Two front ends share one interface (:class:`Frontend`):

* ``sensevoice`` (:class:`FbankLfrFrontend`): kaldi-compatible log-mel filter bank (25 ms
  window, 10 ms shift, ``snip_edges``, DC removal, pre-emphasis 0.97, power spectrum,
  kaldi mel banks 20 Hz..Nyquist, natural log floored at float eps), computed on samples
  scaled by 32768 as FunASR's ``WavFrontend`` does, then low-frame-rate (LFR) stacking:
  ``lfr_m`` consecutive frames every ``lfr_n`` frames, the sequence left-padded with
  ``(lfr_m - 1) // 2`` copies of the first frame and the tail padded with the last frame
  (FunASR's ``apply_lfr``), so ``ceil(T / lfr_n)`` frames of ``n_mels * lfr_m`` dims come
  out. An optional SenseVoice ``am.mvn`` file (kaldi nnet text: ``<AddShift>`` then
  ``<Rescale>``) is applied as ``(x + shift) * scale``.
* ``whisper`` (:class:`WhisperLogMelFrontend`): Whisper's log-mel spectrogram (Hann 400,
  hop 160, centred frames with reflect padding, power, Slaney mel banks, ``log10`` floored
  at 1e-10, floor at ``max - 8``, ``(x + 4) / 4``) for any length; ``N // 160`` frames.
  Whisper itself appends zeros to 30 s before this; do the same to the waveform to
  reproduce it exactly.

Streaming: ``state = fe.init_state(batch_size)``, ``frames, state = fe.step(chunk, state,
is_last=...)``. Concatenated step outputs equal the offline call (fbank: exactly, up to float
rounding). Whisper's ``max - 8`` floor needs the loudest frame of the whole utterance, which a
stream does not know yet: the streaming path floors each frame against the running maximum
up to that frame. ``features(..., causal=True)`` (and ``__call__`` / ``batch``) computes that
offline, so the stream equals it exactly, for any chunking; the default (``causal=False``)
is Whisper's own global floor, which the stream matches whenever the loudest frame has
already arrived. A live stream starts in silence, so the duplex stage (which trains on what
the stream sees) uses the causal features. The fbank front end is causal either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minmo.config import FrontendConfig

SAMPLE_RATE = 16000
WAVE_SCALE = 32768.0  # FunASR feeds int16-range samples to kaldi fbank
FLOAT_EPS = float(np.finfo(np.float32).eps)  # kaldi's log floor

# kaldi fbank framing at 16 kHz (25 ms / 10 ms)
FBANK_WINDOW = 400
FBANK_SHIFT = 160
FBANK_FFT = 512  # window rounded up to a power of two
PREEMPHASIS = 0.97

# Whisper log-mel
WHISPER_N_FFT = 400
WHISPER_HOP = 160


class FrontendError(ValueError):
    """Bad front-end input or file. The message names what and how to fix it."""


# --------------------------------------------------------------------------------------
# kaldi fbank
# --------------------------------------------------------------------------------------


def analysis_window(kind: str, length: int = FBANK_WINDOW) -> torch.Tensor:
    """kaldi analysis window (symmetric, float64) of ``length`` samples.

    Args:
        kind: ``hamming``, ``povey``, ``hann`` or ``rectangular``.
    """
    n = torch.arange(length, dtype=torch.float64)
    phase = 2.0 * math.pi * n / (length - 1)
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(phase)
    if kind == "povey":
        return (0.5 - 0.5 * torch.cos(phase)).pow(0.85)
    if kind == "hann":
        return 0.5 - 0.5 * torch.cos(phase)
    if kind == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    raise FrontendError(f"unknown fbank window '{kind}': use hamming, povey, hann or rectangular")


def kaldi_mel_banks(
    num_bins: int,
    fft_size: int = FBANK_FFT,
    sample_rate: int = SAMPLE_RATE,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """kaldi triangular mel filters on the HTK-style mel scale ``1127 ln(1 + f / 700)``.

    Returns:
        (num_bins, fft_size // 2 + 1) float64 weights; the Nyquist column is zero (kaldi
        uses only the first ``fft_size / 2`` bins).
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist

    def mel(f: torch.Tensor | float) -> torch.Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float64) / 700.0)

    mel_low, mel_high = mel(low_freq), mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + delta * torch.arange(num_bins + 2, dtype=torch.float64)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fft_mel = mel(torch.arange(fft_size // 2, dtype=torch.float64) * (sample_rate / fft_size))
    fft_mel = fft_mel[None, :]
    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    weights = torch.where(fft_mel <= center, rising, falling)
    weights = torch.where((fft_mel > left) & (fft_mel < right), weights, torch.zeros_like(weights))
    return torch.cat([weights, torch.zeros(num_bins, 1, dtype=torch.float64)], dim=1)


def fbank_num_frames(num_samples: int) -> int:
    """Frames kaldi fbank gives for ``num_samples`` (``snip_edges=True``)."""
    if num_samples < FBANK_WINDOW:
        return 0
    return 1 + (num_samples - FBANK_WINDOW) // FBANK_SHIFT


def fbank_from_frames(
    frames: torch.Tensor,
    window: torch.Tensor,
    mel_banks: torch.Tensor,
    dither: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """kaldi fbank of already cut frames.

    Args:
        frames: (..., 400) float32 samples (kaldi scale, i.e. int16 range).
        window: (400,) analysis window, frames' dtype.
        mel_banks: (n_mels, 257) weights, frames' dtype.
        dither: Gaussian dither amount (0: none).
        generator: random generator for dither.

    Returns:
        (..., n_mels) log mel energies.
    """
    if dither > 0.0:
        noise = torch.randn(frames.shape, generator=generator, dtype=frames.dtype)
        frames = frames + dither * noise.to(frames.device)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - PREEMPHASIS * previous) * window
    spectrum = torch.fft.rfft(frames, n=FBANK_FFT, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    energies = torch.matmul(power, mel_banks.transpose(0, 1))
    return torch.log(energies.clamp_min(FLOAT_EPS))


def kaldi_fbank(
    waves: torch.Tensor,
    num_mel_bins: int = 80,
    window: str = "hamming",
    dither: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Vectorised kaldi fbank (16 kHz, 25 ms / 10 ms, ``snip_edges``), no energy term.

    Args:
        waves: (B, N) or (N,) samples at kaldi scale (int16 range).

    Returns:
        (B, T, num_mel_bins) or (T, num_mel_bins), ``T = fbank_num_frames(N)``.
    """
    squeeze = waves.dim() == 1
    waves = waves[None] if squeeze else waves
    waves = waves.float()
    num_frames = fbank_num_frames(waves.shape[-1])
    if num_frames == 0:
        out = waves.new_zeros(waves.shape[0], 0, num_mel_bins)
    else:
        frames = waves[:, : (num_frames - 1) * FBANK_SHIFT + FBANK_WINDOW]
        frames = frames.unfold(-1, FBANK_WINDOW, FBANK_SHIFT)
        out = fbank_from_frames(
            frames,
            analysis_window(window).to(waves),
            kaldi_mel_banks(num_mel_bins).to(waves),
            dither,
            generator,
        )
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------
# LFR and CMVN
# --------------------------------------------------------------------------------------


def lfr_num_frames(num_frames: int, lfr_n: int) -> int:
    """LFR frames from ``num_frames`` input frames: ``ceil(num_frames / lfr_n)``."""
    return -(-num_frames // lfr_n)


def lfr_indices(first: int, count: int, total: int, lfr_m: int, lfr_n: int) -> torch.Tensor:
    """Input-frame indices stacked into LFR frames ``first .. first + count - 1``.

    Args:
        total: input frames known so far (indices are clamped to ``[0, total - 1]``:
            left padding repeats frame 0, right padding repeats the last frame).

    Returns:
        (count, lfr_m) long indices.
    """
    starts = (torch.arange(first, first + count) * lfr_n - (lfr_m - 1) // 2)[:, None]
    return (starts + torch.arange(lfr_m)[None, :]).clamp(0, max(total - 1, 0))


def apply_lfr(feats: torch.Tensor, lfr_m: int, lfr_n: int) -> torch.Tensor:
    """Low-frame-rate stacking (FunASR ``apply_lfr`` semantics).

    Args:
        feats: (T, D) frames.

    Returns:
        (ceil(T / lfr_n), lfr_m * D).
    """
    num_out = lfr_num_frames(feats.shape[0], lfr_n)
    idx = lfr_indices(0, num_out, feats.shape[0], lfr_m, lfr_n).to(feats.device)
    return feats[idx].reshape(num_out, lfr_m * feats.shape[1])


def load_cmvn(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a SenseVoice/FunASR ``am.mvn`` file (kaldi nnet text format).

    The file holds an ``<AddShift>`` component (negated means) and a ``<Rescale>``
    component (inverse standard deviations); each is followed by a line
    ``<LearnRateCoef> 0 [ v1 v2 ... ]``.

    Returns:
        ``(shift, scale)``, each (D,) float32; features are normalised as
        ``(x + shift) * scale``.

    Raises:
        FrontendError: missing file, or a component is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FrontendError(f"{path}: CMVN file not found (frontend.cmvn_file)")
    lines = path.read_text(encoding="utf-8").splitlines()
    vectors: dict[str, np.ndarray] = {}
    for i, line in enumerate(lines):
        head = line.split()[:1]
        if head and head[0] in ("<AddShift>", "<Rescale>") and i + 1 < len(lines):
            values = lines[i + 1]
            if "[" not in values or "]" not in values:
                raise FrontendError(
                    f"{path}:{i + 2}: expected '<LearnRateCoef> 0 [ values ]' after {head[0]}"
                )
            body = values[values.index("[") + 1 : values.index("]")]
            try:
                vectors[head[0]] = np.array(body.split(), dtype=np.float32)
            except ValueError as exc:
                raise FrontendError(f"{path}:{i + 2}: non-numeric CMVN value ({exc})") from None
    for name in ("<AddShift>", "<Rescale>"):
        if name not in vectors:
            raise FrontendError(f"{path}: no {name} component; is this a kaldi am.mvn file?")
    shift, scale = vectors["<AddShift>"], vectors["<Rescale>"]
    if shift.shape != scale.shape:
        raise FrontendError(
            f"{path}: <AddShift> has {shift.size} values but <Rescale> has {scale.size}"
        )
    return torch.from_numpy(shift), torch.from_numpy(scale)


# --------------------------------------------------------------------------------------
# Whisper log-mel
# --------------------------------------------------------------------------------------


def slaney_mel_filters(
    n_mels: int = 80, n_fft: int = WHISPER_N_FFT, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filters (librosa's default, used by Whisper).

    Returns:
        (n_mels, n_fft // 2 + 1) float64.
    """
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    log_step = math.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / log_step

    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0), n_mels + 2,
                          dtype=torch.float64)
    edges_hz = torch.where(
        mels < min_log_mel, mels * f_sp, min_log_hz * torch.exp(log_step * (mels - min_log_mel))
    )
    fft_hz = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    widths = edges_hz[1:] - edges_hz[:-1]
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    return weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]


def whisper_num_frames(num_samples: int) -> int:
    """Whisper log-mel frames for ``num_samples``: ``N // 160`` (0 when ``N <= 200``,
    too short for the centred reflect padding)."""
    return num_samples // WHISPER_HOP if num_samples > WHISPER_N_FFT // 2 else 0


def _whisper_frames(
    buffer: torch.Tensor, buffer_start: int, first: int, count: int, total: int | None
) -> torch.Tensor:
    """Cut centred Whisper frames ``first .. first + count - 1`` out of a sample buffer.

    Args:
        buffer: (B, L) samples; ``buffer[:, 0]`` is sample ``buffer_start`` of the stream.
        total: the stream's final length when known (reflect-pads the end), else None.

    Returns:
        (B, count, 400) samples.
    """
    half = WHISPER_N_FFT // 2
    idx = (torch.arange(first, first + count) * WHISPER_HOP - half)[:, None]
    idx = idx + torch.arange(WHISPER_N_FFT)[None, :]
    idx = idx.abs()  # reflect at the start: sample -i is sample i
    if total is not None:
        idx = torch.where(idx > total - 1, 2 * (total - 1) - idx, idx)
    return buffer[:, (idx - buffer_start).to(buffer.device)]


def _whisper_log_power_mel(frames: torch.Tensor, window: torch.Tensor,
                           filters: torch.Tensor) -> torch.Tensor:
    """(B, T, 400) frames -> (B, T, n_mels) ``log10`` mel power (floored at 1e-10)."""
    spectrum = torch.fft.rfft(frames * window, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    return torch.log10(torch.matmul(power, filters.transpose(0, 1)).clamp_min(1e-10))


def _whisper_scale(log_mel: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Whisper's dynamic-range floor and scaling; ``peak`` (B,) for every frame, or (B, T)
    one per frame."""
    peak = peak[:, None, None] if peak.dim() == 1 else peak[:, :, None]
    return (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0


def _running_peak(log_mel: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(B, T) the loudest log-mel value up to each frame, at least ``start`` (B,)."""
    frame_max = log_mel.amax(dim=2)
    if frame_max.shape[1] == 0:
        return frame_max
    return torch.maximum(torch.cummax(frame_max, dim=1).values, start[:, None])


# --------------------------------------------------------------------------------------
# Front ends
# --------------------------------------------------------------------------------------


@dataclass
class FrontendState:
    """Streaming state of a front end (owned by the caller, one row per stream).

    Attributes:
        samples: (B, L) waveform samples not yet fully consumed.
        samples_start: stream index of ``samples[:, 0]``.
        num_samples: samples received so far.
        frames: (B, F, n_mels) buffered fbank frames (LFR context); unused by Whisper.
        frames_start: stream index of ``frames[:, 0]``.
        num_frames: base frames (fbank or log-mel) computed so far.
        num_emitted: output frames emitted so far.
        peak: (B,) running maximum log-mel (Whisper only).
        finished: True after a step with ``is_last=True``.
    """

    samples: torch.Tensor
    samples_start: int
    num_samples: int
    frames: torch.Tensor
    frames_start: int
    num_frames: int
    num_emitted: int
    peak: torch.Tensor
    finished: bool = False


def _as_batch(wave: np.ndarray | torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """1-D or 2-D float waveform -> (B, N) float32 tensor."""
    tensor = torch.as_tensor(np.asarray(wave) if not torch.is_tensor(wave) else wave)
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2:
        raise FrontendError(
            f"waveform must be 1-D (N,) or 2-D (B, N), got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise FrontendError(
            f"waveform must be float in [-1, 1] at 16 kHz, got dtype {tensor.dtype}"
        )
    return tensor.to(device=device, dtype=torch.float32)


class Frontend:
    """Common interface of the encoder front ends (see module docstring).

    Attributes:
        output_dim: feature dimension ``D``.
        frame_shift_seconds: seconds per output frame.
        sample_rate: expected input rate (16 kHz).
    """

    output_dim: int
    frame_shift_seconds: float
    sample_rate: int = SAMPLE_RATE

    def num_frames(self, num_samples: int) -> int:
        """Exact number of frames ``__call__`` returns for ``num_samples`` samples."""
        raise NotImplementedError

    def features(self, waves: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """(B, N) equal-length waveforms -> (B, T, D) features; ``causal``: every frame
        depends only on audio up to it, as streamed (see the module docstring)."""
        raise NotImplementedError

    n_mels: int
    initial_peak: float = 0.0

    def init_state(self, batch_size: int = 1, device: torch.device | str | None = None
                   ) -> FrontendState:
        """Fresh streaming state for ``batch_size`` streams."""
        return FrontendState(
            samples=torch.zeros(batch_size, 0, device=device), samples_start=0, num_samples=0,
            frames=torch.zeros(batch_size, 0, self.n_mels, device=device), frames_start=0,
            num_frames=0, num_emitted=0,
            peak=torch.full((batch_size,), self.initial_peak, device=device),
        )

    @staticmethod
    def _intake(chunk: np.ndarray | torch.Tensor, state: FrontendState, scale: float
                ) -> tuple[torch.Tensor, int]:
        """Append a chunk to the state's samples: ``(samples (B, L), samples received)``."""
        if state.finished:
            raise FrontendError("step() after is_last=True: start a new stream with init_state()")
        new = _as_batch(chunk, state.samples.device) * scale
        if new.shape[0] != state.samples.shape[0]:
            raise FrontendError(
                f"chunk has {new.shape[0]} streams but the state holds {state.samples.shape[0]}"
            )
        return torch.cat([state.samples, new], dim=1), state.num_samples + new.shape[1]

    def step(self, chunk: np.ndarray | torch.Tensor, state: FrontendState,
             is_last: bool = False) -> tuple[torch.Tensor, FrontendState]:
        """Feed ``chunk`` samples; return the frames that became final.

        Args:
            chunk: (N,) or (B, N) float samples (may be empty).
            state: from :meth:`init_state` or a previous step (not modified).
            is_last: the stream ends with this chunk: flush the tail frames.

        Returns:
            ``(frames, state)``: frames (T, D) for a 1-D chunk, else (B, T, D).
        """
        raise NotImplementedError

    def __call__(self, wave: np.ndarray | torch.Tensor, causal: bool = False) -> torch.Tensor:
        """(N,) float32 waveform at 16 kHz in [-1, 1] -> (T, D) float32 features."""
        batch = _as_batch(wave, None)
        if batch.shape[0] != 1:
            raise FrontendError("__call__ takes one waveform (N,); use batch() for several")
        return self.features(batch, causal)[0]

    def batch(self, waves: list[np.ndarray | torch.Tensor], causal: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of several waveforms, right-padded with zeros.

        Returns:
            ``(feats (B, T_max, D), feat_lens (B,) long)``.
        """
        items = [_as_batch(w, None)[0] for w in waves]
        lens = torch.tensor([self.num_frames(len(w)) for w in items], dtype=torch.long)
        out = torch.zeros(len(items), int(lens.max()) if items else 0, self.output_dim)
        # equal lengths share one vectorised pass
        by_length: dict[int, list[int]] = {}
        for i, wave in enumerate(items):
            by_length.setdefault(len(wave), []).append(i)
        for length, rows in by_length.items():
            feats = self.features(torch.stack([items[i] for i in rows]), causal)
            out[rows, : feats.shape[1]] = feats
        return out, lens


class FbankLfrFrontend(Frontend):
    """SenseVoice front end: kaldi fbank on ``wave * 32768`` -> LFR -> optional CMVN.

    Args:
        n_mels: mel bins (80).
        lfr_m: frames stacked per output frame (7).
        lfr_n: input frames per output frame (6).
        window: kaldi window (``hamming`` for SenseVoice).
        dither: kaldi dither (0: deterministic; streaming equals offline only at 0).
        cmvn_file: optional ``am.mvn``; its dimension must equal ``n_mels * lfr_m``.
    """

    def __init__(self, n_mels: int = 80, lfr_m: int = 7, lfr_n: int = 6,
                 window: str = "hamming", dither: float = 0.0,
                 cmvn_file: str | Path | None = None) -> None:
        if lfr_m < 1 or lfr_n < 1:
            raise FrontendError(f"lfr_m and lfr_n must be >= 1, got {lfr_m}, {lfr_n}")
        self.n_mels, self.lfr_m, self.lfr_n = n_mels, lfr_m, lfr_n
        self.dither = dither
        self.window = analysis_window(window).float()
        self.mel_banks = kaldi_mel_banks(n_mels).float()
        self.output_dim = n_mels * lfr_m
        self.frame_shift_seconds = lfr_n * FBANK_SHIFT / SAMPLE_RATE
        self.cmvn: tuple[torch.Tensor, torch.Tensor] | None = None
        if cmvn_file is not None:
            shift, scale = load_cmvn(cmvn_file)
            if shift.numel() != self.output_dim:
                raise FrontendError(
                    f"{cmvn_file}: CMVN has {shift.numel()} dims but the front end gives "
                    f"{self.output_dim} (n_mels {n_mels} x lfr_m {lfr_m}); fix "
                    "frontend.cmvn_file or frontend.n_mels/lfr_m"
                )
            self.cmvn = (shift, scale)

    def num_frames(self, num_samples: int) -> int:
        return lfr_num_frames(fbank_num_frames(num_samples), self.lfr_n)

    def _fbank(self, frames: torch.Tensor) -> torch.Tensor:
        return fbank_from_frames(frames, self.window.to(frames.device),
                                 self.mel_banks.to(frames.device), self.dither)

    def _finish(self, stacked: torch.Tensor) -> torch.Tensor:
        """Apply CMVN to (B, T, D) stacked frames."""
        if self.cmvn is None:
            return stacked
        shift, scale = (t.to(stacked.device) for t in self.cmvn)
        return (stacked + shift) * scale

    def _stack(self, frames: torch.Tensor, frames_start: int, first: int, count: int,
               total: int) -> torch.Tensor:
        """LFR frames ``first..first+count-1`` from buffered fbank (B, F, n_mels)."""
        idx = lfr_indices(first, count, total, self.lfr_m, self.lfr_n) - frames_start
        stacked = frames[:, idx.to(frames.device)]
        return self._finish(stacked.reshape(frames.shape[0], count, self.output_dim))

    def features(self, waves: torch.Tensor, causal: bool = False) -> torch.Tensor:
        waves = waves.float() * WAVE_SCALE  # (causal either way)
        num_fbank = fbank_num_frames(waves.shape[-1])
        if num_fbank == 0:
            return waves.new_zeros(waves.shape[0], 0, self.output_dim)
        frames = waves[:, : (num_fbank - 1) * FBANK_SHIFT + FBANK_WINDOW]
        fbank = self._fbank(frames.unfold(-1, FBANK_WINDOW, FBANK_SHIFT))
        return self._stack(fbank, 0, 0, lfr_num_frames(num_fbank, self.lfr_n), num_fbank)

    def step(self, chunk: np.ndarray | torch.Tensor, state: FrontendState,
             is_last: bool = False) -> tuple[torch.Tensor, FrontendState]:
        squeeze = np.ndim(chunk) == 1
        samples, num_samples = self._intake(chunk, state, WAVE_SCALE)
        # fbank frames that are complete now
        total_fbank = fbank_num_frames(num_samples)
        fresh = total_fbank - state.num_frames
        frames = state.frames
        if fresh > 0:
            offset = state.num_frames * FBANK_SHIFT - state.samples_start
            span = samples[:, offset : offset + (fresh - 1) * FBANK_SHIFT + FBANK_WINDOW]
            frames = torch.cat([frames, self._fbank(span.unfold(-1, FBANK_WINDOW, FBANK_SHIFT))],
                               dim=1)
        # LFR frames whose right context is complete (all of them at the end)
        if is_last:
            ready = lfr_num_frames(total_fbank, self.lfr_n)
        else:
            right = self.lfr_m - 1 - (self.lfr_m - 1) // 2  # context frames past the centre
            ready = max(0, -(-(total_fbank - right) // self.lfr_n)) if total_fbank > right else 0
        count = max(0, ready - state.num_emitted)
        out = (self._stack(frames, state.frames_start, state.num_emitted, count, total_fbank)
               if count > 0 else frames.new_zeros(frames.shape[0], 0, self.output_dim))
        # drop samples and frames no longer needed
        keep_sample = total_fbank * FBANK_SHIFT
        samples = samples[:, keep_sample - state.samples_start :]
        keep_frame = min(max(0, ready * self.lfr_n - (self.lfr_m - 1) // 2), total_fbank)
        frames = frames[:, keep_frame - state.frames_start :]
        new_state = FrontendState(
            samples=samples, samples_start=keep_sample, num_samples=num_samples,
            frames=frames, frames_start=keep_frame, num_frames=total_fbank,
            num_emitted=state.num_emitted + count, peak=state.peak, finished=is_last,
        )
        return (out[0] if squeeze else out), new_state


class WhisperLogMelFrontend(Frontend):
    """Whisper log-mel front end (100 frames/s, ``n_mels`` bins), any input length."""

    initial_peak = -math.inf

    def __init__(self, n_mels: int = 80) -> None:
        self.n_mels = n_mels
        self.output_dim = n_mels
        self.frame_shift_seconds = WHISPER_HOP / SAMPLE_RATE
        self.window = torch.hann_window(WHISPER_N_FFT, periodic=True, dtype=torch.float64).float()
        self.filters = slaney_mel_filters(n_mels).float()

    def num_frames(self, num_samples: int) -> int:
        return whisper_num_frames(num_samples)

    def _log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        return _whisper_log_power_mel(frames, self.window.to(frames.device),
                                      self.filters.to(frames.device))

    def features(self, waves: torch.Tensor, causal: bool = False) -> torch.Tensor:
        waves = waves.float()
        count = whisper_num_frames(waves.shape[-1])
        if count == 0:
            return waves.new_zeros(waves.shape[0], 0, self.output_dim)
        log_mel = self._log_mel(_whisper_frames(waves, 0, 0, count, waves.shape[-1]))
        if causal:
            start = torch.full((waves.shape[0],), self.initial_peak, device=waves.device)
            return _whisper_scale(log_mel, _running_peak(log_mel, start))
        return _whisper_scale(log_mel, log_mel.amax(dim=(1, 2)))

    def step(self, chunk: np.ndarray | torch.Tensor, state: FrontendState,
             is_last: bool = False) -> tuple[torch.Tensor, FrontendState]:
        squeeze = np.ndim(chunk) == 1
        samples, num_samples = self._intake(chunk, state, 1.0)
        half = WHISPER_N_FFT // 2
        if is_last:
            ready = whisper_num_frames(num_samples)
        else:  # frame t needs samples up to 160 t + 199 (and sample 200 for the left reflection)
            ready = (num_samples - half - 1) // WHISPER_HOP + 1 if num_samples > half else 0
        count = max(0, ready - state.num_frames)
        peak = state.peak
        if count > 0:
            frames = _whisper_frames(samples, state.samples_start, state.num_frames, count,
                                     num_samples if is_last else None)
            log_mel = self._log_mel(frames)
            peaks = _running_peak(log_mel, peak)  # each frame's own (features(causal=True))
            out, peak = _whisper_scale(log_mel, peaks), peaks[:, -1]
        else:
            out = samples.new_zeros(samples.shape[0], 0, self.output_dim)
        next_frame = state.num_frames + count
        keep = max(0, next_frame * WHISPER_HOP - half) if next_frame >= 2 else 0
        keep = min(keep, num_samples)
        new_state = FrontendState(
            samples=samples[:, keep - state.samples_start :], samples_start=keep,
            num_samples=num_samples, frames=state.frames, frames_start=0,
            num_frames=next_frame, num_emitted=next_frame, peak=peak, finished=is_last,
        )
        return (out[0] if squeeze else out), new_state


def build_frontend(cfg: FrontendConfig) -> Frontend:
    """Front end named by ``cfg.kind`` (``sensevoice`` or ``whisper``).

    Raises:
        FrontendError: unsupported sample rate or kind, or a bad CMVN file.
    """
    if cfg.sample_rate != SAMPLE_RATE:
        raise FrontendError(
            f"frontend.sample_rate {cfg.sample_rate} is not supported: resample audio to "
            f"{SAMPLE_RATE} Hz (minmo.audio.io) and set frontend.sample_rate: {SAMPLE_RATE}"
        )
    if cfg.kind == "sensevoice":
        return FbankLfrFrontend(cfg.n_mels, cfg.lfr_m, cfg.lfr_n, cfg.window, cfg.dither,
                                cfg.cmvn_file)
    if cfg.kind == "whisper":
        return WhisperLogMelFrontend(cfg.n_mels)
    raise FrontendError(f"frontend.kind '{cfg.kind}' is unknown: use sensevoice or whisper")
