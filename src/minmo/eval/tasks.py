"""Per-task evaluators: run a model over one group of items and turn its outputs into rows.

Each evaluator takes a :class:`GroupContext` (the model, the judge, the settings and the
items of one task on one test set) and returns a :class:`GroupOutcome`. A model error on one
item never stops the run: the item is scored as an empty output (so it counts as wrong, not as
missing), the error is listed in the run's problems and counted in ``details["failed"]``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minmo.eval import duplex_metrics as dm
from minmo.eval import metrics, prosody
from minmo.eval.adapters import DuplexTrace, SpokenReply, TranscriberJudge
from minmo.eval.labels import classification_views
from minmo.eval.normalize import uses_cer
from minmo.eval.readers import EvalItem
from minmo.eval.results import DuplexExample, MetricRow, SkippedTask

JUDGEABLE_STYLES = {"fast": "speed", "slow": "speed", "high": "pitch", "low": "pitch"}


@dataclass
class GroupContext:
    """Everything an evaluator needs for one (task, test set) group."""

    task: str
    dataset: str
    items: list[EvalItem]
    model: Any
    system: str
    judge: TranscriberJudge | None = None
    k: int = 10
    sample_rate: int = 16000
    max_duplex_examples: int = 3
    advance: Callable[[int], None] | None = None
    """Told of each item as the model finishes its first call on it (a progress bar)."""


@dataclass
class GroupOutcome:
    """Rows, skips, problems, latency records, duplex examples and per-item predictions."""

    rows: list[MetricRow] = field(default_factory=list)
    skipped: list[SkippedTask] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    latency_records: list[dict[str, float]] = field(default_factory=list)
    duplex_examples: list[DuplexExample] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)


def load_item_audio(item: EvalItem, sample_rate: int) -> np.ndarray:
    """Input speech of ``item`` as mono float32 ``(N,)`` at ``sample_rate`` (window/channel
    fields of project manifests honoured)."""
    from minmo.audio.io import load_audio

    if item.audio is None:
        raise ValueError(f"item {item.id} ({item.dataset}) has no input audio")
    return load_audio(item.audio, sample_rate, offset=float(item.extra.get("offset") or 0.0),
                      duration=item.extra.get("duration"), channel=item.extra.get("channel"))


class _Runner:
    """Calls the model item by item, turning exceptions into recorded failures, and tells
    ``ctx.advance`` of each item once its first call has ended."""

    def __init__(self, ctx: GroupContext, out: GroupOutcome):
        self.ctx, self.out, self.failed = ctx, out, 0
        self._seen: set[int] = set()

    def call(self, item: EvalItem, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # a model or audio error on one item must not end the run
            self.failed += 1
            last = traceback.extract_tb(exc.__traceback__)[-1]
            self.out.problems.append(
                f"{self.ctx.system} {self.ctx.task} {item.dataset}/{item.id}: "
                f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})"
            )
            return default
        finally:
            if id(item) not in self._seen:
                self._seen.add(id(item))
                if self.ctx.advance is not None:
                    self.ctx.advance(1)


def _needs(ctx: GroupContext, out: GroupOutcome, capability: str) -> bool:
    supports = getattr(ctx.model, "supports_task", None)
    if supports is not None and not supports(ctx.task):
        reason = f"{ctx.system} is not compared on this task"
    elif capability not in ctx.model.capabilities():
        reason = f"model has no '{capability}' ability"
    else:
        return True
    out.skipped.append(SkippedTask(ctx.task, ctx.dataset, ctx.system, reason, len(ctx.items)))
    return False


def _row(ctx: GroupContext, task: str, metric: str, value: float, unit: str, higher: bool,
         count: int, details: dict[str, Any], runner: _Runner) -> MetricRow:
    details = {**details, "failed": runner.failed}
    return MetricRow(task, ctx.dataset, ctx.system, metric, value, unit, higher, count, details)


def _speech_to_text(ctx: GroupContext, out: GroupOutcome, runner: _Runner, task: str) -> list[str]:
    return [
        runner.call(item, lambda item=item: str(ctx.model.speech_to_text(
            task, load_item_audio(item, ctx.sample_rate), ctx.sample_rate, item)), "")
        for item in ctx.items
    ]


def evaluate_asr(ctx: GroupContext) -> GroupOutcome:
    """ASR / contextual ASR: corpus WER (or CER for unsegmented scripts), per speaker."""
    out = GroupOutcome()
    if not _needs(ctx, out, "speech_to_text"):
        return out
    runner = _Runner(ctx, out)
    hyps = _speech_to_text(ctx, out, runner, ctx.task)
    language = ctx.items[0].language
    edits = metrics.corpus_edits([i.reference for i in ctx.items], hyps, language)
    details: dict[str, Any] = {"edits": edits.as_dict(), "language": language}
    if all(i.speaker for i in ctx.items):
        per = metrics.per_speaker_edits(
            [(i.speaker, i.reference, h) for i, h in zip(ctx.items, hyps)], language)
        details["per_speaker"] = metrics.as_plain(per)
    unit = metrics.error_unit(language).upper()
    out.rows.append(_row(ctx, ctx.task, unit, edits.rate * 100, "%", False, len(hyps), details,
                         runner))
    out.predictions = [{"id": i.id, "reference": i.reference, "hypothesis": h,
                        "language": language} for i, h in zip(ctx.items, hyps)]
    return out


def evaluate_s2tt(ctx: GroupContext) -> GroupOutcome:
    """Speech translation: sacrebleu corpus BLEU with the target language's tokenizer."""
    out = GroupOutcome()
    if not _needs(ctx, out, "speech_to_text"):
        return out
    runner = _Runner(ctx, out)
    hyps = _speech_to_text(ctx, out, runner, "s2tt")
    target = ctx.items[0].extra.get("target_language") or "en"
    score = metrics.corpus_bleu(hyps, [i.reference for i in ctx.items], target)
    out.rows.append(_row(ctx, "s2tt", "BLEU", score.score, "BLEU", True, len(hyps),
                         score.as_dict(), runner))
    out.predictions = [{"id": i.id, "reference": i.reference, "hypothesis": h,
                        "target_language": target} for i, h in zip(ctx.items, hyps)]
    return out


