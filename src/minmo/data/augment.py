"""Acoustic augmentation of training speech: the room, the microphone and the noise that
synthetic voices never have.

Every clip the corpus generator makes is clean, close and full-band; people are heard through
rooms, microphones and background noise. With ``data.augment.prob > 0`` the training loader
passes each input clip, with that probability, through a chain drawn at random::

    speed  ->  room (reverberation)  ->  background noise  ->  microphone band  ->  level

* speed: Kaldi-style speed perturbation (resampling: tempo and pitch move together), a factor
  drawn from ``speed`` (default ``[1.0]``: off);
* room: convolution with a synthetic room impulse response, a direct path, a few early
  reflections and an exponentially decaying diffuse tail that dies faster above 1 kHz (air
  and wall absorption: half the RT60 at 8 kHz), RT60 drawn from ``rt60`` and
  direct-to-reverberant ratio from ``drr_db``;
* noise: white, pink, brown noise or mains hum (:mod:`minmo.data.events`) at an SNR drawn
  from ``snr_db``;
* microphone band: a zero-phase Butterworth-shaped band pass, high-pass corner 50-300 Hz and
  low-pass corner from 3.4 kHz (telephone) to just under Nyquist;
* level: a gain drawn from ``gain_db``, clipped at full scale like a real converter.

Each step has its own probability. The random draws come from a generator seeded by the run
seed, the row id and the epoch: the same clip gets the same acoustics in every process and on
resume, and other acoustics in the next epoch. ``minmo data augment`` writes augmented copies
of a manifest's clips, to listen to the chain or to build a harder test set.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from minmo.audio.io import resample
from minmo.config import AugmentConfig
from minmo.data.events import brown_noise, hum, mix_at_snr, pink_noise, white_noise
from minmo.data.manifest import TASKS

# Tasks whose labels the chain would falsify: a clip's background sound (aed) or frame labels
# tied to the audio's timing (duplex).
UNAUGMENTED_TASKS = frozenset({"aed", "duplex"})


@dataclass
class Acoustics:
    """What the chain did to one clip (``None``: that step was skipped)."""

    speed: float | None = None
    rt60: float | None = None
    drr_db: float | None = None
    noise: str | None = None
    snr_db: float | None = None
    band_hz: tuple[float, float] | None = None
    gain_db: float | None = None

    def describe(self) -> str:
        """``speed 1.1, room rt60 0.42 s drr 3 dB, pink noise 12 dB, band 120-4100 Hz``."""
        parts = []
        if self.speed is not None:
            parts.append(f"speed {self.speed:g}")
        if self.rt60 is not None:
            parts.append(f"room rt60 {self.rt60:.2f} s drr {self.drr_db:.0f} dB")
        if self.noise is not None:
            parts.append(f"{self.noise} noise {self.snr_db:.0f} dB")
        if self.band_hz is not None:
            parts.append(f"band {self.band_hz[0]:.0f}-{self.band_hz[1]:.0f} Hz")
        if self.gain_db is not None:
            parts.append(f"gain {self.gain_db:+.0f} dB")
        return ", ".join(parts) or "clean"


def clip_rng(seed: int, row_id: str, epoch: int) -> np.random.Generator:
    """The generator of one clip's acoustics: fixed by (run seed, row id, epoch)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(row_id.encode("utf-8")),
                                  epoch & 0xFFFFFFFF])


def augments_task(cfg: AugmentConfig | None, task: str) -> bool:
    """Whether ``cfg`` applies to rows of ``task``."""
    if cfg is None or cfg.prob <= 0.0:
        return False
    if cfg.tasks:
        return task in cfg.tasks
    return task not in UNAUGMENTED_TASKS


