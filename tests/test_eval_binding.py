"""The binding of the evaluation adapter to minmo.inference, on the tiny random-weight model.

The numbers a random model produces are meaningless; these tests check the plumbing: every
ability returns the documented types and shapes, on the documented grids, within the limits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from minmo.eval.adapters import ModelUnavailableError
from minmo.eval.latency import PAPER_STAGE_MS
from minmo.eval.model_binding import (
    MinMoEvalModel,
    bind_baseline,
    bind_minmo_model,
    task_instruction,
    tts_instruction,
)
from minmo.eval.readers import EvalItem
from minmo.models.duplex import decide

SR = 16000


@pytest.fixture(scope="module")
def model() -> MinMoEvalModel:
    bound = bind_minmo_model("tiny", max_reply_seconds=0.6)
    assert isinstance(bound, MinMoEvalModel)
    bound.max_reply_text_tokens = 8  # random weights never stop: keep the test short
    bound.max_tts_seconds = 0.6
    return bound


def speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_instructions_are_the_training_templates() -> None:
    item = EvalItem("x", "s2tt", None, "hallo", "de", extra={"target_language": "en"})
    assert task_instruction("s2tt", item) == "Translate the speech into English."
    assert task_instruction("asr", item) == "Transcribe the speech."
    assert tts_instruction("hello", "fast", None) == "Say this quickly: hello"
    assert tts_instruction("hello", None, None) == "Read this text aloud: hello"
    assert tts_instruction("hello", None, "Whisper this:") == "Whisper this: hello"


def test_speech_to_text_returns_text(model: MinMoEvalModel) -> None:
    item = EvalItem("x", "lid", None, "English", "en")
    out = model.speech_to_text("lid", speech(0.6), SR, item)
    assert isinstance(out, str)
    assert model.describe()["random_weights"] is True


def test_ctc_weight_holds_asr_transcripts_to_the_frames(model: MinMoEvalModel,
                                                       monkeypatch) -> None:
    from minmo.inference.ctc_prefix import CtcPrefixScorer

    chosen: list[int] = []
    choose = CtcPrefixScorer.choose

    def counting(self, logits, stop_ids):
        chosen.append(choose(self, logits, stop_ids))
        return chosen[-1]

    monkeypatch.setattr(CtcPrefixScorer, "choose", counting)
    item = EvalItem("x", "asr", None, "hello", "en")
    greedy = model.speech_to_text("asr", speech(0.6), SR, item)
    assert chosen == []  # off by default
    joint = MinMoEvalModel(model.rt, "tiny", transcript_ctc_weight=0.0)
    assert joint.speech_to_text("asr", speech(0.6), SR, item) == greedy  # 0 is off
    joint = MinMoEvalModel(model.rt, "tiny", transcript_ctc_weight=0.5)
    out = joint.speech_to_text("asr", speech(0.6), SR, item)
    assert chosen and out == model.rt.decode(chosen)  # every token chosen by the scorer
    assert joint.describe()["transcript_ctc_weight"] == 0.5  # results.json says so
    assert "transcript_ctc_weight" not in model.describe()
    chosen.clear()
    joint.speech_to_text("lid", speech(0.6), SR, EvalItem("y", "lid", None, "English", "en"))
    assert chosen == []  # only transcripts: other tasks' text is not what the frames say


def test_beam_size_decodes_every_speech_to_text_task_and_is_recorded(
        model: MinMoEvalModel, monkeypatch) -> None:
    import minmo.inference.pipeline as P

    searched: list[int] = []

    class Counting(P.BeamSearch):
        def __init__(self, rt, prompt, beam_size, *args, **kwargs):
            searched.append(beam_size)
            super().__init__(rt, prompt, beam_size, *args, **kwargs)

    monkeypatch.setattr(P, "BeamSearch", Counting)
    item = EvalItem("x", "asr", None, "hello", "en")
    model.speech_to_text("asr", speech(0.6), SR, item)
    assert searched == []  # greedy by default
    wide = MinMoEvalModel(model.rt, "tiny", beam_size=3, length_penalty=0.5)
    wide.speech_to_text("asr", speech(0.6), SR, item)
    wide.speech_to_text("lid", speech(0.6), SR, EvalItem("y", "lid", None, "English", "en"))
    assert searched == [3, 3]
    assert wide.describe()["beam_size"] == 3 and wide.describe()["length_penalty"] == 0.5
    assert "beam_size" not in model.describe()
    cascade = bind_baseline("tiny", shared=wide, kind="cascade")
    cascade.speech_to_text("asr", speech(0.6), SR, item)  # its transcripts decode as the model's
    assert searched == [3, 3, 3]
    with pytest.raises(ValueError, match="not both"):
        MinMoEvalModel(model.rt, "tiny", beam_size=2, transcript_ctc_weight=0.5)


def test_spoken_reply_and_tts_respect_limits(model: MinMoEvalModel) -> None:
    item = EvalItem("q", "s2s_chat", None, "four", "en")
    reply = model.spoken_reply(speech(0.6), SR, item)
    assert isinstance(reply.text, str)
    assert reply.wave is not None and reply.wave.ndim == 1 and reply.wave.dtype == np.float32
    assert reply.sample_rate == model.rt.sample_rate_out
    # 0.6 s limit = 15 speech tokens; the speech decoder may add its own tail, so allow 2x
    assert reply.wave.size <= 2 * 0.6 * reply.sample_rate
    assert set(reply.timings_ms) <= set(PAPER_STAGE_MS)
    assert all(v >= 0 for v in reply.timings_ms.values())
    wave, rate = model.synthesize("hi there", "en", "slow", None, None)
    assert rate == model.rt.sample_rate_out and wave.ndim == 1
    assert wave.size <= 2 * 0.6 * rate


def test_tts_text_given_reads_exactly_the_text(model: MinMoEvalModel,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from minmo.inference import pipeline

    jobs = []

    def spy(*args, **kwargs):
        jobs.append(start_reply(*args, **kwargs))
        return jobs[-1]

    start_reply = pipeline.start_reply
    monkeypatch.setattr(pipeline, "start_reply", spy)
    model.synthesize("hi there", "en", None, None, None)
    assert jobs[-1].emitted != "hi there"  # the random LLM writes its own words
    monkeypatch.setattr(model, "tts_text", "given")
    wave, _ = model.synthesize("hi there", "en", None, None, None)
    assert jobs[-1].emitted == "hi there" and wave.size > 0
    assert model.describe()["tts_text"] == "given"
    with pytest.raises(ValueError, match="tts_text"):
        MinMoEvalModel(model.rt, "tiny", tts_text="forced")


def test_duplex_trace_on_the_llm_frame_grid(model: MinMoEvalModel, tmp_path: Path) -> None:
    labels = np.zeros(150, dtype=np.int8)
    speaking = np.zeros(150, dtype=np.uint8)
    speaking[60:120] = 1
    np.savez(tmp_path / "l.npz", labels=labels, assistant_speaking=speaking)
    item = EvalItem("d", "duplex", None, "", "en", extra={"labels": str(tmp_path / "l.npz")})
    trace = model.duplex(speech(1.5), SR, item)
    frame_s = model.rt.llm_frame_seconds
    assert trace.frame_ms == pytest.approx(1000 * frame_s)
    assert trace.decisions.shape == (int(np.ceil(1.5 / frame_s)),)
    assert set(np.unique(trace.decisions)) <= {0, 1, 2, 3}
    assert trace.timings_ms and all("duplex_frame_compute" in t for t in trace.timings_ms)
    # the probabilities behind the decisions sit on the same frames (threshold tuning re-decides)
    assert trace.probs.shape == (trace.decisions.size, 4)
    assert np.array_equal(decide(torch.from_numpy(trace.probs)).numpy(), trace.decisions)
    # the full-context pass (the training regime) decides the same frames
    offline = model.duplex(speech(1.5), SR, item, streaming=False)
    assert offline.frame_ms == trace.frame_ms and offline.probs.shape == trace.probs.shape
    assert np.array_equal(decide(torch.from_numpy(offline.probs)).numpy(), offline.decisions)
    decided = ~np.isclose(offline.probs[:, 0], 1.0)
    assert decided.sum() >= decided.size - 2  # every frame but the tail has its own decision


def test_cascade_shares_the_runtime(model: MinMoEvalModel) -> None:
    cascade = bind_baseline("tiny", shared=model)
    assert cascade.rt is model.rt
    assert cascade.supports_task("s2t_chat") and not cascade.supports_task("asr")


def test_text_baseline_types_the_question(model: MinMoEvalModel) -> None:
    from minmo.inference.pipeline import TextDelta, respond

    typed = bind_baseline("tiny", shared=model, kind="text")
    assert typed.rt is model.rt
    item = EvalItem("q", "s2t_chat", None, "Paris", "en",
                    extra={"question": "What is the capital of France?"})
    session = model._session(model.max_reply_text_tokens, 0)
    expected = "".join(ev.text for ev in respond(model.rt, session, text=item.extra["question"],
                                                 audio=False) if isinstance(ev, TextDelta))
    # the question's words, whatever the audio: a tone and silence get the same reply
    assert typed.speech_to_text("s2t_chat", speech(0.6), SR, item) == expected
    assert typed.speech_to_text("s2t_chat", np.zeros(SR // 2, np.float32), SR, item) == expected
    manifest_row = EvalItem("r", "s2t_chat", None, "Paris", "en",
                            extra={"text": "What is the capital of France?"})
    assert typed.speech_to_text("s2t_chat", speech(0.6), SR, manifest_row) == expected
    reply = typed.spoken_reply(speech(0.6), SR, item)
    assert reply.text == expected and "asr" not in reply.timings_ms
    with pytest.raises(ValueError, match="no question text"):
        typed.speech_to_text("s2t_chat", speech(0.6), SR, EvalItem("n", "s2t_chat", None, "x", "en"))
    with pytest.raises(ValueError, match="baseline 'oracle'"):
        bind_baseline("tiny", shared=model, kind="oracle")


def test_unloadable_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="cannot load model"):
        bind_minmo_model(str(tmp_path / "no_such_model"))


def test_speaker_embedding_only_with_trained_encoder(model: MinMoEvalModel, tmp_path: Path) -> None:
    import dataclasses

    from safetensors.torch import save_file

    from minmo.models.speaker import SpeakerEncoder

    assert "speaker_embedding" not in model.capabilities()  # tiny preset: untrained encoder
    cfg = model.rt.model.cfg.speaker
    weights = tmp_path / "spk.safetensors"
    save_file({k: v.contiguous() for k, v in SpeakerEncoder(cfg).state_dict().items()}, str(weights))
    other = MinMoEvalModel(model.rt, "tiny")
    original = model.rt.model.cfg.speaker
    model.rt.model.cfg.speaker = dataclasses.replace(cfg, path=str(weights))
    try:
        assert "speaker_embedding" in other.capabilities()
        emb = other.speaker_embedding(speech(1.0), SR)
        assert emb.shape == (cfg.embed_dim,) and np.isfinite(emb).all()
    finally:
        model.rt.model.cfg.speaker = original
