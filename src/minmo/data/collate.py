"""Collate: loaded examples -> the training batch of ``docs/architecture.md``.

Keys (``B`` examples, right-padded):

========================  ===============  ==============================================
``feats``                 (B, T, D) float  front-end features; absent if no example has speech
``feat_lens``             (B,) long        valid frames (0: no speech input)
``input_ids``             (B, L) long      ChatML ids, padded with ``tokenizer.pad_id``
``input_lens``            (B,) long        valid ids per row
``labels``                (B, L) long      ``-100`` except target tokens and closing im_end
``speech_pos``            (B,) long        index after ``<|startofspeech|>``; -1: none
``speech_tokens``         (B, S) long      target speech tokens, ``-100`` padded (if any row
                                           has them)
``speech_token_lens``     (B,) long
``rejected_speech_tokens`` (B, S') long    a preference row's dispreferred speech (stage
                                           ``s2s_dpo``), ``-100`` padded (if any row has it)
``rejected_speech_token_lens`` (B,) long
``duplex_labels``         (B, T10) long    per-10-ms decisions, ``-100`` padded (if any
                                           duplex row)
``assistant_speaking``    (B, T10) float
``waves``                 (B, N) float     raw 16 kHz input speech instead of ``feats`` when
                                           the collate has no front end (features on GPU)
``wave_lens``             (B,) long        valid samples (0: no speech input)
``target_wave``           (B, M) float     assistant speech (only with load_target_audio)
``target_wave_lens``      (B,) long
``ids`` / ``tasks``       list[str]
``skipped``               list[str]        rows dropped from this batch ("id: kind: why")
========================  ===============  ==============================================

A batch whose every example was skipped has ``ids == []`` and only the list keys: the
training loop skips it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from minmo.audio.features import Frontend
from minmo.data.chatml import IGNORE_INDEX, ChatTokenizer, build_chat_ids
from minmo.data.dataset import Example, SkippedExample
from minmo.data.manifest import target_text
from minmo.data.templates import example_rng, render_instruction


def _pad_1d(seqs: Sequence[Sequence[int] | np.ndarray], value: float,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lens.max()) if len(seqs) else 0), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(np.asarray(s), dtype=dtype)
    return out, lens


class Collator:
    """Turn a list of :class:`Example` into a training batch.

    Args:
        frontend: callable ``(N,) float32 16 kHz -> (T, D)`` tensor (``minmo.audio.features``
            ``build_frontend(cfg.frontend)``); if it has ``batch(waves)`` that is used.
            ``None``: no features; batches carry ``waves``/``wave_lens`` instead (the
            training loop runs the front end, e.g. on the GPU).
        tokenizer: text tokenizer with ``encode``, ``pad_id``, ``im_start_id``,
            ``im_end_id``, ``sos_speech_id``, ``eos_speech_id``.
        system_prompt: ChatML system text.
        seed: seeds the instruction paraphrase chosen per (example, epoch).
        max_text_tokens: rows whose ids are longer are skipped (kind ``too_long``).
    """

    def __init__(
        self,
        frontend: Callable[[np.ndarray], torch.Tensor] | None,
        tokenizer: ChatTokenizer,
        system_prompt: str = "You are a helpful assistant.",
        seed: int = 0,
        max_text_tokens: int | None = None,
    ):
        self.frontend = frontend
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.seed = seed
        self.max_text_tokens = max_text_tokens

    def _features(self, waves: list[np.ndarray], causal: list[bool]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded features; ``causal`` rows (duplex dialogues) as the listening stream
        computes them (``Frontend.features(causal=True)``; a plain callable front end has no
        such mode and is used as it is)."""
        if not isinstance(self.frontend, Frontend):
            causal = [False] * len(waves)
        if hasattr(self.frontend, "batch") and len(set(causal)) == 1:
            return (self.frontend.batch(waves, causal=True) if causal[0]
                    else self.frontend.batch(waves))
        feats = [self.frontend(w, causal=True) if c else self.frontend(w)
                 for w, c in zip(waves, causal)]
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        out = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1])
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
        return out, lens

    def __call__(self, items: Sequence[Example | SkippedExample]) -> dict[str, Any]:
        skipped = [str(x) for x in items if isinstance(x, SkippedExample)]
        examples: list[Example] = []
        chats = []
        for ex in items:
            if isinstance(ex, SkippedExample):
                continue
            row = ex.row
            try:
                instruction = render_instruction(row, example_rng(self.seed, row.id, ex.epoch))
            except KeyError as exc:
                skipped.append(f"{row.id}: missing_field: {exc.args[0]}")
                continue
            target = None if row.task == "duplex" else target_text(row)
            chat = build_chat_ids(self.tokenizer, self.system_prompt, instruction,
                                  has_speech=ex.wave is not None, target=target)
            if self.max_text_tokens and len(chat.input_ids) > self.max_text_tokens:
                skipped.append(f"{row.id}: too_long: {len(chat.input_ids)} text tokens > "
                               f"max_text_tokens {self.max_text_tokens}")
                continue
            examples.append(ex)
            chats.append(chat)
        batch: dict[str, Any] = {"ids": [ex.row.id for ex in examples],
                                 "tasks": [ex.row.task for ex in examples],
                                 "skipped": skipped}
        if not examples:
            return batch
        B = len(examples)
        pad_id = getattr(self.tokenizer, "pad_id", None)
        if pad_id is None:
            pad_id = self.tokenizer.eos_id
        batch["input_ids"], batch["input_lens"] = _pad_1d([c.input_ids for c in chats], pad_id,
                                                          torch.long)
        batch["labels"], _ = _pad_1d([c.labels for c in chats], IGNORE_INDEX, torch.long)
        batch["speech_pos"] = torch.tensor([c.speech_pos for c in chats], dtype=torch.long)

        feat_lens = torch.zeros(B, dtype=torch.long)
        with_speech = [i for i, ex in enumerate(examples) if ex.wave is not None]
        if with_speech and self.frontend is None:
            batch["waves"], batch["wave_lens"] = _pad_1d(
                [ex.wave if ex.wave is not None else np.zeros(0, np.float32) for ex in examples],
                0.0, torch.float32)
        elif with_speech:
            feats, lens = self._features([examples[i].wave for i in with_speech],
                                         [examples[i].row.task == "duplex" for i in with_speech])
            out = feats.new_zeros(B, feats.shape[1], feats.shape[2])
            out[with_speech] = feats
            feat_lens[with_speech] = lens
            batch["feats"] = out
        batch["feat_lens"] = feat_lens

        for key, lens in (("speech_tokens", "speech_token_lens"),
                          ("rejected_speech_tokens", "rejected_speech_token_lens")):
            if any(getattr(ex.row, key) for ex in examples):
                batch[key], batch[lens] = _pad_1d(
                    [getattr(ex.row, key) or [] for ex in examples], IGNORE_INDEX, torch.long)
        if any(ex.duplex_labels is not None for ex in examples):
            empty = np.zeros(0)
            batch["duplex_labels"], _ = _pad_1d(
                [ex.duplex_labels if ex.duplex_labels is not None else empty for ex in examples],
                IGNORE_INDEX, torch.long)
            batch["assistant_speaking"], _ = _pad_1d(
                [ex.assistant_speaking if ex.assistant_speaking is not None else empty
                 for ex in examples], 0.0, torch.float32)
        if any(ex.target_wave is not None for ex in examples):
            empty = np.zeros(0, np.float32)
            batch["target_wave"], batch["target_wave_lens"] = _pad_1d(
                [ex.target_wave if ex.target_wave is not None else empty for ex in examples],
                0.0, torch.float32)
        return batch