def evaluate_classification(ctx: GroupContext) -> GroupOutcome:
    """LID / emotion / audio events / speaker attributes: label read from the reply."""
    out = GroupOutcome()
    if not _needs(ctx, out, "speech_to_text"):
        return out
    runner = _Runner(ctx, out)
    replies = _speech_to_text(ctx, out, runner, ctx.task)
    for view in classification_views(ctx.task, ctx.items):
        preds = [view.space.extract(r) for r in replies]
        score = metrics.classification_score(view.truth, preds, view.matrix_labels)
        out.rows.append(_row(ctx, ctx.task, view.name, score.accuracy * 100, "%", True,
                             score.count, score.as_dict(), runner))
        for n, (item, pred) in enumerate(zip(ctx.items, preds)):
            if len(out.predictions) <= n:
                out.predictions.append({"id": item.id, "reply": replies[n]})
            out.predictions[n][view.name] = {"true": view.truth[n], "predicted": pred}
    return out


def _answers(item: EvalItem) -> list[str]:
    answers = item.extra.get("answers")
    return list(answers) if answers else [item.reference]


def evaluate_s2t_chat(ctx: GroupContext) -> GroupOutcome:
    """Spoken QA, text reply: normalised answer match (see :func:`metrics.answer_is_correct`)."""
    out = GroupOutcome()
    if not _needs(ctx, out, "speech_to_text"):
        return out
    runner = _Runner(ctx, out)
    replies = _speech_to_text(ctx, out, runner, "s2t_chat")
    correct = [metrics.answer_is_correct(r, _answers(i)) for i, r in zip(ctx.items, replies)]
    out.rows.append(_row(ctx, "spoken_qa_s2t", "S2T accuracy", 100 * float(np.mean(correct)), "%",
                         True, len(correct), {"correct": int(sum(correct))}, runner))
    out.predictions = [{"id": i.id, "answers": _answers(i), "reply": r, "correct": c}
                       for i, r, c in zip(ctx.items, replies, correct)]
    return out


