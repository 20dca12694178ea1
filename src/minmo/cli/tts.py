"""``minmo tts`` (a text read aloud by the whole model, or speech tokens in a manifest ->
wav files) and ``minmo tokenize`` (fill ``speech_tokens`` into a manifest with the speech
tokenizer).

    minmo tts --text "The kitchen light is on." --out light.wav      # the default model
    minmo tokenize data/train/tts.jsonl --model tiny --set speech_tokenizer.path=runs/tok.safetensors
    minmo tts data/train/tts.jsonl --out-dir out/wavs --model tiny \
        --set flow.path=runs/flow.safetensors --set vocoder.path=runs/hift.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from minmo.cli import add_quantize_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tts`` and ``tokenize``."""
    tts = subparsers.add_parser("tts", help="read a text aloud (--text), or speech tokens of a manifest "
                                "-> 24 kHz wav files (token2wav)",
                                description="With --text: the model reads the text aloud in the assistant's "
                                "voice (the LLM is fed the words, the voice LM speaks them, token2wav renders "
                                "them) and writes --out. With a manifest: synthesise every row that has "
                                "speech_tokens with flow matching + HiFT, offline or streaming in 15-token "
                                "chunks, and write <id>.wav files to --out-dir.")
    tts.add_argument("manifest", nargs="?", help="jsonl manifest whose rows carry speech_tokens")
    tts.add_argument("--text", help="text to read aloud with the whole model (instead of a manifest)")
    tts.add_argument("--out", help="with --text: the .wav to write")
    tts.add_argument("--out-dir", help="with a manifest: folder for the wav files")
    tts.add_argument("--model", default=None, help="with --text: model directory or preset (default: the "
                     "embedded minmo-small); with a manifest: preset or YAML with flow/vocoder/speaker "
                     "sections (default tiny)")
    tts.add_argument("--seed", type=int, default=0, help="with --text: sampling seed of the voice LM")
    tts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. flow.path=runs/flow.safetensors (repeatable)")
    tts.add_argument("--speaker-wav", help="16 kHz reference voice for the speaker embedding (else the assistant's fixed embedding)")
    tts.add_argument("--mask", default="chunk", choices=["chunk", "chunk2", "full_causal", "non_causal"],
                     help="flow attention mask (default chunk: what streaming uses)")
    tts.add_argument("--stream", action="store_true", help="decode through the streaming path (15-token steps)")
    tts.add_argument("--limit", type=int, default=0, help="at most this many rows (0: all)")
    tts.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    add_quantize_argument(tts, "auto")  # with --text: the LLM that is fed the words
    tts.set_defaults(func=run_tts)

    tok = subparsers.add_parser("tokenize", help="fill speech_tokens into a manifest with the speech tokenizer",
                                description="Tokenise each row's audio (target_audio by default) to 25 Hz "
                                "speech tokens, in batches, and write the manifest with speech_tokens set.")
    tok.add_argument("manifest", help="jsonl manifest")
    tok.add_argument("--out", help="output manifest (default: <manifest stem>.tokens.jsonl beside it)")
    tok.add_argument("--model", default="tiny",
                     help="model preset or YAML (speech_tokenizer section), or a package "
                          "directory carrying speech_tokenizer.safetensors (e.g. one "
                          "scripts/train_minmo_small.py exported with --speech)")
    tok.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    tok.add_argument("--field", default="target_audio", choices=["target_audio", "audio"],
                     help="which audio to tokenise (default: the assistant's target_audio)")
    tok.add_argument("--batch-size", type=int, default=16, help="utterances per batch (default 16)")
    tok.add_argument("--allow-random", action="store_true",
                     help="run with random tokenizer weights when speech_tokenizer.path is unset (tests)")
    tok.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    tok.set_defaults(func=run_tokenize)


def run(args: argparse.Namespace) -> int:
    """Dispatch on the sub-command name."""
    return run_tokenize(args) if args.command == "tokenize" else run_tts(args)


def _speaker_embedding(cfg, speaker_wav: str | None, device: str):
    from minmo.models.speaker import assistant_speaker, build_speaker_embedder

    if not speaker_wav:
        return assistant_speaker(cfg.flow.spk_embed_dim).to(device)
    from minmo.audio.io import load_audio

    if cfg.speaker.kind == "tiny" and not cfg.speaker.path:
        raise ValueError("--speaker-wav needs trained speaker weights: set speaker.path (or speaker.kind=onnx "
                         "with speaker.onnx_path)")
    embedder = build_speaker_embedder(cfg.speaker)
    return embedder.embed_wave(load_audio(speaker_wav, 16000)).reshape(1, -1).to(device)


def run_tts(args: argparse.Namespace) -> int:
    """Dispatch: ``--text`` (read aloud) or a manifest of speech tokens."""
    if (args.text is None) == (args.manifest is None):
        raise ValueError("minmo tts: give either --text TEXT (read aloud) or a MANIFEST of speech tokens")
    if args.text is not None:
        if not args.out:
            raise ValueError("minmo tts --text: give --out FILE.wav")
        return run_read_aloud(args)
    if not args.out_dir:
        raise ValueError("minmo tts MANIFEST: give --out-dir FOLDER")
    return run_tokens(args)


