"""``minmo serve``: the real-time full-duplex server (OpenAI Realtime WebSocket + browser page)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from minmo.cli import add_quantize_argument


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="real-time full-duplex voice server: OpenAI Realtime WebSocket API + browser page",
        description="Serve a MinMo model over the OpenAI Realtime WebSocket protocol "
        "(ws://HOST:PORT/v1/realtime) with a browser page at http://HOST:PORT/. Without "
        "--model the embedded default minmo-small is used (CPU-trained on synthetic speech: "
        "its limits are in the warning it prints and in docs/minmo_small.md).",
    )
    p.add_argument("--model", default=None,
                   help="model directory (model.yaml + model.safetensors, or a training run) "
                   "or preset name (tiny, minmo-7b, ...); default: embedded minmo-small")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("MINMO_API_KEY"),
                   help="require this key (Authorization: Bearer KEY); env MINMO_API_KEY")
    p.add_argument("--max-sessions", type=int, default=16,
                   help="concurrent sessions; more are refused (default 16)")
    p.add_argument("--max-message-bytes", type=int, default=2 * 1024 * 1024,
                   help="largest WebSocket message a client may send (default 2 MiB)")
    p.add_argument("--idle-timeout", type=float, default=300.0, help="seconds without client "
                   "events before a session is closed")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the engine (default: half the cores, at least 1)")
    p.add_argument("--max-text-tokens", type=int, default=200,
                   help="reply length limit in text tokens (default 200; a client's "
                   "max_output_tokens can lower it)")
    p.add_argument("--max-speech-tokens", type=int, default=1500,
                   help="reply speech limit in speech tokens, 25 per second (default 1500)")
    p.add_argument("--temperature", type=float, default=0.0, help="text sampling (0: greedy)")
    p.add_argument("--transcript-beam-size", type=int, default=1, metavar="N",
                   help="decode the input transcripts (what the page shows the user said) by a "
                   "beam search of width N inside the engine's batched steps; each is then "
                   "sent whole when its search ends (default 1: greedy, streamed token by "
                   "token; 4 heard real voices 7 points better offline: docs/eval.md). "
                   "Replies stay greedy or sampled, spoken as they are written")
    p.add_argument("--vocoder", choices=("auto", "token2wav", "placeholder"), default="auto",
                   help="speech decoder: token2wav (flow + HiFT) or placeholder tones")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_quantize_argument(p, "auto")
    p.add_argument("--turn-policy", choices=("auto", "vad", "predictor"), default="auto",
                   help="who decides when to answer: the duplex predictor with VAD (answers "
                   "after the model's duplex.respond_silence_ms of silence, 200 ms for "
                   "minmo-small; VAD still answers after 500 ms) or the VAD rule "
                   "alone (500 ms of silence); auto: the predictor when the model's duplex "
                   "predictor is trained. Either way 600 ms of user speech over the "
                   "assistant interrupts it (shorter back-channels do not), and so does a "
                   "shorter one the model hears as a command (--read-commands); see "
                   "docs/serving.md")
    p.add_argument("--barge-in-ms", type=float, default=None,
                   help="user speech over the assistant that interrupts it, in ms (default: "
                   "TurnPolicy's 600, longer than back-channels; chosen on validation "
                   "dialogues)")
    p.add_argument("--defer-listening", type=float, default=1.0, metavar="SECONDS",
                   help="while the assistant speaks and nothing can be decided (no VAD event, "
                   "no open user turn), hold the listening stream's audio up to this long and "
                   "feed it in one batched pass (0: every tick; default 1.0)")
    p.add_argument("--speculate", action=argparse.BooleanOptionalAction, default=True,
                   help="start the reply once the VAD hears the silence a commit keeps after "
                   "the user's last speech (100 ms), before the turn decision; taken if the "
                   "turn ends there (the same reply, sooner), dropped if the user goes on "
                   "(default: on; --no-speculate: start at the decision)")
    p.add_argument("--read-commands", action=argparse.BooleanOptionalAction, default=True,
                   help="read user speech over the assistant that is too short for "
                   "--barge-in-ms: the model transcribes it once the user pauses 150 ms, and "
                   "'stop', 'wait', 'hold on', ... interrupt (default: on; a read took "
                   "0.26-0.35 s of the engine thread with minmo-small on 2 CPU cores)")
    p.add_argument("--predictor-stop", action="store_true",
                   help="with a trusted predictor, let its STOP interrupt sooner (off: "
                   "minmo-small's STOP stops at too many back-channels)")
    p.set_defaults(func=run)
    return p


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound (checked before the model loads, so a busy port
    fails at once instead of after the load)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from minmo.inference.loading import load_runtime
    from minmo.inference.pipeline import GenerationConfig
    from minmo.serving.engine import Engine, EngineConfig
    from minmo.serving.server import ServerConfig, create_app
    from minmo.serving.session import SessionLimits
    from minmo.serving.turns import TurnPolicy

    if not _port_free(args.host, args.port):
        print(f"minmo serve: error: {args.host}:{args.port} is in use (another server?); "
              "choose another with --port", file=sys.stderr)
        return 2
    if args.transcript_beam_size < 1:
        print("minmo serve: error: --transcript-beam-size must be >= 1 (1: greedy)",
              file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    rt = load_runtime(args.model, device=args.device, vocoder=args.vocoder,
                      quantize=args.quantize)
    if rt.info.warning:
        print(f"minmo serve: WARNING: {rt.info.warning}", file=sys.stderr)
    gen = GenerationConfig(max_text_tokens=args.max_text_tokens,
                           max_speech_tokens=args.max_speech_tokens,
                           temperature=args.temperature, seed=None,
                           beam_size=args.transcript_beam_size)
    trust = rt.info.trained_predictor if args.turn_policy == "auto" \
        else args.turn_policy == "predictor"
    turns = TurnPolicy.for_model(rt.model.cfg, trust_predictor=trust,
                                 predictor_stop=args.predictor_stop,
                                 read_commands=args.read_commands)
    if args.barge_in_ms is not None:
        turns = dataclasses.replace(turns, barge_in_ms=args.barge_in_ms)
    limits = SessionLimits(turns=turns)
    engine = Engine(rt, EngineConfig(max_sessions=args.max_sessions, threads=threads,
                                     defer_listening_s=args.defer_listening,
                                     speculate=args.speculate),
                    gen=gen, limits=limits).start()
    app = create_app(engine, ServerConfig(api_key=args.api_key,
                                          max_message_bytes=args.max_message_bytes,
                                          idle_timeout_s=args.idle_timeout))
    barge = f"{turns.barge_in_ms:.0f} ms of speech" + (
        ", a shorter command ('stop', 'wait', ...)" if turns.read_commands else "") + (
        " or the predictor's STOP" if trust and turns.predictor_stop else "")
    if rt.info.quantization:
        print(f"minmo serve: {rt.info.quantization}", file=sys.stderr)
    print(f"minmo serve: model {rt.info.name} ({rt.info.source}), speech: {rt.info.vocoder}, "
          f"turns: {'duplex predictor + VAD' if trust else 'VAD rule'} ("
          + (f"answers after {turns.respond_silence_ms:.0f} ms of silence; " if trust else "")
          + f"barge-in: {barge}"
          + (f"; replies start at {limits.draft_silence_ms} ms of silence, speculatively"
             if args.speculate else "")
          + "); "
          f"page http://{args.host}:{args.port}/  realtime ws://{args.host}:{args.port}/v1/realtime"
          + ("  (API key required)" if args.api_key else ""), file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    ws_max_size=4 * args.max_message_bytes, ws="websockets-sansio")
    finally:
        engine.stop()
    return 0
