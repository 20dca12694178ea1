"""What the input projector says before the LLM reads it: greedy CTC in the LLM's
embedding space (``models/embedding_ctc.py``) over an asr manifest, scored by WER.

    .venv/bin/python scripts/ctc_probe.py --model M --data DIR/asr.jsonl [--checkpoint CKPT]
        [--limit N] [--show 5]

``--model`` is an overlay package or any model ``minmo`` loads; ``--checkpoint`` (a run's
``checkpoints/step_*`` directory or its ``trainable.safetensors``) replaces the tensors it
holds, so a running ``s2t_ctc`` stage can be probed between checkpoints. After ``s2t_ctc`` the
token nearest each frame is the word said there; a high WER here with a low one from
``minmo eval`` means the LLM reads more than the projector's nearest tokens (and the reverse
means the LLM has not yet learnt to read them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def probe(model: torch.nn.Module, manifest: Path, limit: int | None = None,
          batch_size: int = 8) -> list[tuple[str, str]]:
    """``[(reference, greedy CTC reading)]`` for the first ``limit`` rows of ``manifest``."""
    from minmo.config import DataConfig, TrainConfig
    from minmo.data.manifest import read_manifest
    from minmo.training.data_source import DataPosition
    from minmo.training.manifest_data import build_manifest_source

    texts = {row.id: row.text for row in read_manifest(manifest).rows}
    cfg = TrainConfig(stage="s2t_ctc", data=DataConfig(
        train=[str(manifest)], batch_size=batch_size, num_workers=0, shuffle=False,
        max_audio_seconds=30.0))
    pairs: list[tuple[str, str]] = []
    for batch, pos in build_manifest_source(cfg, model, 0, 1).batches(DataPosition()):
        if pos.epoch > 0 or (limit is not None and len(pairs) >= limit):
            break
        for row_id, ids in zip(batch["ids"], model.ctc_decode(batch["feats"], batch["feat_lens"])):
            pairs.append((texts[row_id], model.tokenizer.decode(ids)))
    return pairs[:limit]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="overlay package or model spec")
    p.add_argument("--data", required=True, type=Path, help="asr manifest (jsonl)")
    p.add_argument("--checkpoint", type=Path, help="trained tensors to load over the model's")
    p.add_argument("--limit", type=int, help="first N rows only")
    p.add_argument("--show", type=int, default=5, help="print this many readings")
    args = p.parse_args(argv)

    from minmo.checkpoints import load_tensors
    from minmo.eval.metrics import wer
    from minmo.inference.loading import load_runtime

    torch.set_num_threads(1)
    model = load_runtime(args.model).model
    if args.checkpoint is not None:
        path = args.checkpoint / "trainable.safetensors" if args.checkpoint.is_dir() else args.checkpoint
        result = model.load_state_dict(load_tensors(path), strict=False)
        if result.unexpected_keys:
            raise SystemExit(f"ctc_probe: {path}: tensors the model does not have: "
                             f"{result.unexpected_keys[:3]}")
    pairs = probe(model, args.data, args.limit)
    for ref, hyp in pairs[: args.show]:
        print(f"  {ref}\n  -> {hyp}")
    refs, hyps = zip(*pairs)
    print(f"{args.data}: {len(pairs)} rows, greedy CTC WER {100 * wer(list(refs), list(hyps)):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
