"""OpenAI Realtime API event protocol: client-event parsing and server-event builders.

The contract is the ``openai`` Python SDK's ``types/realtime`` (GA interface; the version
matched is :data:`SDK_VERSION_MATCHED`, see ``docs/serving.md``). Server events are plain
dicts with those field names; tests parse them with the SDK's own types.

Beta clients: the beta event names (``response.audio.delta``,
``response.audio_transcript.delta``, ``response.text.delta``, ``conversation.item.created``
...) are emitted instead of the GA ones when the client connects with the header
``OpenAI-Beta: realtime=v1``; beta-style ``session.update`` fields (``modalities``,
``input_audio_format``, ``turn_detection``, ``input_audio_transcription``, ``instructions``)
are accepted from everyone.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SDK_VERSION_MATCHED = "openai 3.54.0"
WIRE_RATE = 24000  # pcm16 mono, little-endian, the protocol's only PCM rate

CLIENT_EVENTS = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.truncate",
    "conversation.item.delete", "conversation.item.retrieve", "response.create",
    "response.cancel", "output_audio_buffer.clear",
})

GA_TO_BETA = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """Unique id such as ``item_000123`` (server-generated ids)."""
    return f"{prefix}_{next(_ids):06d}"


class ProtocolError(Exception):
    """A client event the server cannot apply; becomes an ``error`` server event.

    Args:
        message: human-readable explanation (says what to fix).
        code: machine code (``invalid_json``, ``unknown_event``, ``invalid_value`` ...).
        param: the offending field, dotted.
        event_id: the client's ``event_id`` when it gave one.
        error_type: ``invalid_request_error`` or ``server_error``.
    """

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None,
                 event_id: str | None = None, error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param
        self.event_id, self.error_type = event_id, error_type


def error_event(err: ProtocolError) -> dict[str, Any]:
    """``error`` server event."""
    return {"type": "error", "event_id": new_id("event"), "error": {
        "type": err.error_type, "code": err.code, "message": err.message,
        "param": err.param, "event_id": err.event_id}}


def parse_client_event(raw: str | bytes) -> dict[str, Any]:
    """Decode one client frame: a JSON object with a known string ``type``.

    Raises:
        ProtocolError: not JSON, not an object, no/unknown ``type``.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not valid JSON ({str(exc)[:200]})", "invalid_json") from None
    except RecursionError:
        raise ProtocolError("frame nests too deeply to parse", "invalid_json") from None
    if not isinstance(data, dict):
        raise ProtocolError("a client event must be a JSON object", "invalid_event")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    etype = data.get("type")
    if not isinstance(etype, str):
        raise ProtocolError("client event has no string 'type'", "invalid_event", "type", event_id)
    if etype not in CLIENT_EVENTS:
        raise ProtocolError(f"unknown client event type '{etype[:80]}'; supported: "
                            f"{', '.join(sorted(CLIENT_EVENTS))}", "unknown_event", "type", event_id)
    return data


def decode_pcm16(b64: Any, event_id: str | None = None, param: str = "audio") -> np.ndarray:
    """Base64 pcm16 (little-endian, mono) -> ``(N,)`` int16.

    Raises:
        ProtocolError: not a string, bad base64, or an odd number of bytes.
    """
    if not isinstance(b64, str):
        raise ProtocolError(f"'{param}' must be a base64 string of pcm16 audio", "invalid_value",
                            param, event_id)
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"'{param}' is not valid base64", "invalid_base64", param,
                            event_id) from None
    if len(raw) % 2:
        raise ProtocolError(f"'{param}' has {len(raw)} bytes: pcm16 needs an even count "
                            "(16-bit mono samples at 24 kHz)", "invalid_audio_format", param,
                            event_id)
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def encode_pcm16(samples: np.ndarray) -> str:
    """``(N,)`` float32 in [-1, 1] -> base64 pcm16."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


# ---- session configuration ---------------------------------------------------------------


@dataclass
class TurnDetection:
    """``server_vad`` settings (OpenAI names; ``predictor`` is minmo's own: whether the duplex
    predictor may decide turns, ``"auto"`` = only with trained weights)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response,
                "idle_timeout_ms": self.idle_timeout_ms}


