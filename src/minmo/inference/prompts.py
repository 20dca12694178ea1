"""ChatML token ids for inference, laid out exactly as training builds them.

Training (``minmo.data.chatml.build_chat_ids``) writes one example as::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{instruction}<|startofspeech|>[speech]<|endofspeech|><|im_end|>\\n
    <|im_start|>assistant\\n{target}<|im_end|>

Inference builds the same ids in pieces, so a conversation can grow turn by turn in one KV
cache: the system block once, then each user item, each assistant header and answer.
(``inference`` sits below ``data`` in the import order, so it cannot import that builder; a
test asserts both produce identical ids.)

Instructions used at inference (the first paraphrase of each training template):
"""

from __future__ import annotations

from typing import Protocol

ASR_INSTRUCTION = "Transcribe the speech."
"""User-turn text of the input-transcription pass (training task ``asr``)."""
CHAT_INSTRUCTION = ""
"""User-turn text before spoken questions (training tasks ``s2t_chat`` / ``s2s_chat``)."""
DUPLEX_INSTRUCTION = ""
"""User-turn text of the listening stream (training task ``duplex``)."""


class PromptTokenizer(Protocol):
    """What the prompt builders need (``minmo.models.llm.TextTokenizer`` has it)."""

    im_start_id: int
    im_end_id: int
    sos_speech_id: int
    eos_speech_id: int

    def encode(self, text: str) -> list[int]: ...


def system_ids(tok: PromptTokenizer, system: str) -> list[int]:
    """``<|im_start|>system\\n{system}<|im_end|>\\n``."""
    return [tok.im_start_id, *tok.encode("system\n" + system), tok.im_end_id, *tok.encode("\n")]


def user_speech_ids(tok: PromptTokenizer, instruction: str) -> tuple[list[int], list[int]]:
    """A spoken user turn, split where the speech embeddings go.

    Returns:
        ``(before, after)``: ``<|im_start|>user\\n{instruction}<|startofspeech|>`` and
        ``<|endofspeech|><|im_end|>\\n``.
    """
    before = [tok.im_start_id, *tok.encode("user\n" + instruction), tok.sos_speech_id]
    after = [tok.eos_speech_id, tok.im_end_id, *tok.encode("\n")]
    return before, after


def user_text_ids(tok: PromptTokenizer, text: str) -> list[int]:
    """A typed user turn: ``<|im_start|>user\\n{text}<|im_end|>\\n``."""
    return [tok.im_start_id, *tok.encode("user\n" + text), tok.im_end_id, *tok.encode("\n")]


def assistant_header_ids(tok: PromptTokenizer) -> list[int]:
    """``<|im_start|>assistant\\n`` (generation starts after it)."""
    return [tok.im_start_id, *tok.encode("assistant\n")]


def assistant_close_ids(tok: PromptTokenizer) -> list[int]:
    """``<|im_end|>\\n``: closes an assistant turn in the history."""
    return [tok.im_end_id, *tok.encode("\n")]


def assistant_text_ids(tok: PromptTokenizer, text: str) -> list[int]:
    """A whole assistant turn given as text (history items)."""
    return [*assistant_header_ids(tok), *tok.encode(text), *assistant_close_ids(tok)]