def check_augment_config(cfg: AugmentConfig) -> None:
    """Raise ``ValueError`` naming the ``data.augment`` field that cannot work."""
    for name in ("prob", "reverb_prob", "noise_prob", "band_prob", "gain_prob"):
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"data.augment.{name} = {value}: a probability, 0 to 1")
    for name in ("rt60", "drr_db", "snr_db", "gain_db"):
        bounds = list(getattr(cfg, name))
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise ValueError(f"data.augment.{name} = {bounds}: give [low, high]")
    if min(cfg.rt60) <= 0.0:
        raise ValueError(f"data.augment.rt60 = {list(cfg.rt60)}: seconds, above 0")
    if not cfg.speed or min(cfg.speed) <= 0.0:
        raise ValueError(f"data.augment.speed = {list(cfg.speed)}: factors above 0, e.g. "
                         "[0.9, 1.0, 1.1]")
    unknown = sorted(set(cfg.noises) - set(NOISES))
    if unknown:
        raise ValueError(f"data.augment.noises: unknown {unknown} (known: {', '.join(NOISES)})")
    unknown = sorted(set(cfg.tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"data.augment.tasks: unknown {unknown} (tasks: {', '.join(TASKS)})")
    falsified = sorted(set(cfg.tasks) & UNAUGMENTED_TASKS)
    if falsified:
        raise ValueError(f"data.augment.tasks: {falsified} cannot be augmented (the chain "
                         "would falsify their labels: a clip's background sound, frame timing)")


def _uniform(rng: np.random.Generator, bounds: Iterable[float]) -> float:
    low, high = (float(b) for b in bounds)
    return float(rng.uniform(low, high)) if high > low else low


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _fast_len(n: int) -> int:
    """The power of two >= ``n``: FFT lengths with large prime factors are many times slower
    (a speed-perturbed clip's length is any number)."""
    return 1 << max(0, (n - 1).bit_length())


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x * h`` (linear convolution), cut to ``len(x)``."""
    size = _fast_len(x.size + h.size - 1)
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)
    return y[: x.size]


# The diffuse tail's decay by frequency: walls and air absorb high frequencies faster, so a
# room's reverberation time falls above ~1 kHz. Band centres (Hz) and RT60 as a share of the
# drawn one; between centres the bands cross-fade linearly in log frequency (they sum to 1).
DECAY_BANDS_HZ = (125.0, 500.0, 2000.0, 8000.0)
DECAY_BAND_RT60 = (1.0, 1.0, 0.8, 0.5)


def _band_masks(freqs: np.ndarray) -> np.ndarray:
    """``(bands, F)`` triangular masks in log frequency over :data:`DECAY_BANDS_HZ`."""
    logf = np.log2(np.maximum(freqs, 1.0))
    centres = np.log2(np.asarray(DECAY_BANDS_HZ))
    masks = np.zeros((centres.size, freqs.size))
    for k, c in enumerate(centres):
        ramp_in = (logf - centres[k - 1]) / (c - centres[k - 1]) if k > 0 else np.ones_like(logf)
        ramp_out = ((centres[k + 1] - logf) / (centres[k + 1] - c) if k + 1 < centres.size
                    else np.ones_like(logf))
        masks[k] = np.clip(np.minimum(ramp_in, ramp_out), 0.0, 1.0)
    return masks


def room_impulse_response(rng: np.random.Generator, sample_rate: int, rt60: float,
                          drr_db: float) -> np.ndarray:
    """A synthetic room impulse response (float64, starts with the direct path at 1.0).

    The diffuse tail is noise whose bands (:data:`DECAY_BANDS_HZ`) each fall 60 dB in their
    share of ``rt60`` seconds (:data:`DECAY_BAND_RT60`: the full time up to 500 Hz, half of
    it at 8 kHz); it starts after a 2-10 ms pre-delay, with 3-7 early reflections before
    50 ms. The tail and reflections together carry ``drr_db`` dB less energy than the direct
    path.
    """
    n = _fast_len(max(int(sample_rate * rt60), 16))
    t = np.arange(n) / sample_rate
    spectrum = np.fft.rfft(rng.standard_normal(n))
    masks = _band_masks(np.fft.rfftfreq(n, 1.0 / sample_rate))
    decay = np.log(1000.0)  # 60 dB of amplitude
    tail = np.zeros(n)
    for mask, share in zip(masks, DECAY_BAND_RT60):
        tail += np.fft.irfft(spectrum * mask, n) * np.exp(-decay * t / (rt60 * share))
    predelay = int(sample_rate * rng.uniform(0.002, 0.010))
    tail[:predelay] = 0.0
    for _ in range(int(rng.integers(3, 8))):
        k = int(rng.integers(predelay, max(predelay + 1, min(n, int(0.05 * sample_rate)))))
        tail[k] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.7) * np.abs(tail).max()
    energy = float(np.sum(tail ** 2)) + 1e-12
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / energy)
    tail[0] = 1.0  # the direct path (the pre-delay left the tail's first samples at 0)
    return tail


def band_response(freqs: np.ndarray, low_hz: float, high_hz: float, order: int = 2
                  ) -> np.ndarray:
    """Butterworth magnitude of a band pass (high-pass corner ``low_hz``, low-pass corner
    ``high_hz``) at ``freqs`` Hz."""
    f = np.maximum(freqs, 1e-3)
    highpass = 1.0 / np.sqrt(1.0 + (low_hz / f) ** (2 * order))
    lowpass = 1.0 / np.sqrt(1.0 + (f / high_hz) ** (2 * order))
    return highpass * lowpass


def _band_pass(x: np.ndarray, sample_rate: int, low_hz: float, high_hz: float,
               order: int) -> np.ndarray:
    size = _fast_len(x.size + sample_rate // 10)  # zero padding: the filter's ringing fits
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    response = band_response(freqs, low_hz, high_hz, order)
    return np.fft.irfft(np.fft.rfft(x, size) * response, size)[: x.size]


NOISES = {"white": white_noise, "pink": pink_noise, "brown": brown_noise, "hum": hum}


def augment_wave(wave: np.ndarray, sample_rate: int, cfg: AugmentConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, Acoustics]:
    """One clip through the chain (module doc) as ``cfg`` draws it.

    Args:
        wave: ``(N,)`` float waveform.
        sample_rate: its rate in Hz.
        cfg: probabilities and ranges.
        rng: this clip's generator (:func:`clip_rng`).

    Returns:
        The new ``(M,)`` float32 waveform (``M != N`` only after a speed change) and what was
        done to it. With probability ``1 - cfg.prob`` the clip comes back unchanged.
    """
    acoustics = Acoustics()
    x = np.asarray(wave, dtype=np.float64)
    if x.size == 0 or rng.random() >= cfg.prob:
        return np.asarray(wave, dtype=np.float32), acoustics
    level = _rms(x)
    speed = float(rng.choice(np.asarray(cfg.speed, dtype=np.float64)))
    if speed != 1.0:
        # Played `speed` times faster: the samples of rate * speed read at rate.
        x = resample(x.astype(np.float32), round(sample_rate * speed), sample_rate)
        x = x.astype(np.float64)
        acoustics.speed = speed
    if rng.random() < cfg.reverb_prob:
        acoustics.rt60 = _uniform(rng, cfg.rt60)
        acoustics.drr_db = _uniform(rng, cfg.drr_db)
        x = _fft_convolve(x, room_impulse_response(rng, sample_rate, acoustics.rt60,
                                                   acoustics.drr_db))
    if rng.random() < cfg.noise_prob:
        names = list(cfg.noises) or list(NOISES)
        acoustics.noise = str(names[int(rng.integers(len(names)))])
        acoustics.snr_db = _uniform(rng, cfg.snr_db)
        noise = NOISES[acoustics.noise](rng, _fast_len(x.size), sample_rate)[: x.size]
        x = mix_at_snr(x.astype(np.float32), noise, acoustics.snr_db).astype(np.float64)
    if rng.random() < cfg.band_prob:
        nyquist = sample_rate / 2.0
        acoustics.band_hz = (float(rng.uniform(50.0, 300.0)),
                             float(rng.uniform(min(3400.0, 0.9 * nyquist), 0.95 * nyquist)))
        x = _band_pass(x, sample_rate, *acoustics.band_hz, order=int(rng.integers(1, 5)))
    if level > 0.0:
        x *= level / (_rms(x) + 1e-12)  # the chain keeps the level; the gain step sets it
    if rng.random() < cfg.gain_prob:
        acoustics.gain_db = _uniform(rng, cfg.gain_db)
        x *= 10.0 ** (acoustics.gain_db / 20.0)
    return np.clip(x, -1.0, 1.0).astype(np.float32), acoustics


def augment_manifests(manifests: Iterable[str], out: str, cfg: AugmentConfig, seed: int = 0,
                      sample_rate: int = 16000, progress: bool = True
                      ) -> tuple[int, list[str]]:
    """Augmented copies of the speech-input rows of ``manifests`` (``minmo data augment``).

    Writes ``out/audio/<row id>.wav`` (16-bit, ``sample_rate``) and ``out/<manifest
    stem>.jsonl`` per input manifest: the same rows with ``audio`` and ``duration`` replaced
    and ``acoustics`` (what the chain did, :meth:`Acoustics.describe`) added. Each clip's
    acoustics are those a training run with this ``seed`` would give it in epoch 0. Rows
    without speech input, or of a task ``cfg`` leaves clean, are copied unchanged.

    Returns:
        Rows written, and one line per row that could not be read (left out).
    """
    from dataclasses import replace
    from pathlib import Path

    from tqdm import tqdm

    from minmo.audio.io import AudioError, load_audio, save_audio
    from minmo.data.manifest import expand_manifest_paths, read_manifest, write_manifest

    check_augment_config(cfg)
    out_dir = Path(out)
    problems: list[str] = []
    written = 0
    for path in expand_manifest_paths(manifests):
        scan = read_manifest(path)
        problems += [str(bad) for bad in scan.bad]
        rows = []
        for row in tqdm(scan.rows, desc=path.name, unit="clip", disable=not progress):
            if not (row.has_speech_input and augments_task(cfg, row.task)):
                rows.append(row)
                continue
            try:
                wave = load_audio(row.audio, sample_rate, offset=row.offset,
                                  duration=row.duration, channel=row.channel)
            except (AudioError, OSError, ValueError) as exc:
                problems.append(f"{row.id}: {exc}")
                continue
            wave, acoustics = augment_wave(wave, sample_rate, cfg, clip_rng(seed, row.id, 0))
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in row.id)
            target = save_audio(out_dir / "audio" / f"{name}.wav", wave, sample_rate)
            rows.append(replace(row, audio=str(target.resolve()), offset=0.0,
                                duration=wave.size / sample_rate, channel=None,
                                sample_rate=sample_rate,
                                meta={**row.meta, "acoustics": acoustics.describe()}))
        written += write_manifest(out_dir / path.name, rows)
    return written, problems