def run_read_aloud(args: argparse.Namespace) -> int:
    """The model reads ``--text`` aloud: the LLM is fed the words (``say``), the voice LM and
    token2wav speak them; the wave goes to ``--out``."""
    import sys

    from minmo.audio.io import save_audio
    from minmo.eval.model_binding import read_aloud_token_cap, tts_instruction
    from minmo.inference import pipeline as P
    from minmo.inference.loading import load_runtime

    if args.set:
        raise ValueError("minmo tts --text: --set applies to manifests only; choose the model with --model")
    rt = load_runtime(args.model, seed=args.seed, device=args.device, quantize=args.quantize)
    if rt.info.warning:
        print(f"minmo tts: WARNING: {rt.info.warning}", file=sys.stderr)
    gen = P.GenerationConfig(seed=args.seed, max_speech_tokens=read_aloud_token_cap(args.text, "en"))
    session = P.new_session(rt, P.SessionConfig(generation=gen))
    said = P.reply(rt, None, session, text=tts_instruction(args.text, None, None), say=args.text)
    save_audio(args.out, said.wave, said.sample_rate)
    print(f"minmo tts: {said.wave.size / said.sample_rate:.2f} s of speech -> {args.out}")
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    """Synthesise the rows' speech tokens; report written / skipped rows."""
    import soundfile as sf
    import torch
    from tqdm import tqdm

    from minmo.config import load_model_config
    from minmo.data.manifest import read_manifest
    from minmo.inference.token2wav import build_token2wav

    cfg = load_model_config(args.model or "tiny", args.set)
    scan = read_manifest(args.manifest)
    rows = [r for r in scan.rows if r.speech_tokens]
    skipped = len(scan.rows) - len(rows)
    if args.limit:
        rows = rows[: args.limit]
    t2w = build_token2wav(cfg, args.device, args.mask)
    spk = _speaker_embedding(cfg, args.speaker_wav, args.device)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for row in tqdm(rows, desc="tts", unit="row"):
        tokens = torch.tensor([row.speech_tokens], dtype=torch.long, device=args.device)
        if args.stream:
            audio = t2w.stream(tokens, spk)
        else:
            audio, _ = t2w.synthesize(tokens, spk)
        sf.write(out_dir / f"{row.id}.wav", audio[0].float().cpu().numpy(), t2w.sample_rate, subtype="PCM_16")
    print(f"minmo tts: wrote {len(rows)} wav files to {out_dir} ({skipped} rows without speech_tokens skipped, "
          f"{len(scan.bad)} bad rows)")
    return 0


def tokenizer_config(model: str, overrides: list[str]) -> Any:
    """The model config whose ``speech_tokenizer`` section ``minmo tokenize`` builds: a preset
    or YAML as given, or a package directory's ``model.yaml`` with the tokenizer weights it
    carries (``speech_tokenizer.safetensors``) unless ``--set speech_tokenizer.path`` names
    others.

    Raises:
        ConfigError: a package directory without ``model.yaml`` or tokenizer weights.
    """
    from minmo.config import ConfigError, load_model_config

    package = Path(model)
    if not package.is_dir():
        return load_model_config(model, overrides)
    if not (package / "model.yaml").is_file():
        raise ConfigError(f"--model {model}: a directory without model.yaml (give a package "
                          "directory, a model YAML or a preset name)")
    cfg = load_model_config(package / "model.yaml", overrides)
    weights = package / "speech_tokenizer.safetensors"
    if not cfg.speech_tokenizer.path:
        if not weights.is_file():
            raise ConfigError(f"--model {model}: the package carries no speech tokenizer "
                              f"({weights.name}); give the speech run's trained.yaml, or "
                              "--set speech_tokenizer.path=FILE")
        cfg.speech_tokenizer.path = str(weights)
    return cfg


def run_tokenize(args: argparse.Namespace) -> int:
    """Tokenise the manifest's audio in batches; rows whose audio is missing are reported."""
    import torch
    from tqdm import tqdm

    from minmo.audio.io import AudioError, load_audio
    from minmo.data.manifest import read_manifest, tokens_manifest_path, write_manifest
    from minmo.models.speech_tokenizer import SpeechTokenizer, build_speech_tokenizer

    cfg = tokenizer_config(args.model, args.set)
    model = build_speech_tokenizer(cfg.speech_tokenizer, allow_random=args.allow_random)
    if isinstance(model, SpeechTokenizer):
        model = model.to(args.device)
    scan = read_manifest(args.manifest)
    out = Path(args.out) if args.out else tokens_manifest_path(args.manifest)
    todo = [r for r in scan.rows if getattr(r, args.field)]
    failed = 0
    for start in tqdm(range(0, len(todo), args.batch_size), desc="tokenize", unit="batch"):
        batch, waves = todo[start:start + args.batch_size], []
        for row in batch:
            try:
                offset = row.offset if args.field == "audio" else 0.0
                duration = row.duration if args.field == "audio" and row.offset else None
                waves.append(torch.from_numpy(load_audio(getattr(row, args.field), 16000, offset, duration)))
            except AudioError as err:
                print(f"minmo tokenize: row {row.id}: {err} (skipped)")
                waves.append(None)
                failed += 1
        good = [(r, w) for r, w in zip(batch, waves) if w is not None and len(w) >= 400]
        if not good:
            continue
        for (row, _), ids in zip(good, model.tokenize_waves([w for _, w in good])):
            row.speech_tokens = ids.tolist()
    write_manifest(out, scan.rows)
    done = sum(1 for r in todo if r.speech_tokens)
    print(f"minmo tokenize: {done} rows tokenised ({failed} unreadable, {len(scan.bad)} bad rows) -> {out}")
    return 0