@dataclass
class SessionSettings:
    """The effective session configuration (what ``session.updated`` reports)."""

    id: str = field(default_factory=lambda: new_id("sess"))
    model: str = "minmo"
    instructions: str = "You are a helpful assistant."
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription: bool = True
    voice: str = "minmo"
    max_output_tokens: int | str = "inf"

    def to_dict(self, model_info: dict[str, Any] | None = None) -> dict[str, Any]:
        fmt = {"type": "audio/pcm", "rate": WIRE_RATE}
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id,
            "model": self.model, "instructions": self.instructions,
            "output_modalities": list(self.output_modalities),
            "max_output_tokens": self.max_output_tokens,
            "audio": {
                "input": {"format": fmt,
                          "transcription": {"model": "minmo"} if self.transcription else None,
                          "turn_detection": (self.turn_detection.to_dict()
                                             if self.turn_detection else None),
                          "noise_reduction": None},
                "output": {"format": fmt, "voice": self.voice, "speed": 1.0},
            },
            # minmo's own field: which model answers, and whether it is trained
            "minmo": model_info or {},
        }


def _expect(cond: bool, message: str, param: str, event_id: str | None) -> None:
    if not cond:
        raise ProtocolError(message, "invalid_value", param, event_id)


def _check_format(fmt: Any, param: str, event_id: str | None) -> None:
    if fmt is None:
        return
    if isinstance(fmt, str):  # beta: "pcm16"
        _expect(fmt == "pcm16", f"unsupported audio format '{fmt}': minmo speaks pcm16 at "
                f"{WIRE_RATE} Hz only", param, event_id)
        return
    _expect(isinstance(fmt, dict), f"'{param}' must be an object", param, event_id)
    _expect(fmt.get("type", "audio/pcm") == "audio/pcm",
            f"unsupported audio format {fmt.get('type')!r}: use audio/pcm (pcm16) at {WIRE_RATE} Hz",
            param + ".type", event_id)
    _expect(fmt.get("rate", WIRE_RATE) == WIRE_RATE,
            f"unsupported rate {fmt.get('rate')!r}: audio/pcm is {WIRE_RATE} Hz", param + ".rate",
            event_id)


def _turn_detection(value: Any, current: TurnDetection | None, param: str,
                    event_id: str | None) -> TurnDetection | None:
    if value is None:
        return None
    _expect(isinstance(value, dict), f"'{param}' must be an object or null", param, event_id)
    kind = value.get("type", "server_vad")
    _expect(kind in ("server_vad", "semantic_vad"), f"turn_detection.type {kind!r} is not "
            "supported: use server_vad (minmo's VAD + duplex predictor) or null", param + ".type",
            event_id)
    td = TurnDetection(**vars(current)) if current else TurnDetection()
    for key, typ in (("threshold", (int, float)), ("prefix_padding_ms", int),
                     ("silence_duration_ms", int), ("create_response", bool),
                     ("interrupt_response", bool), ("idle_timeout_ms", (int, type(None)))):
        if key in value:
            v = value[key]
            _expect(isinstance(v, typ) and not (isinstance(v, bool) and typ is not bool),
                    f"turn_detection.{key} has the wrong type ({type(v).__name__})",
                    f"{param}.{key}", event_id)
            setattr(td, key, v)
    _expect(0.0 <= td.threshold <= 1.0, "turn_detection.threshold must be within [0, 1]",
            param + ".threshold", event_id)
    _expect(0 <= td.silence_duration_ms <= 10_000, "silence_duration_ms must be 0..10000",
            param + ".silence_duration_ms", event_id)
    _expect(0 <= td.prefix_padding_ms <= 5_000, "prefix_padding_ms must be 0..5000",
            param + ".prefix_padding_ms", event_id)
    return td


