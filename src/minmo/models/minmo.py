"""The MinMo model: every part wired together, and the training graph with each stage's loss.

Dataflow (one direction)::

    feats -> encoder -> input projector -> [spliced into ChatML embeddings] -> LLM -> hidden
    hidden -> LM head                          (text CE:    speech-to-text stages)
    hidden + token embedding -> output projector -> voice token LM   (speech CE: t2s, s2s;
                                                                      speech_dpo: s2s_dpo)
    hidden of speech frames + speaking flag -> duplex predictor       (duplex CE)
    input projector output vs the LLM's token embeddings              (ctc: alignment aid)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from minmo.config import ModelConfig
from minmo.models import embedding_ctc
from minmo.models.duplex import DuplexPredictor, pool_flags, pool_labels
from minmo.models.llm import LLM, TextTokenizer
from minmo.models.projector import InputProjector, OutputProjector
from minmo.models.voice_lm import VoiceTokenLM, dpo_loss

IGNORE = -100
LOSSES = ("text", "speech", "speech_dpo", "duplex", "ctc")
GROUPS = ("encoder", "input_projector", "llm", "llm_lora", "output_projector", "voice_lm", "duplex")


@dataclass
class LossOutput:
    """Total loss (sum of the requested terms) and float metrics for logging."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SpeechPreference:
    """What the ``speech_dpo`` loss compares against: frozen copies of the output projector
    and voice LM as a preference stage began (the DPO reference), its ``beta`` and the weight
    of a plain cross-entropy term on the preferred speech (``sft_weight``, 0: none). Held by
    :class:`MinMo` as a plain attribute, so it is neither trained nor saved."""

    output_projector: nn.Module
    voice_lm: VoiceTokenLM
    beta: float = 0.1
    sft_weight: float = 0.0


@dataclass
class SplicedInputs:
    """LLM inputs after inserting speech embeddings.

    Attributes:
        embeds: ``(B, L, H)``; ids: ``(B, L)`` token ids (pad over speech frames);
        labels: ``(B, L)`` (``-100`` over speech and prompt); mask: ``(B, L)`` 1 = valid;
        speech_start: ``(B,)`` first speech position (``-1``: none); speech_lens: ``(B,)``.
    """

    embeds: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    speech_start: torch.Tensor
    speech_lens: torch.Tensor


