"""The scheduler: one thread steps every active session together.

Each tick:

1. apply queued client commands, in arrival order, per session;
2. VAD: every session's new audio, 512-sample windows, one batched silero call per round;
3. listening: one batched pass (front end and encoder per session, then one batched LLM
   forward over all sessions' new speech frames, then the duplex predictor) -> per-frame
   turn decisions (:meth:`RealtimeSession.on_frame`); a session whose frames could not
   change anything (the assistant speaking, no VAD event) holds its audio up to
   ``defer_listening_s`` and feeds it in one pass;
4. drafts: a session whose user has gone quiet (the silence a commit keeps) starts its
   reply speculatively (``speculate``), taken or dropped at the turn decision;
5. generation: the live reply, draft and transcript jobs of *all* sessions advance together
   (:func:`minmo.inference.pipeline.step_jobs`: one batched LLM step, batched voice-LM
   steps, token2wav chunks), unless a session's client is not reading (back-pressure);
6. housekeeping: closed sessions are dropped (their state freed), metrics updated.

State lives in the sessions; the runtime (model) is shared and read-only. The asyncio side
talks to the engine only through :meth:`Engine.submit` (thread-safe) and the per-session
``emit`` sink it provides.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from minmo.inference import pipeline as P
from minmo.inference.listen import ListenConfig, listen_step
from minmo.inference.runtime import MinMoRuntime
from minmo.inference.vocoder_pool import VocoderPool
from minmo.serving.metrics import Metrics
from minmo.serving.session import DecisionHook, RealtimeSession, SessionLimits
from minmo.serving.turns import TurnPolicy
from minmo.serving.vad import SileroVAD, split_state, stack_states


@dataclass
class EngineConfig:
    """Scheduler settings.

    Attributes:
        max_sessions: concurrent sessions; more are refused.
        max_outbound_events: events queued for a client before its generation pauses.
        threads: torch intra-op threads for the engine (None: leave as is).
        idle_wait_s: how long the loop sleeps when no session has work (wake-ups are
            immediate on new commands).
        vocoder_thread: run token2wav on a worker thread, overlapping the LLM and voice-LM
            steps of the next ticks (:class:`~minmo.inference.vocoder_pool.VocoderPool`).
        defer_listening_s: while a session's frames could not change anything (the
            assistant busy, no VAD event, no user turn or barge-in candidate open:
            :meth:`RealtimeSession.listening_can_wait`), hold its listening audio up to this
            long and feed it in one batched pass (0: every tick). Saves most of the listening
            stream's LLM forwards while the assistant speaks; a VAD event feeds the held
            audio at once, so barge-in decisions are not delayed. No effect with a
            ``decision_hook``.
        speculate: start a reply once the VAD has heard the silence a commit keeps after
            the user's last speech, before the turn decision (:meth:`RealtimeSession.can_draft`):
            when the turn is committed with that audio, the reply's prompt is fed and its
            first audio often made already. What is said is the same as without (tested);
            a user who goes on costs the dropped draft's compute.
    """

    max_sessions: int = 16
    max_outbound_events: int = 400
    threads: int | None = None
    idle_wait_s: float = 0.05
    vocoder_thread: bool = True
    defer_listening_s: float = 1.0
    speculate: bool = True


class SessionLimitReached(RuntimeError):
    """No more sessions can be opened."""


class Engine:
    """Steps all sessions in one scheduler thread.

    Args:
        rt: shared runtime.
        cfg: scheduler settings.
        gen: default generation settings of new sessions.
        limits: serving settings of new sessions.
        listen: listening-stream settings.
        metrics: where stage latencies go.
        decision_hook: test seam: ``f(FrameInfo) -> Decision | None`` overrides the
            decision of each LLM frame (None: the predictor / VAD rule decides).
    """

    def __init__(self, rt: MinMoRuntime, cfg: EngineConfig | None = None,
                 gen: P.GenerationConfig | None = None, limits: SessionLimits | None = None,
                 listen: ListenConfig | None = None, metrics: Metrics | None = None,
                 decision_hook: DecisionHook | None = None):
        self.rt = rt
        self.cfg = cfg or EngineConfig()
        self.gen = gen or P.GenerationConfig()
        self.limits = limits or SessionLimits(
            turns=TurnPolicy.for_model(rt.model.cfg, trust_predictor=rt.info.trained_predictor))
        self.listen_cfg = listen or ListenConfig()
        self.metrics = metrics or Metrics()
        self.decision_hook = decision_hook
        self.vad = SileroVAD.from_package()
        self.vocoder_pool = VocoderPool(rt.vocoder, self.cfg.threads) \
            if self.cfg.vocoder_thread else None
        if self.vocoder_pool is not None:
            self.vocoder_pool.on_done = lambda: self._wake.set()
        self.sessions: dict[str, RealtimeSession] = {}
        self._commands: deque[tuple[str, str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reserved = 0
        self.ticks = 0
        self.error: BaseException | None = None

    # ---- lifecycle (any thread) ------------------------------------------------------

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="minmo-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.vocoder_pool is not None:
            self.vocoder_pool.close()

    def reserve(self) -> None:
        """Claim a session slot (raises :class:`SessionLimitReached` when full)."""
        with self._lock:
            if len(self.sessions) + self._reserved >= self.cfg.max_sessions:
                raise SessionLimitReached(
                    f"server is at its session limit ({self.cfg.max_sessions}); try again later "
                    "or start the server with a higher --max-sessions")
            self._reserved += 1

    def open(self, emit: Callable[[dict], None], beta: bool = False,
             on_open: Callable[[RealtimeSession], None] | None = None) -> None:
        """Create a session on the engine thread (after :meth:`reserve`); ``on_open`` gets it."""
        self.submit("", "open", (emit, beta, on_open))

    def submit(self, session_id: str, kind: str, payload: Any = None) -> None:
        """Queue a command: ``("event", dict)``, ``("audio", int16 array)``, ``("close", None)``."""
        self._commands.append((session_id, kind, payload))
        self._wake.set()

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds after a tick or command batch (or timeout)."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # ---- the loop (engine thread) ----------------------------------------------------

    def _run(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        while not self._stop.is_set():
            if not self._has_work():
                self._wake.wait(self.cfg.idle_wait_s)
                self._wake.clear()
                self._notify()
                continue
            t0 = time.perf_counter()
            try:
                self.tick()
            except Exception as exc:  # keep serving other sessions; report it
                self.error = exc
                self.metrics.inc("engine_errors")
                import traceback

                traceback.print_exc()
            self.metrics.observe("tick", time.perf_counter() - t0)
            self._notify()

    def _has_work(self) -> bool:
        if self._commands:
            return True
        for s in self.sessions.values():
            if s.closed:
                continue
            if s.pending_samples >= 512:
                return True
            if s.live_jobs() and s.outbound < self.cfg.max_outbound_events and \
                    self._can_advance(s):
                return True
        return False

    def _can_advance(self, s: RealtimeSession) -> bool:
        """False when the session's jobs only wait for the vocoder thread's results."""
        if self.vocoder_pool is None or self.vocoder_pool.pending():
            return True
        return any(not j.text.done or (j.voice is not None and not j.voice.finished)
                   or not j.vocoder_flushed or j.ready_audio for j in s.live_jobs())

    @torch.inference_mode()
    def tick(self) -> None:
        """One scheduling step over all sessions (see module docstring)."""
        self.ticks += 1
        self._apply_commands()
        live = [s for s in self.sessions.values() if not s.closed]
        chunks = {s.id: s.take_audio() for s in live}
        self._vad(live, chunks)
        self._listen(live, chunks)
        self._draft(live)
        self._generate(live)
        self.metrics.set_sessions(len(self.sessions))

    def _apply_commands(self) -> None:
        n = len(self._commands)
        for _ in range(n):
            sid, kind, payload = self._commands.popleft()
            if kind == "open":
                emit, beta, on_open = payload
                with self._lock:
                    self._reserved = max(0, self._reserved - 1)
                    s = RealtimeSession(self.rt, emit, self.metrics, self.gen, self.limits, beta)
                    self.sessions[s.id] = s
                self.metrics.inc("sessions_opened")
                if on_open is not None:
                    on_open(s)
                continue
            s = self.sessions.get(sid)
            if s is None:
                continue
            if kind == "close":
                s.close()
                with self._lock:
                    del self.sessions[sid]
                continue
            self._guard(s, s.apply if kind == "event" else s.append_audio, payload)

    def _guard(self, s: RealtimeSession, fn: Callable[..., Any], *args: Any) -> None:
        """Run one session's work; an exception closes that session only."""
        if s.closed:
            return
        try:
            fn(*args)
        except Exception as exc:  # a bug: isolate it to this session
            import traceback

            traceback.print_exc()
            s.fail(exc)

    def _vad(self, live: list[RealtimeSession], chunks: dict[str, np.ndarray]) -> None:
        rounds = max((chunks[s.id].size // 512 for s in live), default=0)
        for r in range(rounds):
            group = [s for s in live if chunks[s.id].size >= (r + 1) * 512]
            for s in group:
                if s.vad_state is None:
                    s.vad_state = self.vad.init_state(1)
            windows = torch.from_numpy(np.stack([chunks[s.id][r * 512:(r + 1) * 512]
                                                 for s in group]))
            probs, state = self.vad.step(windows, stack_states([s.vad_state for s in group]))
            for s, st, p in zip(group, split_state(state), probs.tolist()):
                s.vad_state = st
                self._guard(s, s.on_vad, p, s.clock + (r + 1) * 512)

    def _listen(self, live: list[RealtimeSession], chunks: dict[str, np.ndarray]) -> None:
        hold = int(self.cfg.defer_listening_s * 16000)
        waves = {}
        for s in live:
            defer = hold > 0 and self.decision_hook is None and s.listening_can_wait()
            waves[s.id] = s.listen_samples(chunks[s.id], defer, hold)
        group = [s for s in live if waves[s.id].size > 0]
        for s in live:
            s.clock += chunks[s.id].size
        if group:
            speaking = [lambda start_s, s=s: s.speaking(int(round(start_s * 16000))) for s in group]
            frames = listen_step(
                self.rt, [s.voice.listen for s in group], [waves[s.id] for s in group],
                speaking, [s.voice.system for s in group], self.listen_cfg)
            for s, fr in zip(group, frames):
                for f in fr:
                    self._guard(s, s.on_frame, f, self.decision_hook)

    def _draft(self, live: list[RealtimeSession]) -> None:
        """Speculative replies: sessions whose user has gone quiet start answering now."""
        if not self.cfg.speculate:
            return
        for s in live:
            if not s.closed and s.can_draft():
                self._guard(s, s.draft_reply)

    def _generate(self, live: list[RealtimeSession]) -> None:
        jobs, owners = [], []
        for s in live:
            if s.outbound >= self.cfg.max_outbound_events:
                continue  # client not reading: pause its generation (back-pressure)
            for job in s.live_jobs():
                jobs.append(job)
                owners.append(s)
        if not jobs:
            return
        events = P.step_jobs(self.rt, jobs, self.gen.voice_steps, self.vocoder_pool,
                             self.gen.fast_start)
        for s, job, evs in zip(owners, jobs, events):
            if evs:
                self._guard(s, s.on_job_events, job, evs)
