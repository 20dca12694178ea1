"""Round-trip WER of a trained tiny speech stack under different inference settings (mask,
Euler steps, guidance, starting noise, a voice prompt), judged by the tokenizer's own CTC head.

Reads the runs of ``scripts/train_speech_tiny.py`` in ``--out`` (tokenizer, the flow run and
the vocoder run named) and the test split of ``--data``; prints one JSON line per setting
with the WER of the assistant's and the held-out speakers' utterances, after the WER of
their real audio and of the vocoder's copy of the real mel::

    python scripts/speech_inference_sweep.py --data /tmp/s10 --out runs/speech_tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from minmo.audio.mel import mel_spectrogram
from minmo.config import load_model_config
from minmo.models.speaker import assistant_speaker
from minmo.training.speech_stages import load_speech_items

SETTINGS = {
    "chunk10": {}, "non_causal": {"mask_mode": "non_causal"}, "full_causal": {"mask_mode": "full_causal"},
    "steps20": {"n_timesteps": 20}, "steps5": {"n_timesteps": 5},
    "cfg0": {"cfg_rate": 0.0}, "cfg0.3": {"cfg_rate": 0.3}, "cfg1.5": {"cfg_rate": 1.5},
    "noise0.7": {"temperature": 0.7}, "prompt": {"prompt": True}, "mu": {"mu": True},
}
"""Setting name -> keyword arguments of :meth:`ChunkFlowMatching.synthesize` (``prompt``: the
first assistant utterance of the valid split as voice prompt, its tokens and mel; ``mu``: no
ODE, the token encoder's output itself as the mel, chunk mask: a mel only when the flow
trained with a prior loss, ``flow.prior_loss_weight``)."""


def recipe():
    spec = importlib.util.spec_from_file_location("train_speech_tiny", Path(__file__).with_name("train_speech_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="corpus of `minmo data synth` (valid/, test/)")
    ap.add_argument("--out", required=True, help="the recipe's output directory")
    ap.add_argument("--flow-run", default="flow_anneal")
    ap.add_argument("--vocoder-run", default="vocoder")
    ap.add_argument("--eval-limit", type=int, default=30, help="test utterances per voice group")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r, out, data = recipe(), Path(args.out), Path(args.data)
    tok, flow, vocoder = r.load_stack(out, load_model_config(out / "model.yaml"), args.flow_run, args.vocoder_run)
    spk = assistant_speaker()
    test = load_speech_items([data / "test"])
    groups = {"assistant": [i for i in test if i["voice"] == "assistant"][: args.eval_limit],
              "other": [i for i in test if i["voice"] != "assistant"][: args.eval_limit]}
    prompt = next(i for i in load_speech_items([data / "valid"], "assistant"))

    def ctc(w24: torch.Tensor) -> str:
        """The CTC judge on 24 kHz audio."""
        return r.ctc_transcript(tok, w24, 24000)

    with torch.no_grad():
        ptok, = tok.tokenize_waves([prompt["w16"]])
        pmel = mel_spectrogram(prompt["w24"])
        ptok = ptok[: pmel.shape[-1] // flow.ratio]  # the mel may end a frame short of the tokens
        for items in groups.values():
            for it in items:
                it["tokens"], = tok.tokenize_waves([it["w16"]])
                it["mel"] = mel_spectrogram(it["w24"])
        refs = {v: [it["text"] for it in items] for v, items in groups.items()}
        for name, judge in (("real", lambda it: r.ctc_transcript(tok, it["w16"])),
                            ("vocoder_copy", lambda it: ctc(vocoder(it["mel"][None])[0][0]))):
            print(json.dumps({"setting": name, **{v: round(r.wer(refs[v], [judge(it) for it in items]), 4)
                                                  for v, items in groups.items()}}), flush=True)
        for name in args.settings:
            kw, start = dict(SETTINGS[name]), time.time()
            if kw.pop("prompt", False):
                kw.update(prompt_tokens=ptok[None], prompt_mel=pmel[None])
            if kw.pop("mu", False):
                mel_of = lambda t: flow.encode(t[None], torch.tensor([len(t)]), "chunk")  # noqa: E731
            else:
                mel_of = lambda t: flow.synthesize(t[None], spk, **kw)  # noqa: E731
            wers = {}
            for v, items in groups.items():
                hyps = [ctc(vocoder(mel_of(it["tokens"]))[0][0]) for it in items]
                wers[v] = round(r.wer(refs[v], hyps), 4)
            print(json.dumps({"setting": name, **wers, "seconds": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