class MinMo(nn.Module):
    """The whole model. Built by :func:`minmo.models.builders.build_model`.

    Args:
        cfg: model config.
        encoder: voice encoder, ``(B, T, D_in), (B,) -> (B, T', D_enc), (B,)``.
        tokenizer: text tokenizer (ChatML + speech delimiters).
        llm: the LLM slot.
        voice_lm: voice token LM.
        frontend: audio front end (waveform -> encoder features), not a module.
    """

    def __init__(self, cfg: ModelConfig, encoder: nn.Module, tokenizer: TextTokenizer, llm: LLM,
                 voice_lm: VoiceTokenLM, frontend: Any = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.input_projector = InputProjector(cfg.projector, encoder.output_dim, llm.hidden_size)
        self.llm = llm
        self.output_projector = OutputProjector(llm.hidden_size, voice_lm.hidden_size)
        self.voice_lm = voice_lm
        self.duplex = DuplexPredictor(cfg.duplex, llm.hidden_size)
        self.tokenizer = tokenizer
        self.frontend = frontend
        self.speech_preference: SpeechPreference | None = None

    # ---- structure -------------------------------------------------------------------

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Parameters by group (the unit stages freeze/train). Every parameter is in exactly one."""
        lora = self.llm.lora_parameters()
        groups: dict[str, dict[str, nn.Parameter]] = {g: {} for g in GROUPS}
        for group, module in (("encoder", self.encoder), ("input_projector", self.input_projector),
                              ("output_projector", self.output_projector),
                              ("voice_lm", self.voice_lm), ("duplex", self.duplex)):
            groups[group] = {f"{group}.{n}": p for n, p in module.named_parameters()}
        for n, p in self.llm.named_parameters():
            groups["llm_lora" if n in lora else "llm"][f"llm.{n}"] = p
        return groups

    def set_speech_reference(self, beta: float = 0.1, sft_weight: float = 0.0) -> SpeechPreference:
        """Freeze a copy of the output projector and voice LM as they are now: the reference
        of the ``speech_dpo`` loss (stage ``s2s_dpo`` calls this after loading ``init``)."""
        import copy

        frozen = [copy.deepcopy(m).eval().requires_grad_(False)
                  for m in (self.output_projector, self.voice_lm)]
        self.speech_preference = SpeechPreference(*frozen, beta=beta, sft_weight=sft_weight)
        return self.speech_preference

    def enable_lora(self) -> None:
        """Add LoRA adapters to the LLM (stages that train ``llm_lora``)."""
        self.llm.enable_lora()

    @property
    def frame_seconds(self) -> float:
        """Seconds per encoder output frame (after the query prefix)."""
        if self.cfg.encoder.kind == "whisper":
            return 0.02
        return 0.01 * self.cfg.frontend.lfr_n

    @property
    def num_prefix_frames(self) -> int:
        """Non-time frames the encoder prepends (SenseVoice's 4 query embeddings)."""
        return self.encoder.num_prefix_frames

    # ---- speech input ----------------------------------------------------------------

    def encode_speech(self, feats: torch.Tensor, feat_lens: torch.Tensor,
                      streaming: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Features -> LLM-width speech embeddings.

        Args:
            feats: ``(B, T, D_in)``; feat_lens: ``(B,)``.
            streaming: encode as the listening stream does (``encoder.stream_chunk``
                block-causal chunks; full context when that is null): the duplex predictor's
                features, in training and evaluation alike.

        Returns:
            ``(B, N, H)`` embeddings and ``(B,)`` lengths (``N ~ (T + prefix) / 2``).
        """
        chunk = self.cfg.encoder.stream_chunk if streaming else None
        enc, enc_lens = (self.encoder(feats, feat_lens) if chunk is None
                         else self.encoder(feats, feat_lens, chunk_size=chunk))
        return self.input_projector(enc, enc_lens)

    def speech_frame_spans(self, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """10 ms index range ``[start, end)`` covered by each LLM speech frame (``-1``: a
        query frame). Frame ``j`` ends at encoder frame ``s*j + s - 1`` (causal projector)."""
        s, p = self.input_projector.stride, self.num_prefix_frames
        per = round(self.frame_seconds / 0.01)
        j = torch.arange(n_frames)
        first_enc = j * s - p
        last_enc = j * s + s - 1 - p
        starts = torch.where(last_enc < 0, torch.full_like(j, -1), first_enc.clamp(min=0) * per)
        return starts, (last_enc + 1) * per

    def splice(self, batch: dict[str, Any], speech: torch.Tensor | None,
               speech_lens: torch.Tensor | None) -> SplicedInputs:
        """Insert each example's speech embeddings into its token embeddings at ``speech_pos``."""
        ids, labels, pos = batch["input_ids"], batch["labels"], batch["speech_pos"]
        lens = batch.get("input_lens")
        if lens is None:
            lens = (ids != self.tokenizer.pad_id).sum(1)
        tok_emb = self.llm.embed(ids)
        pad = self.tokenizer.pad_id
        rows_e, rows_i, rows_l, starts, slens = [], [], [], [], []
        for b in range(ids.shape[0]):
            n = int(lens[b])
            p = int(pos[b])
            if p < 0 or speech is None:
                rows_e.append(tok_emb[b, :n])
                rows_i.append(ids[b, :n])
                rows_l.append(labels[b, :n])
                starts.append(-1)
                slens.append(0)
                continue
            k = int(speech_lens[b])
            rows_e.append(torch.cat([tok_emb[b, :p], speech[b, :k].to(tok_emb.dtype), tok_emb[b, p:n]]))
            fill = ids.new_full((k,), pad)
            rows_i.append(torch.cat([ids[b, :p], fill, ids[b, p:n]]))
            rows_l.append(torch.cat([labels[b, :p], fill.fill_(IGNORE), labels[b, p:n]]))
            starts.append(p)
            slens.append(k)
        seq_lens = torch.tensor([r.shape[0] for r in rows_e], device=ids.device)
        embeds = nn.utils.rnn.pad_sequence(rows_e, batch_first=True)
        mask = (torch.arange(embeds.shape[1], device=ids.device)[None] < seq_lens[:, None]).long()
        return SplicedInputs(
            embeds=embeds,
            ids=nn.utils.rnn.pad_sequence(rows_i, batch_first=True, padding_value=pad),
            labels=nn.utils.rnn.pad_sequence(rows_l, batch_first=True, padding_value=IGNORE),
            mask=mask,
            speech_start=torch.tensor(starts, device=ids.device),
            speech_lens=torch.tensor(slens, device=ids.device),
        )

    # ---- losses ----------------------------------------------------------------------

    def _text_loss(self, hidden: torch.Tensor, x: SplicedInputs) -> tuple[torch.Tensor, dict[str, float]]:
        targets = x.labels[:, 1:]
        sel = targets != IGNORE
        logits = self.llm.logits(hidden[:, :-1][sel]).float()
        loss = F.cross_entropy(logits, targets[sel])
        acc = (logits.argmax(-1) == targets[sel]).float().mean().item()
        return loss, {"text_loss": loss.item(), "text_acc": acc}

    def semantic_inputs(self, hidden: torch.Tensor, x: SplicedInputs
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per example, what the output projector reads for each response token ``y_t``:
        ``((Ls, H) hidden states that produced the tokens, (Ls, H) their embeddings)``.
        ``<|im_end|>`` is excluded."""
        resp = (x.labels != IGNORE) & (x.ids != self.tokenizer.im_end_id)
        resp[:, 0] = False
        pairs = []
        for b in range(hidden.shape[0]):
            p = resp[b].nonzero().squeeze(1)
            pairs.append((hidden[b, p - 1], self.llm.embed(x.ids[b, p])))
        return pairs

    def semantic_vectors(self, hidden: torch.Tensor, x: SplicedInputs,
                         projector: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic vectors of the response tokens: output projector (``projector``, default
        the model's own) of (hidden state that produced token ``y_t``, embedding of ``y_t``);
        see :meth:`semantic_inputs`.

        Returns:
            ``(B, Ls, D_v)`` padded vectors and ``(B,)`` lengths.
        """
        projector = self.output_projector if projector is None else projector
        rows = [projector(h, e) for h, e in self.semantic_inputs(hidden, x)]
        lens = torch.tensor([r.shape[0] for r in rows], device=hidden.device)
        return nn.utils.rnn.pad_sequence(rows, batch_first=True), lens

    def _speech_loss(self, hidden: torch.Tensor, x: SplicedInputs, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if "speech_tokens" not in batch:
            raise KeyError("speech loss needs 'speech_tokens' in the batch (run `minmo tokenize`)")
        sem, sem_lens = self.semantic_vectors(hidden, x)
        loss, m = self.voice_lm(sem, sem_lens, batch["speech_tokens"], batch["speech_token_lens"])
        return loss, {"speech_loss": loss.item(), **m}

    def _speech_dpo_loss(self, hidden: torch.Tensor, x: SplicedInputs, batch: dict[str, Any]
                         ) -> tuple[torch.Tensor, dict[str, float]]:
        """DPO of the voice LM (and output projector) on preference pairs: each row's
        ``speech_tokens`` (preferred) and ``rejected_speech_tokens`` speak the same reply, and
        the loss raises the first's likelihood relative to the frozen reference more than the
        second's (:func:`minmo.models.voice_lm.dpo_loss`; CosyVoice 2 tunes its LM this way
        with an ASR reward)."""
        pref = self.speech_preference
        if pref is None:
            raise RuntimeError("speech_dpo loss needs a reference: call "
                               "MinMo.set_speech_reference() (stage s2s_dpo does)")
        for key in ("speech_tokens", "rejected_speech_tokens"):
            if key not in batch:
                raise KeyError(f"speech_dpo loss needs '{key}' in the batch (preference rows: "
                               "docs/training.md)")
        pref.output_projector.to(hidden.device)
        pref.voice_lm.to(hidden.device)
        sem, lens = self.semantic_vectors(hidden, x)
        pairs = [(batch["speech_tokens"], batch["speech_token_lens"]),
                 (batch["rejected_speech_tokens"], batch["rejected_speech_token_lens"])]
        (chosen, n_chosen), (rejected, _) = [self.voice_lm.sequence_logprobs(sem, lens, *p)
                                             for p in pairs]
        with torch.no_grad():
            ref_sem, _ = self.semantic_vectors(hidden, x, pref.output_projector)
            ref_chosen, ref_rejected = [pref.voice_lm.sequence_logprobs(ref_sem, lens, *p)[0]
                                        for p in pairs]
        loss, margins = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, pref.beta)
        metrics = {"dpo_loss": loss.item(), "dpo_acc": (margins > 0).float().mean().item(),
                   "dpo_margin": margins.mean().item(),
                   "chosen_gain": (chosen - ref_chosen).mean().item(),
                   "rejected_gain": (rejected - ref_rejected).mean().item()}
        if pref.sft_weight > 0:
            nll = -(chosen / n_chosen.clamp(min=1)).mean()
            loss = loss + pref.sft_weight * nll
            metrics["chosen_nll"] = nll.item()
        return loss, metrics

    def _duplex_loss(self, hidden: torch.Tensor, x: SplicedInputs, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if "duplex_labels" not in batch:
            raise KeyError("duplex loss needs 'duplex_labels' in the batch (duplex manifest rows)")
        rows_h, rows_l, rows_f = [], [], []
        for b in range(hidden.shape[0]):
            s, n = int(x.speech_start[b]), int(x.speech_lens[b])
            starts, ends = self.speech_frame_spans(n)
            rows_h.append(hidden[b, s:s + n])
            rows_l.append(pool_labels(batch["duplex_labels"][b].cpu(), starts, ends))
            rows_f.append(pool_flags(batch["assistant_speaking"][b].cpu(), starts))
        h = nn.utils.rnn.pad_sequence(rows_h, batch_first=True)
        labels = nn.utils.rnn.pad_sequence(rows_l, batch_first=True, padding_value=IGNORE).to(h.device)
        flags = nn.utils.rnn.pad_sequence(rows_f, batch_first=True).to(h.device)
        logits = self.duplex(h, flags, x.speech_lens).float()
        weight = torch.tensor(self.cfg.duplex.class_weights, device=logits.device)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               weight=weight, ignore_index=IGNORE)
        valid = labels != IGNORE
        acc = (logits.argmax(-1)[valid] == labels[valid]).float().mean().item()
        return loss, {"duplex_loss": loss.item(), "duplex_acc": acc}

    def ctc_vocabulary(self) -> torch.Tensor:
        """``(V, H)`` float32 embeddings of the tokenizer's own vocabulary, the classes of the
        ``ctc`` loss (``models/embedding_ctc.py``); the tokens minmo adds, such as
        ``<|startofspeech|>``, are left out."""
        table = self.llm.model.get_input_embeddings().weight
        ids = torch.arange(self.tokenizer.hf.vocab_size, device=table.device)
        return self.llm.embed(ids).detach().float()

    @torch.no_grad()
    def ctc_decode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> list[list[int]]:
        """Greedy CTC reading of the input projector's output: per example, the token ids
        whose embeddings its frames sit nearest (repeats merged, blanks dropped). A probe of
        what the speech embeddings say before the LLM reads them (``s2t_ctc``)."""
        speech, lens = self.encode_speech(feats, feat_lens)
        return embedding_ctc.greedy_tokens(speech, lens, self.ctc_vocabulary())

    def _ctc_loss(self, speech: torch.Tensor | None, speech_lens: torch.Tensor | None,
                  batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """CTC of the speech embeddings of the batch's ``asr`` rows against their transcript
        tokens, in the LLM's embedding space (``models/embedding_ctc.py``): it puts each
        spoken token's own embedding where the token is said, which the frozen LLM already
        reads. Other rows (an answer is not a transcript) are left out; a batch without an
        asr row adds zero."""
        if speech is None:
            raise KeyError("ctc loss needs speech input ('feats' with speech_pos >= 0)")
        ids, labels = batch["input_ids"], batch["labels"]
        resp = ((labels != IGNORE) & (ids != self.tokenizer.im_end_id)
                & (ids < self.tokenizer.hf.vocab_size))
        tasks = batch.get("tasks") or ["asr"] * ids.shape[0]
        rows = [b for b in range(ids.shape[0]) if tasks[b] == "asr"
                and int(batch["speech_pos"][b]) >= 0 and bool(resp[b].any())]
        if not rows:
            return speech.sum() * 0.0, {"ctc_loss": 0.0, "ctc_norm": 0.0, "ctc_blank": 0.0}
        return embedding_ctc.ctc_loss(speech[rows], speech_lens[rows],
                                      [ids[b][resp[b]] for b in rows], self.ctc_vocabulary())

    def forward(self, batch: dict[str, Any], losses: Iterable[str] = ("text",)) -> LossOutput:
        """Compute the requested losses on a collated batch (see ``docs/architecture.md``).

        Args:
            batch: collated tensors.
            losses: subset of ``("text", "speech", "speech_dpo", "duplex", "ctc")``; ``("ctc",)`` alone
                runs no LLM (it scores the input projector's output only).

        Returns:
            :class:`LossOutput` whose ``loss`` is the sum of the requested terms.
        """
        losses = tuple(losses)
        unknown = set(losses) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; choose from {LOSSES}")
        upstream = (self.encoder, self.input_projector, self.llm)
        needs_graph = any(p.requires_grad for m in upstream for p in m.parameters())
        with torch.set_grad_enabled(needs_graph and torch.is_grad_enabled()):
            speech, speech_lens = None, None
            feats = batch.get("feats")
            if feats is not None and bool((batch["speech_pos"] >= 0).any()):
                # the duplex predictor only ever runs on the listening stream's features
                speech, speech_lens = self.encode_speech(feats, batch["feat_lens"],
                                                         streaming="duplex" in losses)
            llm_losses = [name for name in losses if name != "ctc"]
            if llm_losses:
                x = self.splice(batch, speech, speech_lens)
                hidden = self.llm(x.embeds, x.mask).hidden
        terms, metrics = [], {}
        if "ctc" in losses:
            loss, m = self._ctc_loss(speech, speech_lens, batch)
            terms.append(loss)
            metrics.update(m)
        for name, fn in (("text", self._text_loss), ("speech", self._speech_loss),
                         ("speech_dpo", self._speech_dpo_loss), ("duplex", self._duplex_loss)):
            if name in losses:
                loss, m = fn(hidden, x) if name == "text" else fn(hidden, x, batch)
                terms.append(loss)
                metrics.update(m)
        return LossOutput(torch.stack(terms).sum(), metrics)
