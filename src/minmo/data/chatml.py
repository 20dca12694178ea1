"""ChatML token sequences for one example, with the speech insertion point and loss labels.

Layout (special tokens are inserted by id, never parsed out of text)::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{instruction}<|startofspeech|>[speech]<|endofspeech|><|im_end|>\\n
    <|im_start|>assistant\\n{target}<|im_end|>

``[speech]`` holds no tokens: the model splices the speech embeddings in at ``speech_pos``
(the index just after ``<|startofspeech|>``). Labels are ``-100`` everywhere except the
target tokens and the closing ``<|im_end|>``. Text-only user turns (TTS) have no speech
markers and ``speech_pos == -1``.

The tokenizer is any object with ``encode(text) -> list[int]`` and the attributes
``im_start_id, im_end_id, sos_speech_id, eos_speech_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

IGNORE_INDEX = -100


class ChatTokenizer(Protocol):
    """What the prompt builder needs from a text tokenizer."""

    im_start_id: int
    im_end_id: int
    sos_speech_id: int
    eos_speech_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclass
class ChatIds:
    """Token ids of one example.

    Attributes:
        input_ids: ``(L,)`` ids of prompt and target.
        labels: ``(L,)`` target ids, ``-100`` where no loss.
        speech_pos: index in ``input_ids`` where speech embeddings go; ``-1``: none.
        prompt_len: number of prompt ids (the target starts here).
    """

    input_ids: list[int]
    labels: list[int]
    speech_pos: int
    prompt_len: int


def build_chat_ids(
    tokenizer: ChatTokenizer,
    system: str,
    instruction: str,
    has_speech: bool,
    target: str | None,
) -> ChatIds:
    """Token ids for ``system`` + user turn (instruction, optional speech) + assistant target.

    Args:
        tokenizer: see :class:`ChatTokenizer`.
        system: system prompt text (e.g. "You are a helpful assistant.").
        instruction: user text before the speech (may be empty).
        has_speech: insert ``<|startofspeech|><|endofspeech|>`` and set ``speech_pos``.
        target: assistant text; ``None`` ends the sequence after ``assistant\\n`` (a
            generation prompt), ``""`` gives an empty answer closed by ``<|im_end|>``.

    Returns:
        :class:`ChatIds`.
    """
    newline = tokenizer.encode("\n")
    ids: list[int] = [tokenizer.im_start_id, *tokenizer.encode("system\n" + system),
                      tokenizer.im_end_id, *newline, tokenizer.im_start_id,
                      *tokenizer.encode("user\n" + instruction)]
    speech_pos = -1
    if has_speech:
        ids.append(tokenizer.sos_speech_id)
        speech_pos = len(ids)
        ids.append(tokenizer.eos_speech_id)
    ids += [tokenizer.im_end_id, *newline, tokenizer.im_start_id,
            *tokenizer.encode("assistant\n")]
    prompt_len = len(ids)
    labels = [IGNORE_INDEX] * prompt_len
    if target is not None:
        answer = [*tokenizer.encode(target), tokenizer.im_end_id] if target else \
            [tokenizer.im_end_id]
        ids += answer
        labels += answer
    return ChatIds(input_ids=ids, labels=labels, speech_pos=speech_pos, prompt_len=prompt_len)
