"""A small real-voice English ASR test: the recordings with transcripts that pocketsphinx's
source release carries for its own tests.

    .venv/bin/python scripts/make_real_test.py --out DIR [--sdist pocketsphinx-5.1.1.tar.gz]
    .venv/bin/minmo eval --model M --suite manifest --data DIR/asr.jsonl --tasks asr --out EVAL

Every other test here is synthetic speech (espeak-ng / MBROLA voices); this one is people: five
sentences of a LibriVox reading of *Sense and Sensibility* (one reader, public domain, 3-7 s
each), five card names said to a small-vocabulary recogniser ("eight of spades four of clubs
seven of hearts") and "go forward ten meters": 11 clips, 16 kHz. Too few for more than a first
look, and it says nothing about conversational speech, but it is real voices, real rooms and
real microphones, which no training row of minmo-small is.

Without ``--sdist`` the source release is fetched with pip (``pip download --no-binary :all:
pocketsphinx==5.1.1``; PyPI only, 34 MB); nothing from it is kept but the clips and their
transcripts. Output: ``DIR/asr.jsonl`` (rows of task ``asr``, split ``test``) and
``DIR/audio/*.wav``.

``--alsa`` adds a second set, ``DIR/alsa.jsonl``: the eight channel names a woman says in the
recordings Debian's ``alsa-utils`` carries for ``speaker-test`` ("Front left.", "Rear
center.", ...; 48 kHz, resampled to 16 kHz), fetched with ``apt-get download alsa-utils``
(or ``--alsa-deb``). Two-word phrases with no context: the kind of short utterance an
assistant hears, and the one a model that leans on its text prior gets most wrong. It is kept
apart from ``asr.jsonl`` so that figures on the eleven clips stay comparable.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

PACKAGE = "pocketsphinx==5.1.1"
RATE = 16000
# Transcripts live beside the clips, except this one: the package's unit tests assert it
# (test/unit/test_jsgf.c: the decoder's hypothesis for goforward.raw, 16 kHz 16-bit mono).
GOFORWARD_TEXT = "go forward ten meters"
# LibriVox transcripts spell out "mister"; written English (and every recogniser here) writes
# "Mr.", which the scorer's normaliser leaves as "mr".
WRITTEN_FORMS = {"mister": "Mr."}


def written(text: str) -> str:
    """A lower-case, unpunctuated transcript as a sentence: written forms, capital, full stop."""
    words = [WRITTEN_FORMS.get(w, w) for w in text.split()]
    sentence = " ".join(words)
    return sentence[:1].upper() + sentence[1:] + "."


def _member(tar: tarfile.TarFile, root: str, rel: str) -> bytes:
    handle = tar.extractfile(f"{root}/test/{rel}")
    if handle is None:
        raise KeyError(rel)
    return handle.read()


def _wave(data: bytes, raw: bool = False) -> np.ndarray:
    """Mono float32 at 16 kHz from a wav file's bytes or 16 kHz 16-bit little-endian raw."""
    import soundfile as sf

    if raw:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if rate != RATE:
        raise ValueError(f"expected {RATE} Hz clips, got {rate} Hz")
    return wave.mean(axis=1)


def clips(sdist: Path) -> list[tuple[str, str, str, np.ndarray]]:
    """``[(name, speaker, transcript, wave)]`` from pocketsphinx's source tarball."""
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        out = []
        librivox = sorted(n for n in tar.getnames()
                          if re.fullmatch(rf"{root}/test/data/librivox/[^/]+\.txt", n))
        for path in librivox:
            stem = Path(path).stem
            text = _member(tar, root, f"data/librivox/{stem}.txt").decode().strip()
            wave = _wave(_member(tar, root, f"data/librivox/{stem}.wav"))
            out.append((f"librivox-{stem.rsplit('-', 1)[-1]}", "librivox-reader", text, wave))
        listing = _member(tar, root, "data/cards/cards.transcription").decode()
        for line in listing.splitlines():
            match = re.fullmatch(r"\s*<s>(.*)</s>\s*\((\w+)\)\s*", line)
            if match:
                wave = _wave(_member(tar, root, f"data/cards/{match.group(2)}.wav"))
                out.append((f"cards-{match.group(2)}", "cards-speaker", match.group(1).strip(),
                            wave))
        wave = _wave(_member(tar, root, "data/goforward.raw"), raw=True)
        out.append(("goforward", "goforward-speaker", GOFORWARD_TEXT, wave))
    return out


