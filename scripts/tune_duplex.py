"""Tune the duplex predictor's decision thresholds on held-out dialogues.

    .venv/bin/python scripts/tune_duplex.py --model DIR --data VALID_DUPLEX_MANIFEST \\
        [--k 10] [--limit N] [--json OUT] [--offline] [--vad-rule [--model-thresholds]]

RESPOND and STOP are a frame or two among hundreds; a trained predictor's probability for
them peaks at the right frame but often below LISTEN/CONTINUE, so deciding by the argmax
misses most turn switches. The model config's ``duplex.respond_threshold`` /
``duplex.stop_threshold`` decide them once their probability reaches a threshold
(:func:`minmo.models.duplex.decide`). This script runs the model once over the manifest's
``duplex`` rows exactly as ``minmo eval`` does (the listening stream, the recorded assistant
channel as the speaking flag), keeps every frame's probabilities, scores a grid of threshold
pairs with ``minmo eval``'s F1@K rules, prints the table and the best pair (mean of the
assistant and user turn-taking F1) as ``--model-set`` arguments.

Tune on a validation split and report the test split with ``minmo eval``: thresholds chosen
on the test dialogues would flatter the model. ``--offline`` scores one offline pass instead,
on the encoder features the duplex stage trains on: with ``encoder.stream_chunk`` set these
are the listening stream's own (the same figures, much faster); without it they are
full-context, and the gap to the streaming figures is what the windowed stream's limited
look-ahead costs the predictor. ``--vad-rule`` also replays the server's turn taking on the
same dialogues and frames (:func:`minmo.serving.turns.replay_turns`), scored the same way:
the VAD rule alone (answer after 500 ms of silence, barge-in after ``--barge-in-ms`` of
speech, default the server's 600) and the rule with this predictor trusted at the best
thresholds (``trust_predictor``; ``--predictor-stop``: also with its STOP): whether and how
the server should trust the predictor, and how long a barge-in must be heard;
``--respond-silence-ms`` replays how much VAD silence the trusted RESPOND waits for (a
confident predictor that answers at pauses inside a turn needs more; the chosen value goes in
the model's ``duplex.respond_silence_ms``, which the server and ``minmo eval`` use).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

GRID = (None,) + tuple(round(x, 2) for x in np.arange(0.1, 0.91, 0.05))


def _label(threshold: float | None) -> str:
    return "argmax" if threshold is None else f"{threshold:.2f}"


def _server_policies(runs, k: int, respond: float | None, stop: float | None,
                     policies: dict):
    """The server's turn taking over each dialogue's user channel under each named
    :class:`~minmo.serving.turns.TurnPolicy`, scored like the predictor (a trusted predictor
    at these thresholds)."""
    from minmo.eval import duplex_metrics as dm
    from minmo.eval.adapters import DuplexTrace
    from minmo.eval.tasks import score_duplex_trace
    from minmo.models.duplex import decide
    from minmo.serving.turns import server_decisions
    from minmo.serving.vad import SileroVAD

    vad = SileroVAD.from_package()
    totals = {name: dm.DuplexScores() for name in policies}
    for item, true10, trace, wave, speaking10 in runs:
        predicted = decide(torch.from_numpy(trace.probs), respond, stop).numpy()
        replayed = server_decisions(vad, wave, speaking10, trace.frame_ms, predicted, policies)
        for name, decisions in replayed.items():
            totals[name] = totals[name] + score_duplex_trace(
                item, true10, DuplexTrace(trace.frame_ms, decisions), k)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tune_duplex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory or preset")
    parser.add_argument("--data", required=True,
                        help="manifest (or directory of manifests) with duplex rows: a validation split")
    parser.add_argument("--k", type=int, default=10, help="F1@K tolerance in decision frames")
    parser.add_argument("--limit", type=int, default=None, help="first N dialogues")
    parser.add_argument("--json", type=Path, default=None, help="also write every grid score here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--lookahead-frames", type=int, default=None,
                        help="windowed (Whisper) encoders: ListenConfig.window_lookahead_frames of "
                             "the listening stream (default: serving's)")
    parser.add_argument("--offline", action="store_true",
                        help="score one offline pass on the features the predictor was trained on "
                             "instead of the listening stream (see above)")
    parser.add_argument("--vad-rule", action="store_true",
                        help="also score the server's turn taking (VAD rule alone, and with the "
                             "predictor trusted) on the same dialogues")
    parser.add_argument("--barge-in-ms", type=lambda v: [float(x) for x in v.split(",")],
                        default=None, metavar="MS[,MS...]",
                        help="with --vad-rule: the barge-in spans to replay (default: the "
                             "server's, TurnPolicy.barge_in_ms)")
    parser.add_argument("--respond-silence-ms", type=lambda v: [float(x) for x in v.split(",")],
                        default=None, metavar="MS[,MS...]",
                        help="with --vad-rule: the silences a trusted predictor's RESPOND waits "
                             "for (default: the model's duplex.respond_silence_ms)")
    parser.add_argument("--predictor-stop", action="store_true",
                        help="with --vad-rule: also replay the trusted predictor with its STOP "
                             "(TurnPolicy.predictor_stop)")
    parser.add_argument("--model-thresholds", action="store_true",
                        help="with --vad-rule: trust the predictor at the model's configured "
                             "thresholds (a test split) rather than the best on this data")
    args = parser.parse_args(argv)
    from minmo.serving.turns import TurnPolicy

    args.barge_in_ms = args.barge_in_ms or [TurnPolicy.barge_in_ms]
    if args.threads:
        torch.set_num_threads(args.threads)

    from minmo.audio.io import load_audio
    from minmo.eval import duplex_metrics as dm
    from minmo.eval.adapters import DuplexTrace
    from minmo.eval.model_binding import bind_minmo_model
    from minmo.eval.runner import SuiteSpec, read_suite
    from minmo.eval.tasks import score_duplex_trace
    from minmo.models.duplex import decide
    from tqdm import tqdm

    items = [i for i in read_suite(SuiteSpec("manifest", args.data)).items
             if i.task == "duplex" and i.extra.get("labels") and i.audio is not None]
    items = items[:args.limit] if args.limit else items
    if not items:
        print(f"tune_duplex: no duplex rows with audio and labels in {args.data}", file=sys.stderr)
        return 2
    model = bind_minmo_model(args.model)
    args.respond_silence_ms = args.respond_silence_ms or [model.respond_silence_ms]
    if args.lookahead_frames is not None:
        model.listen_cfg = dataclasses.replace(model.listen_cfg,
                                               window_lookahead_frames=args.lookahead_frames)
    runs = []
    for item in tqdm(items, desc="dialogues", unit="dlg"):
        with np.load(item.extra["labels"]) as npz:
            true10 = np.asarray(npz["labels"], dtype=np.int64)
            speaking10 = np.asarray(npz["assistant_speaking"], dtype=np.int64)
        wave = load_audio(item.audio, 16000, channel=0)
        trace = model.duplex(wave, 16000, item, streaming=not args.offline)
        runs.append((item, true10, trace, wave, speaking10))

    scores = []
    for respond in GRID:
        for stop in GRID:
            total = dm.DuplexScores()
            for item, true10, trace, _, _ in runs:
                decisions = decide(torch.from_numpy(trace.probs), respond, stop).numpy()
                total = total + score_duplex_trace(
                    item, true10, DuplexTrace(trace.frame_ms, decisions), args.k)
            scores.append({"respond_threshold": respond, "stop_threshold": stop,
                           "assistant_f1": total.assistant_turn.f1, "user_f1": total.user_turn.f1,
                           "backchannel_accuracy": total.backchannel.accuracy,
                           "objective": (total.assistant_turn.f1 + total.user_turn.f1) / 2})
    best = max(scores, key=lambda r: (r["objective"], r["backchannel_accuracy"]))
    argmax = next(r for r in scores if r["respond_threshold"] is None and r["stop_threshold"] is None)

    print(f"{len(runs)} dialogues, {'offline pass' if args.offline else 'listening stream'}, "
          f"F1@{args.k}; rows: respond threshold, columns: stop threshold; "
          "cells: assistant F1 / user F1")
    print("respond \\ stop | " + " | ".join(_label(s) for s in GRID))
    for respond in GRID:
        cells = [f"{r['assistant_f1']:.2f}/{r['user_f1']:.2f}" for r in scores
                 if r["respond_threshold"] == respond]
        print(f"{_label(respond):>14s} | " + " | ".join(cells))
    for name, row in (("argmax", argmax), ("best", best)):
        print(f"{name}: respond {_label(row['respond_threshold'])}, stop {_label(row['stop_threshold'])}: "
              f"assistant F1 {row['assistant_f1']:.3f}, user F1 {row['user_f1']:.3f}, "
              f"back-channel accuracy {100 * row['backchannel_accuracy']:.1f} %")
    policies = {}
    if args.vad_rule:
        # a test split reports the model's own thresholds (chosen on validation), not its best
        cfg = model.rt.model.cfg.duplex
        respond, stop, which = ((cfg.respond_threshold, cfg.stop_threshold, "model's thresholds")
                                if args.model_thresholds else
                                (best["respond_threshold"], best["stop_threshold"], "best"))
        which = f"{which}: respond {_label(respond)}, stop {_label(stop)}"
        named = {}
        for ms in args.barge_in_ms:
            named[f"server: VAD rule, barge-in {ms:g} ms"] = TurnPolicy(barge_in_ms=ms)
            for silence in args.respond_silence_ms:
                named[f"server: VAD rule + predictor ({which}), barge-in {ms:g} ms, respond "
                      f"after {silence:g} ms of silence"] = TurnPolicy(
                    trust_predictor=True, barge_in_ms=ms, respond_silence_ms=silence)
            if args.predictor_stop:
                named[f"server: VAD rule + predictor with its STOP ({which}), barge-in "
                      f"{ms:g} ms"] = TurnPolicy(trust_predictor=True, predictor_stop=True,
                                                 barge_in_ms=ms)
        policies = _server_policies(runs, args.k, respond, stop, named)
    for name, total in policies.items():
        print(f"{name}: assistant F1 {total.assistant_turn.f1:.3f}, user F1 "
              f"{total.user_turn.f1:.3f}, back-channel accuracy "
              f"{100 * total.backchannel.accuracy:.1f} %, turn-taking latency "
              f"{total.latency.mean_ms:.0f} ms ({total.latency.missed} missed), barge-in latency "
              f"{total.stop_latency.mean_ms:.0f} ms ({total.stop_latency.missed} missed)")
    sets = [f"duplex.{key}={'null' if best[key] is None else best[key]}"
            for key in ("respond_threshold", "stop_threshold")]
    print("set them in the model's model.yaml, or export with: "
          + " ".join(f"--model-set {s}" for s in sets))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "data": args.data, "k": args.k,
                                         "features": "offline" if args.offline else "streaming",
                                         "listen": dataclasses.asdict(model.listen_cfg),
                                         "dialogues": len(runs), "best": best, "grid": scores,
                                         "server": {k: v.as_dict() for k, v in policies.items()}},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