def evaluate_s2s_chat(ctx: GroupContext) -> GroupOutcome:
    """Spoken QA, spoken reply: the reply audio is transcribed by the judge, then matched
    (S2S accuracy); the judge's transcript is also scored against the reply's own text
    (reply speech WER/CER: how intelligibly the model speaks, right answer or not)."""
    out = GroupOutcome()
    if not _needs(ctx, out, "spoken_reply"):
        return out
    if ctx.judge is None:
        out.skipped.append(SkippedTask("spoken_qa_s2s", ctx.dataset, ctx.system,
                                       "no ASR judge for the spoken replies (--asr-judge)",
                                       len(ctx.items)))
        return out
    runner = _Runner(ctx, out)
    language = ctx.items[0].language or "en"  # the group's: reply WER is scored in it
    heard, text_correct = [], []
    for item in ctx.items:
        reply: SpokenReply = runner.call(item, lambda item=item: ctx.model.spoken_reply(
            load_item_audio(item, ctx.sample_rate), ctx.sample_rate, item), SpokenReply(""))
        if reply.timings_ms:
            out.latency_records.append(dict(reply.timings_ms))
        transcript = ""
        if reply.wave is not None and np.asarray(reply.wave).size:
            transcript = runner.call(item, lambda r=reply, item=item: ctx.judge.transcribe(
                np.asarray(r.wave, dtype=np.float32), r.sample_rate, item.language or "en"), "")
        heard.append(transcript)
        text_correct.append(metrics.answer_is_correct(reply.text, _answers(item)))
        out.predictions.append({"id": item.id, "answers": _answers(item), "reply_text": reply.text,
                                "heard": transcript, "judge": ctx.judge.name,
                                "language": language})
    correct = [metrics.answer_is_correct(h, _answers(i)) for i, h in zip(ctx.items, heard)]
    for pred, c in zip(out.predictions, correct):
        pred["correct"] = c
    details = {"correct": int(sum(correct)), "judge": ctx.judge.name,
               "reply_text_accuracy": 100 * float(np.mean(text_correct))}
    out.rows.append(_row(ctx, "spoken_qa_s2s", "S2S accuracy", 100 * float(np.mean(correct)), "%",
                         True, len(correct), details, runner))
    # how intelligibly the model says what it wrote, whether or not the answer is right
    spoken = [(p["reply_text"], p["heard"]) for p in out.predictions if p["reply_text"].strip()]
    if spoken:
        edits = metrics.corpus_edits([t for t, _ in spoken], [h for _, h in spoken], language)
        unit = "CER" if uses_cer(language) else "WER"
        out.rows.append(_row(ctx, "spoken_qa_s2s", f"reply speech {unit}", edits.rate * 100, "%",
                             False, len(spoken), {"edits": edits.as_dict(), "judge": ctx.judge.name,
                                                  "reference": "the reply's own text"}, runner))
    return out


def _prompt(item: EvalItem, sample_rate: int) -> tuple[np.ndarray, int] | None:
    return (load_item_audio(item, sample_rate), sample_rate) if item.audio is not None else None


def _reference_voice(item: EvalItem) -> str | None:
    target = item.extra.get("target_audio")
    return str(item.audio) if item.audio is not None else (str(target) if target else None)


