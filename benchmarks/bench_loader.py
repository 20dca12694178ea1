"""Data loader throughput: utterances/s and audio-seconds/s through the full training path
(manifest -> wav read + resample -> fbank/LFR front end -> ChatML ids -> padded batch).

    .venv/bin/python benchmarks/bench_loader.py --manifests /tmp/s/train --workers 2

The front end is the model's (``minmo.audio.features.build_frontend``) and the tokenizer the
LLM's (``minmo.models.llm.load_tokenizer``; a byte-level stand-in if that is unavailable).
The first batch (worker start-up) is excluded from the timing.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

from minmo.config import FrontendConfig, LLMConfig


class _ByteTokenizer:
    pad_id, eos_id, im_start_id, im_end_id, sos_speech_id, eos_speech_id = range(6)

    def encode(self, text: str) -> list[int]:
        return [b + 6 for b in text.encode("utf-8")]


def _tokenizer():
    try:
        from minmo.models.llm import load_tokenizer

        return load_tokenizer(LLMConfig()), "builtin:tiny"
    except Exception as exc:  # noqa: BLE001 - benchmark falls back, and says so
        return _ByteTokenizer(), f"byte stand-in ({type(exc).__name__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifests", nargs="+", default=["/tmp/s/train"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-seconds", type=float, default=120.0,
                    help="dynamic batch budget (padded audio seconds)")
    ap.add_argument("--frontend", choices=["sensevoice", "whisper", "none"], default="sensevoice",
                    help="none: raw waveforms (front end run later, e.g. on the GPU)")
    ap.add_argument("--max-batches", type=int, default=0, help="0: one full epoch")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    from minmo.audio.features import build_frontend
    from minmo.data.loader import build_loader

    tok, tok_name = _tokenizer()
    fe = None if args.frontend == "none" else build_frontend(
        FrontendConfig(kind=args.frontend, n_mels=128 if args.frontend == "whisper" else 80))
    cfg = SimpleNamespace(batch_size=64, max_batch_seconds=args.batch_seconds,
                          num_workers=args.workers, shuffle=True, max_audio_seconds=60.0,
                          max_text_tokens=0)
    loader = build_loader(cfg, args.manifests, fe, tok, seed=0)
    rows = {r.id: r for r in loader.dataset.rows}
    n_utt = n_sec = n_batches = 0
    start = None
    for i, batch in enumerate(loader):
        if i == 0:
            start = time.perf_counter()
            continue
        n_batches += 1
        n_utt += len(batch["ids"])
        n_sec += sum((rows[k].duration or 0.0) for k in batch["ids"])
        if args.max_batches and n_batches >= args.max_batches:
            break
    wall = time.perf_counter() - (start or time.perf_counter())
    result = {
        "workers": args.workers, "frontend": args.frontend, "tokenizer": tok_name,
        "batches": n_batches, "utterances": n_utt, "audio_seconds": round(n_sec, 1),
        "wall_s": round(wall, 2), "utt_per_s": round(n_utt / wall, 1),
        "audio_s_per_s": round(n_sec / wall, 1), "batch_seconds": args.batch_seconds,
        "skipped": loader.summary()["skipped_at_load"] + loader.summary()["bad_rows"],
    }
    print(" | ".join(f"{k} {v}" for k, v in result.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
