"""What a beam search of transcripts costs against greedy decoding, in one run.

    .venv/bin/python benchmarks/bench_beam.py [--model minmo-small] [--manifest M.jsonl]
        [--limit 30] [--beam-size 4] [--threads 1]

Transcribes the same clips greedily and by beam search (``inference/beam.py``), the two
alternating clip by clip so that other load on the machine falls on both alike, and prints
the seconds each took, their ratio, and the median per-clip ratio. The clips are a manifest's
``audio`` rows (paths relative to the manifest), or, without one, espeak-ng sentences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SENTENCES = ("Could you turn off the kitchen lights please?",
             "What is the capital of France?",
             "Remind me to call the dentist after lunch.",
             "The concert was cancelled because of the storm.",
             "How far is it from here to the airport?",
             "Play some relaxing piano music in the living room.")


def _clips(manifest: str | None, limit: int) -> list[np.ndarray]:
    from minmo.audio.io import load_audio

    if manifest is not None:
        rows = [json.loads(line) for line in Path(manifest).read_text().splitlines() if line]
        base = Path(manifest).parent
        return [load_audio(base / r["audio"], 16000) for r in rows[:limit]]
    if shutil.which("espeak-ng") is None:
        raise SystemExit("bench_beam: give --manifest, or install espeak-ng for its sentences")
    waves = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(limit):
            path = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path),
                            SENTENCES[i % len(SENTENCES)]], check=True)
            waves.append(load_audio(path, 16000))
    return waves


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minmo-small")
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from minmo.inference import pipeline as P
    from minmo.inference.loading import load_runtime

    torch.set_num_threads(args.threads)
    rt = load_runtime(args.model, vocoder="placeholder")
    waves = _clips(args.manifest, args.limit)
    greedy, beam = P.GenerationConfig(), P.GenerationConfig(beam_size=args.beam_size)
    P.transcribe(rt, waves[0], gen=greedy)  # warm up both paths
    P.transcribe(rt, waves[0], gen=beam)
    t_greedy, t_beam = [], []
    for wave in waves:
        for gen, times in ((greedy, t_greedy), (beam, t_beam)):
            start = time.perf_counter()
            P.transcribe(rt, wave, gen=gen)
            times.append(time.perf_counter() - start)
    audio = sum(w.size for w in waves) / 16000
    ratios = [b / g for g, b in zip(t_greedy, t_beam)]
    print(f"{len(waves)} clips, {audio:.1f} s of speech, {args.threads} thread(s), {args.model}")
    print(f"greedy {sum(t_greedy):.1f} s, beam {args.beam_size} {sum(t_beam):.1f} s: "
          f"{sum(t_beam) / sum(t_greedy):.2f} times the greedy time "
          f"(median per clip {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