def evaluate_tts(ctx: GroupContext) -> GroupOutcome:
    """TTS round trip: judge-ASR WER/CER of the generated speech, and speaker similarity."""
    out = GroupOutcome()
    if not _needs(ctx, out, "synthesize"):
        return out
    if ctx.judge is None:
        out.skipped.append(SkippedTask("tts", ctx.dataset, ctx.system,
                                       "no ASR judge for the generated speech (--asr-judge)",
                                       len(ctx.items)))
        return out
    from minmo.audio.io import load_audio

    runner = _Runner(ctx, out)
    language = ctx.items[0].language or "en"
    hyps, sims = [], []
    embed = "speaker_embedding" in ctx.model.capabilities()
    for item in ctx.items:
        wave, rate = runner.call(item, lambda item=item: ctx.model.synthesize(
            item.reference, language, None, None, _prompt(item, ctx.sample_rate)),
            (np.zeros(0, np.float32), ctx.sample_rate))
        text = runner.call(item, lambda: ctx.judge.transcribe(wave, rate, language), "") \
            if np.asarray(wave).size else ""
        hyps.append(text)
        voice = _reference_voice(item)
        if embed and voice and np.asarray(wave).size:
            sim = runner.call(item, lambda: metrics.cosine_similarity(
                ctx.model.speaker_embedding(wave, rate),
                ctx.model.speaker_embedding(load_audio(voice, rate), rate)), None)
            if sim is not None:
                sims.append(sim)
        out.predictions.append({"id": item.id, "text": item.reference, "heard": text,
                                "judge": ctx.judge.name, "language": language})
    edits = metrics.corpus_edits([i.reference for i in ctx.items], hyps, language)
    unit = "CER" if uses_cer(language) else "WER"
    out.rows.append(_row(ctx, "tts", unit, edits.rate * 100, "%", False, len(hyps),
                         {"edits": edits.as_dict(), "judge": ctx.judge.name}, runner))
    if sims:
        out.rows.append(_row(ctx, "tts", "SIM", float(np.mean(sims)), "cos", True, len(sims),
                             {"values": sims}, runner))
    return out


def _style_request(item: EvalItem) -> tuple[str, str] | None:
    style = item.extra.get("style")
    if style in JUDGEABLE_STYLES:
        return JUDGEABLE_STYLES[style], style
    parsed = prosody.parse_instruction(item.extra.get("instruction") or "")
    for attribute in ("speed", "pitch"):
        if attribute in parsed:
            return attribute, parsed[attribute]
    return None


def evaluate_instruct_tts(ctx: GroupContext) -> GroupOutcome:
    """Instruction TTS: speed/pitch requests judged from the audio against a neutral take."""
    out = GroupOutcome()
    if not _needs(ctx, out, "synthesize"):
        return out
    runner = _Runner(ctx, out)
    language = ctx.items[0].language or "en"
    followed: list[bool] = []
    per_style: dict[str, list[bool]] = {}
    not_judgeable = 0
    empty = (np.zeros(0, np.float32), ctx.sample_rate)
    for item in ctx.items:
        request = _style_request(item)
        if request is None:
            not_judgeable += 1
            continue
        attribute, wanted = request
        prompt = _prompt(item, ctx.sample_rate)
        styled, rate_s = runner.call(item, lambda: ctx.model.synthesize(
            item.reference, language, item.extra.get("style"), item.extra.get("instruction"),
            prompt), empty)
        neutral, rate_n = runner.call(item, lambda: ctx.model.synthesize(
            item.reference, language, None, None, prompt), empty)
        if attribute == "speed":
            got = prosody.speaking_rate(item.reference, styled, rate_s, language) \
                if np.asarray(styled).size else float("nan")
            base = prosody.speaking_rate(item.reference, neutral, rate_n, language) \
                if np.asarray(neutral).size else float("nan")
            ok = prosody.judge_speed(got, base, wanted)
        else:
            got = prosody.estimate_f0(styled, rate_s).median() if np.asarray(styled).size \
                else float("nan")
            base = prosody.estimate_f0(neutral, rate_n).median() if np.asarray(neutral).size \
                else float("nan")
            ok = prosody.judge_pitch(got, base, wanted)
        followed.append(ok)
        per_style.setdefault(wanted, []).append(ok)
        out.predictions.append({"id": item.id, "request": wanted, "measured": got,
                                "neutral": base, "followed": ok})
    if not followed:
        out.skipped.append(SkippedTask("instruct_tts", ctx.dataset, ctx.system,
                                       "no speed or pitch request to judge from audio",
                                       len(ctx.items)))
        return out
    details = {"per_request": {k: 100 * float(np.mean(v)) for k, v in per_style.items()},
               "not_judgeable": not_judgeable,
               "note": f"{not_judgeable} item(s) asked for a style that audio measurements "
                       "cannot judge (emotion, whisper): not counted"
               if not_judgeable else ""}
    out.rows.append(_row(ctx, "instruct_tts", "accuracy", 100 * float(np.mean(followed)), "%",
                         True, len(followed), details, runner))
    return out