def make_real_test(out: Path, sdist: Path) -> list[dict]:
    """Write ``out/audio/*.wav`` and ``out/asr.jsonl`` from the tarball; return the rows."""
    return write_rows(out, "asr.jsonl", clips(sdist))


def alsa_clips(deb: Path) -> list[tuple[str, str, str, np.ndarray]]:
    """``[(name, speaker, transcript, wave)]`` from an ``alsa-utils`` package: each
    ``usr/share/sounds/alsa/<Place>_<Side>.wav`` but the noise, its name as the transcript,
    at 16 kHz."""
    import soundfile as sf

    from minmo.audio.io import resample

    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            match = re.fullmatch(r"\./usr/share/sounds/alsa/([A-Za-z]+_[A-Za-z]+)\.wav",
                                 member.name)
            if not match:
                continue
            handle = tar.extractfile(member)
            wave, rate = sf.read(io.BytesIO(handle.read()), dtype="float32", always_2d=True)
            stem = match.group(1)
            out.append((f"alsa-{stem.lower().replace('_', '-')}", "alsa-speaker",
                        stem.replace("_", " ").lower(), resample(wave.mean(axis=1), rate, RATE)))
    if not out:
        raise ValueError(f"{deb}: no usr/share/sounds/alsa/*_*.wav recordings in it")
    return out


def write_rows(out: Path, manifest: str, clips_: list[tuple[str, str, str, np.ndarray]]
               ) -> list[dict]:
    """Write each clip to ``out/audio/real-<name>.wav`` and the rows to ``out/<manifest>``."""
    from minmo.audio.io import save_audio

    rows = []
    for name, speaker, text, wave in clips_:
        save_audio(out / "audio" / f"real-{name}.wav", wave, RATE)
        rows.append({"id": f"real-{name}-asr", "task": "asr", "split": "test",
                     "audio": f"audio/real-{name}.wav",
                     "duration": round(wave.shape[-1] / RATE, 3), "sample_rate": RATE,
                     "text": written(text), "language": "en", "speaker": speaker})
    with open(out / manifest, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


def download_alsa(into: Path) -> Path:
    """Debian's ``alsa-utils`` package, fetched by apt into ``into`` (kept for a rerun)."""
    into.mkdir(parents=True, exist_ok=True)
    found = sorted(into.glob("alsa-utils_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", "alsa-utils"], cwd=into, check=True)
        found = sorted(into.glob("alsa-utils_*.deb"))
    if not found:
        raise SystemExit(f"apt-get did not leave an alsa-utils package in {into}")
    return found[-1]


def download(into: Path) -> Path:
    """The source release, fetched by pip into ``into`` (kept there for a rerun)."""
    found = sorted(into.glob("pocketsphinx-*.tar.gz"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", PACKAGE, "-d", str(into), "--quiet"], check=True)
        found = sorted(into.glob("pocketsphinx-*.tar.gz"))
    if not found:
        raise SystemExit(f"pip did not leave a pocketsphinx source release in {into}")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"a local {PACKAGE.replace('==', '-')}.tar.gz (default: pip "
                             "downloads it into OUT/download)")
    parser.add_argument("--alsa", action="store_true",
                        help="also write alsa.jsonl: the eight channel names of Debian's "
                             "alsa-utils speaker-test recordings (apt-get downloads the "
                             "package into OUT/download)")
    parser.add_argument("--alsa-deb", type=Path, default=None,
                        help="a local alsa-utils_*.deb for --alsa")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sdist = args.sdist or download(args.out / "download")
    sets = {"asr.jsonl": make_real_test(args.out, sdist)}
    if args.alsa or args.alsa_deb:
        deb = args.alsa_deb or download_alsa(args.out / "download")
        sets["alsa.jsonl"] = write_rows(args.out, "alsa.jsonl", alsa_clips(deb))
    for manifest, rows in sets.items():
        seconds = sum(r["duration"] for r in rows)
        speakers = len({r["speaker"] for r in rows})
        print(f"{args.out / manifest}: {len(rows)} clips, {seconds:.1f} s, {speakers} speakers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