def apply_session_update(settings: SessionSettings, session: Any, event_id: str | None
                         ) -> SessionSettings:
    """Validate a ``session.update`` payload (GA or beta fields) and return the new settings.

    Unknown fields are ignored (tools, tracing, ...); known fields with bad values raise.
    """
    _expect(isinstance(session, dict), "'session' must be an object", "session", event_id)
    new = SessionSettings(**{**vars(settings)})
    if "instructions" in session:
        v = session["instructions"]
        _expect(isinstance(v, str) and len(v) <= 20_000, "instructions must be a string "
                "(at most 20000 characters)", "session.instructions", event_id)
        new.instructions = v
    mods = session.get("output_modalities", session.get("modalities"))
    if mods is not None:
        _expect(isinstance(mods, list) and all(m in ("text", "audio") for m in mods) and mods,
                "output_modalities must be ['audio'] or ['text']", "session.output_modalities",
                event_id)
        new.output_modalities = ["audio"] if "audio" in mods else ["text"]
    if "max_output_tokens" in session or "max_response_output_tokens" in session:
        v = session.get("max_output_tokens", session.get("max_response_output_tokens"))
        _expect(v == "inf" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096),
                "max_output_tokens must be 1..4096 or 'inf'", "session.max_output_tokens", event_id)
        new.max_output_tokens = v
    audio = session.get("audio")
    if audio is not None:
        _expect(isinstance(audio, dict), "'audio' must be an object", "session.audio", event_id)
        inp = audio.get("input") or {}
        out = audio.get("output") or {}
        _expect(isinstance(inp, dict) and isinstance(out, dict),
                "audio.input / audio.output must be objects", "session.audio", event_id)
        _check_format(inp.get("format"), "session.audio.input.format", event_id)
        _check_format(out.get("format"), "session.audio.output.format", event_id)
        if "turn_detection" in inp:
            new.turn_detection = _turn_detection(inp["turn_detection"], settings.turn_detection,
                                                 "session.audio.input.turn_detection", event_id)
        if "transcription" in inp:
            new.transcription = inp["transcription"] is not None
        if isinstance(out.get("voice"), str):
            new.voice = out["voice"]
    for beta_key in ("input_audio_format", "output_audio_format"):
        if beta_key in session:
            _check_format(session[beta_key], f"session.{beta_key}", event_id)
    if "turn_detection" in session:
        new.turn_detection = _turn_detection(session["turn_detection"], settings.turn_detection,
                                             "session.turn_detection", event_id)
    if "input_audio_transcription" in session:
        new.transcription = session["input_audio_transcription"] is not None
    return new


# ---- items and responses -----------------------------------------------------------------


def user_audio_item(item_id: str, transcript: str | None = None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": transcript}]}


def user_text_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": [{"type": "input_text", "text": text}]}


def assistant_item(item_id: str, status: str, text: str, audio: bool) -> dict[str, Any]:
    part = ({"type": "output_audio", "transcript": text} if audio
            else {"type": "output_text", "text": text})
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": [part] if (text or status != "in_progress") else []}


def response_object(resp_id: str, status: str, modalities: list[str], output: list[dict],
                    reason: str | None = None, usage: dict | None = None,
                    max_output_tokens: int | str = "inf") -> dict[str, Any]:
    details = None
    if status != "in_progress":
        details = {"type": status, "reason": reason, "error": None}
    return {"id": resp_id, "object": "realtime.response", "status": status,
            "status_details": details, "output": output, "conversation_id": "conv_default",
            "output_modalities": modalities, "max_output_tokens": max_output_tokens,
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": WIRE_RATE},
                                 "voice": "minmo"}},
            "usage": usage, "metadata": None}


def event(etype: str, **fields: Any) -> dict[str, Any]:
    """A server event dict with a fresh ``event_id``."""
    return {"type": etype, "event_id": new_id("event"), **fields}


def parse_item(item: Any, event_id: str | None) -> tuple[str, str, Any]:
    """Validate a ``conversation.item.create`` item.

    Returns:
        ``(role, kind, payload)``: kind ``"text"`` (payload str) or ``"audio"`` (payload
        int16 array at 24 kHz).
    """
    _expect(isinstance(item, dict), "'item' must be an object", "item", event_id)
    _expect(item.get("type", "message") == "message", f"item.type {item.get('type')!r} is not "
            "supported: only 'message' items", "item.type", event_id)
    role = item.get("role")
    _expect(role in ("user", "assistant", "system"), "item.role must be user, assistant or "
            "system", "item.role", event_id)
    content = item.get("content")
    _expect(isinstance(content, list) and content, "item.content must be a non-empty list",
            "item.content", event_id)
    texts, audio = [], []
    for i, part in enumerate(content):
        _expect(isinstance(part, dict), f"item.content[{i}] must be an object",
                f"item.content[{i}]", event_id)
        ptype = part.get("type")
        if ptype in ("input_text", "text", "output_text"):
            _expect(isinstance(part.get("text"), str), f"item.content[{i}].text must be a string",
                    f"item.content[{i}].text", event_id)
            texts.append(part["text"])
        elif ptype == "input_audio" and role == "user":
            audio.append(decode_pcm16(part.get("audio"), event_id, f"item.content[{i}].audio"))
        else:
            raise ProtocolError(f"item.content[{i}].type {ptype!r} is not supported for role "
                                f"{role}", "invalid_value", f"item.content[{i}].type", event_id)
    if audio:
        _expect(not texts, "mix of text and audio in one item is not supported",
                "item.content", event_id)
        return role, "audio", np.concatenate(audio)
    return role, "text", " ".join(texts)