def pool_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """10 ms labels -> coarser frames of ``factor`` x 10 ms: a frame holding a RESPOND or STOP
    takes the first of them, else CONTINUE if any, else LISTEN."""
    labels = np.asarray(labels, dtype=np.int64)
    if factor == 1:
        return labels
    frames = -(-labels.size // factor)
    padded = np.full(frames * factor, dm.LISTEN, dtype=np.int64)
    padded[: labels.size] = labels
    blocks = padded.reshape(frames, factor)
    out = np.where((blocks == dm.CONTINUE).any(axis=1), dm.CONTINUE, dm.LISTEN)
    for f, block in enumerate(blocks):
        events = block[(block == dm.RESPOND) | (block == dm.STOP)]
        if events.size:
            out[f] = events[0]
    return out


def _turn_frames(item: EvalItem, frame_ms: float, role: str, backchannel: bool | None,
                 command: bool | None = None) -> list[tuple[int, int]]:
    spans = []
    for turn in item.extra.get("turns") or []:
        if turn.get("role") != role:
            continue
        if backchannel is not None and bool(turn.get("backchannel")) != backchannel:
            continue
        if command is not None and bool(turn.get("command")) != command:
            continue
        spans.append((dm.seconds_to_frame(turn["start"], frame_ms),
                      dm.seconds_to_frame(turn["end"], frame_ms)))
    return spans


def _label_factor(frame_ms: float) -> int:
    factor = frame_ms / 10.0
    if abs(factor - round(factor)) > 1e-6 or factor < 1:
        raise ValueError(f"duplex frame of {frame_ms} ms is not a multiple of the labels' 10 ms grid")
    return int(round(factor))


def score_duplex_trace(item: EvalItem, true10: np.ndarray, trace: DuplexTrace,
                       k: int) -> dm.DuplexScores:
    """One dialogue's scores: ``trace``'s decisions against its 10 ms labels ``true10``
    (pooled to the trace's frames), back-channels and commands from the item's turns."""
    truth = pool_labels(true10, _label_factor(trace.frame_ms))
    predicted = np.asarray(trace.decisions, dtype=np.int64).reshape(-1)
    backchannels = _turn_frames(item, trace.frame_ms, "user", True)
    commands = _turn_frames(item, trace.frame_ms, "user", None, command=True)
    return dm.score_dialogue(truth, predicted, trace.frame_ms, backchannels, k, commands)


def _duplex_rows(ctx: GroupContext, runner: _Runner, scores: dm.DuplexScores, prefix: str,
                 details: dict[str, Any]) -> list[MetricRow]:
    """The duplex rows of one decision policy (``details`` on the first); commands obeyed
    only where the dialogues mark command turns (the synthetic corpus' do)."""
    k, n = ctx.k, scores.dialogues
    rows = [
        _row(ctx, "duplex", f"{prefix}assistant turn-taking F1@{k}", scores.assistant_turn.f1,
             "F1", True, n, details, runner),
        _row(ctx, "duplex", f"{prefix}user turn-taking F1@{k}", scores.user_turn.f1, "F1", True,
             n, {}, runner),
        _row(ctx, "duplex", f"{prefix}back-channel accuracy", scores.backchannel.accuracy * 100,
             "%", True, scores.backchannel.total, {}, runner),
    ]
    if scores.commands.total:
        rows.append(_row(ctx, "duplex", f"{prefix}commands obeyed",
                         scores.commands.accuracy * 100, "%", True, scores.commands.total, {},
                         runner))
    return rows + [
        _row(ctx, "duplex", f"{prefix}turn-taking latency", scores.latency.mean_ms, "ms", False,
             len(scores.latency.values), {"missed": scores.latency.missed}, runner),
        _row(ctx, "duplex", f"{prefix}barge-in latency", scores.stop_latency.mean_ms, "ms",
             False, len(scores.stop_latency.values), {"missed": scores.stop_latency.missed},
             runner),
    ]


def _command_reader(ctx: GroupContext, item: EvalItem) -> Callable[[np.ndarray], str] | None:
    """The model's transcript of a piece of the user channel (16 kHz), as the server reads a
    short barge-in for a command; None for a model that cannot transcribe."""
    if "speech_to_text" not in ctx.model.capabilities():
        return None
    return lambda wave: str(ctx.model.speech_to_text("asr", wave, 16000, item))


def evaluate_duplex(ctx: GroupContext) -> GroupOutcome:
    """Full duplex: F1@K of assistant/user turn-taking, back-channels, turn-taking latency."""
    out = GroupOutcome()
    if not _needs(ctx, out, "duplex"):
        return out
    from minmo.audio.io import load_audio
    from minmo.serving.turns import TurnPolicy, server_decisions, server_policies
    from minmo.serving.vad import SileroVAD

    runner = _Runner(ctx, out)
    total = dm.DuplexScores()
    # what a user meets: the server's turn taking, VAD rule alone / with the predictor trusted
    vad = SileroVAD.from_package()
    policies = server_policies(getattr(ctx.model, "respond_silence_ms",
                                       TurnPolicy.respond_silence_ms))
    server = {name: dm.DuplexScores() for name in policies}
    frame_ms_seen: set[float] = set()
    for item in ctx.items:
        labels_path = item.extra.get("labels")
        if not labels_path or item.audio is None:
            out.problems.append(f"duplex {item.dataset}/{item.id}: needs 'audio' and 'labels'")
            continue
        with np.load(labels_path) as npz:
            true10 = np.asarray(npz["labels"], dtype=np.int64)
            speaking10 = np.asarray(npz["assistant_speaking"], dtype=np.int64)
        user = load_audio(item.audio, ctx.sample_rate, channel=0)
        trace: DuplexTrace | None = runner.call(
            item, lambda: ctx.model.duplex(user, ctx.sample_rate, item), None)
        if trace is None:
            trace = DuplexTrace(10.0, np.zeros(0, dtype=np.int64))
        frame_ms_seen.add(trace.frame_ms)
        total = total + score_duplex_trace(item, true10, trace, ctx.k)
        if trace.decisions.size:
            user16k = user if ctx.sample_rate == 16000 else load_audio(item.audio, 16000, channel=0)
            replayed = server_decisions(vad, user16k, speaking10, trace.frame_ms, trace.decisions,
                                        policies, _command_reader(ctx, item))
            for name, decisions in replayed.items():
                server[name] = server[name] + score_duplex_trace(
                    item, true10, DuplexTrace(trace.frame_ms, decisions), ctx.k)
        out.latency_records.extend(dict(t) for t in trace.timings_ms)
        if len(out.duplex_examples) < ctx.max_duplex_examples:  # plotted: pooled again here
            factor = _label_factor(trace.frame_ms)
            truth = pool_labels(true10, factor)
            user_active = np.zeros(truth.size, dtype=np.int64)
            for start, end in _turn_frames(item, trace.frame_ms, "user", None):
                user_active[start : end + 1] = 1
            out.duplex_examples.append(DuplexExample(
                item.id, trace.frame_ms, user_active.tolist(),
                (pool_labels(speaking10 * dm.CONTINUE, factor) > 0).astype(int).tolist(),
                truth.tolist(), np.asarray(trace.decisions, dtype=np.int64).reshape(-1).tolist()))
    if total.dialogues == 0:
        return out
    d = {"frame_ms": sorted(frame_ms_seen), "k": ctx.k, **total.as_dict()}
    out.rows += _duplex_rows(ctx, runner, total, "", d)
    for name, scores in server.items():  # docs/eval.md: the replay of the server's policies
        if scores.dialogues:
            out.rows += _duplex_rows(ctx, runner, scores, f"server ({name}): ", scores.as_dict())
    return out


EVALUATORS: dict[str, Callable[[GroupContext], GroupOutcome]] = {
    "asr": evaluate_asr, "casr": evaluate_asr, "s2tt": evaluate_s2tt,
    "lid": evaluate_classification, "ser": evaluate_classification,
    "aed": evaluate_classification, "sa": evaluate_classification,
    "s2t_chat": evaluate_s2t_chat, "s2s_chat": evaluate_s2s_chat,
    "tts": evaluate_tts, "instruct_tts": evaluate_instruct_tts, "duplex": evaluate_duplex,
}
"""Manifest task name -> evaluator."""
