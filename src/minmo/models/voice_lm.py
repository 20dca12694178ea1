"""Voice token LM: semantic vectors from the LLM -> speech tokens, interleaved 5:15.

CosyVoice 2's LM (a Qwen2 body) with MinMo's change: instead of text-token embeddings the
input carries *semantic vectors* (output projector of LLM hidden state + sampled-token
embedding). Sequence layout for ``N:M = 5:15``::

    [SOS] s1..s5 a1..a15 s6..s10 a16..a30 ... s_rest [TASK] a_rest [EOS]

Targets: the last semantic vector of a group predicts the group's first speech token; each
speech token predicts the next; the 15th speech token of a full group predicts ``FILL``
("give me more text"). Once the semantic vectors run out (or speech is shorter than a full
group), the rest of the semantic vectors, the ``TASK`` embedding and the remaining speech
follow, ending with ``EOS``. Speech can therefore start after 5 text tokens.

Speech vocabulary (as CosyVoice 2): ``speech_vocab`` codes (6561), ``EOS = speech_vocab``,
one unused id ``speech_vocab + 1``, ``FILL = speech_vocab + 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minmo.config import VoiceLMConfig
from minmo.models.llm import build_decoder_body, cache_kwargs, new_kv_cache, returned_cache

IGNORE = -100


@dataclass
class VoiceLMState:
    """Streaming generation state of one or more sessions (owned by the caller).

    Attributes:
        cache: transformers KV cache of the Qwen2 body.
        length: positions consumed so far.
        pending: semantic vectors received but not yet fed, ``(P, D)`` (batch 1).
        history: speech tokens generated so far (for repetition-aware sampling).
        text_done: the LLM finished its reply; remaining vectors + TASK have been fed.
        finished: EOS produced (or length limit reached).
        started: SOS fed.
    """

    cache: Any
    length: int = 0
    pending: torch.Tensor | None = None
    history: list[int] = field(default_factory=list)
    text_done: bool = False
    finished: bool = False
    started: bool = False


class VoiceTokenLM(nn.Module):
    """Qwen2-body LM over interleaved semantic vectors and speech tokens.

    Args:
        cfg: shape and sampling settings.
    """

    def __init__(self, cfg: VoiceLMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.body = build_decoder_body(
            d, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.max_position_embeddings, cfg.rope_theta, cfg.rms_norm_eps,
        )
        self.eos_id = cfg.speech_vocab
        self.unused_id = cfg.speech_vocab + 1
        self.fill_id = cfg.speech_vocab + 2
        self.vocab = cfg.speech_vocab + 3
        self.special_embedding = nn.Embedding(2, d)  # 0: SOS, 1: TASK (as CosyVoice 2's llm_embedding)
        self.speech_embedding = nn.Embedding(self.vocab, d)
        self.decoder = nn.Linear(d, self.vocab)
        self.n_sem, self.n_speech = cfg.mix_ratio

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    # ---- training --------------------------------------------------------------------

    def build_sequence(self, semantic: torch.Tensor, speech: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One example's interleaved input and targets.

        Args:
            semantic: ``(Ls, D)`` semantic vectors.
            speech: ``(La,)`` speech token ids.

        Returns:
            inputs ``(L, D)`` and targets ``(L,)`` (``-100`` where no loss), ``L = Ls + La + 2``.
        """
        n, m = self.n_sem, self.n_speech
        sos = self.special_embedding.weight[0:1]
        task = self.special_embedding.weight[1:2]
        parts, targets = [sos], [IGNORE]
        ls, la = semantic.shape[0], speech.shape[0]
        i = j = 0
        # full groups while more semantic vectors remain after this group and speech suffices
        while i + n < ls and j + m <= la:
            parts += [semantic[i:i + n], self.speech_embedding(speech[j:j + m])]
            grp = speech[j:j + m].tolist()
            targets += [IGNORE] * (n - 1) + grp + [self.fill_id]
            i, j = i + n, j + m
        # tail: remaining vectors predict nothing, TASK predicts the first remaining speech
        # token, each speech token the next, the last one EOS
        parts += [semantic[i:], task, self.speech_embedding(speech[j:])]
        targets += [IGNORE] * (ls - i) + speech[j:].tolist() + [self.eos_id]
        return torch.cat(parts, dim=0), torch.tensor(targets, device=semantic.device)

    def teacher_forced(
        self,
        semantic: torch.Tensor,
        semantic_lens: torch.Tensor,
        speech: torch.Tensor,
        speech_lens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the interleaved sequences (:meth:`build_sequence`) and their targets.

        Args:
            semantic: ``(B, Ls, D)`` semantic vectors (padded).
            semantic_lens: ``(B,)``.
            speech: ``(B, La)`` speech tokens (padded, any pad value).
            speech_lens: ``(B,)``.

        Returns:
            float32 logits ``(B, L, V)`` and targets ``(B, L)`` (``-100``: no loss, padding).
        """
        seqs, tgts = [], []
        for b in range(semantic.shape[0]):
            x, t = self.build_sequence(semantic[b, : semantic_lens[b]], speech[b, : speech_lens[b]])
            seqs.append(x)
            tgts.append(t)
        lens = torch.tensor([s.shape[0] for s in seqs], device=semantic.device)
        inputs = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        targets = nn.utils.rnn.pad_sequence(tgts, batch_first=True, padding_value=IGNORE)
        mask = (torch.arange(inputs.shape[1], device=lens.device)[None] < lens[:, None]).long()
        hidden = self.body(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return self.decoder(hidden).float(), targets

    def forward(
        self,
        semantic: torch.Tensor,
        semantic_lens: torch.Tensor,
        speech: torch.Tensor,
        speech_lens: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Speech-token cross entropy with teacher forcing (arguments as
        :meth:`teacher_forced`).

        Returns:
            mean loss over target positions and metrics (``speech_acc``).
        """
        logits, targets = self.teacher_forced(semantic, semantic_lens, speech, speech_lens)
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1), ignore_index=IGNORE)
        with torch.no_grad():
            valid = targets != IGNORE
            acc = (logits.argmax(-1)[valid] == targets[valid]).float().mean().item() if valid.any() else 0.0
        return loss, {"speech_acc": acc}

    def sequence_logprobs(
        self,
        semantic: torch.Tensor,
        semantic_lens: torch.Tensor,
        speech: torch.Tensor,
        speech_lens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each example's whole speech continuation (its speech tokens,
        the ``FILL`` marks and ``EOS``) given its semantic vectors: what a preference
        objective compares (arguments as :meth:`teacher_forced`).

        Returns:
            ``(B,)`` summed log-probabilities and ``(B,)`` the number of target positions.
        """
        logits, targets = self.teacher_forced(semantic, semantic_lens, speech, speech_lens)
        valid = targets != IGNORE
        picked = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0)[..., None])[..., 0]
        return (picked * valid).sum(1), valid.sum(1)


    # ---- streaming generation --------------------------------------------------------

    def init_state(self, batch_size: int = 1, device: torch.device | str = "cpu") -> VoiceLMState:
        """Fresh generation state (batch 1 per session; the serving engine stacks sessions)."""
        if batch_size != 1:
            raise ValueError("VoiceLMState holds one stream; batch sessions by stacking states")
        return VoiceLMState(cache=new_kv_cache())

    def step(self, inputs: torch.Tensor, state: VoiceLMState) -> tuple[torch.Tensor, VoiceLMState]:
        """Feed ``(1, T, D)`` input embeddings; return the last position's logits ``(1, V)``."""
        out = self.body(inputs_embeds=inputs, use_cache=True, **cache_kwargs(self.body, state.cache))
        state.cache = returned_cache(out)
        state.length += inputs.shape[1]
        return self.decoder(out.last_hidden_state[:, -1]).float(), state

    def sample(self, logits: torch.Tensor, history: list[int], generator: torch.Generator | None = None,
               allow_eos: bool = True, greedy: bool = False) -> int:
        """Repetition-aware sampling (top-p/top-k nucleus; if the sampled token occurs in the
        last ``ras_window`` tokens more than ``ras_tau * window`` times, resample from the
        full distribution). ``logits``: ``(V,)``, moved to ``generator``'s device (a
        session's sampler lives on the CPU whatever the model's device)."""
        if generator is not None and logits.device != generator.device:
            logits = logits.to(generator.device)
        logits = logits.clone()
        if not allow_eos:
            logits[self.eos_id] = float("-inf")
        logits[self.fill_id] = float("-inf")  # FILL is a training target only
        logits[self.unused_id] = float("-inf")
        if greedy:
            return int(logits.argmax())
        probs = logits.softmax(-1)
        top_p, top_i = probs.sort(descending=True)
        keep = (top_p.cumsum(0) - top_p) < self.cfg.top_p
        keep[self.cfg.top_k:] = False
        choice = top_i[keep][torch.multinomial(top_p[keep] / top_p[keep].sum(), 1, generator=generator)]
        token = int(choice)
        window = history[-self.cfg.ras_window:]
        if window and window.count(token) >= self.cfg.ras_tau * self.cfg.ras_window:
            token = int(torch.multinomial(probs, 1, generator=generator))
        return token

    def push(
        self,
        semantic: torch.Tensor,
        state: VoiceLMState,
        text_done: bool = False,
        generator: torch.Generator | None = None,
        greedy: bool = False,
        max_tail_tokens: int = 600,
    ) -> tuple[list[int], VoiceLMState]:
        """Streaming helper: consume semantic vectors as the LLM produces them.

        Every complete group of ``N`` vectors is fed and ``M`` speech tokens are decoded
        (the 5:15 schedule). When ``text_done``, the rest of the vectors and ``TASK`` are fed
        and speech is decoded until ``EOS`` (or ``max_tail_tokens``).

        Args:
            semantic: ``(T, D)`` new semantic vectors (``T`` may be 0).
            state: this session's state.
            text_done: the LLM has finished its reply.

        Returns:
            speech tokens produced by this call, and the state.
        """
        dev = self.speech_embedding.weight.device
        pend = semantic if state.pending is None else torch.cat([state.pending, semantic], 0)
        produced: list[int] = []
        if not state.started:
            logits, state = self.step(self.special_embedding.weight[0:1][None], state)
            state.started = True
        while pend.shape[0] > self.n_sem and not state.finished:
            logits, state = self.step(pend[None, : self.n_sem].to(dev), state)
            pend = pend[self.n_sem:]
            for k in range(self.n_speech):
                tok = self.sample(logits[0], state.history, generator, allow_eos=False, greedy=greedy)
                produced.append(tok)
                state.history.append(tok)
                logits, state = self.step(self.speech_embedding.weight[tok][None, None], state)
        if text_done and not state.text_done and not state.finished:
            tail = torch.cat([pend.to(dev), self.special_embedding.weight[1:2]], 0)
            logits, state = self.step(tail[None], state)
            pend = pend[:0]
            state.text_done = True
            for _ in range(max_tail_tokens):
                tok = self.sample(logits[0], state.history, generator, allow_eos=True, greedy=greedy)
                if tok == self.eos_id:
                    break
                produced.append(tok)
                state.history.append(tok)
                logits, state = self.step(self.speech_embedding.weight[tok][None, None], state)
            state.finished = True
        state.pending = pend
        return produced, state


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct preference optimisation (Rafailov et al., 2023) over ``(B,)`` sequence
    log-probabilities: ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``, averaged.

    Returns:
        the loss and the ``(B,)`` margins ``beta * (...)`` (positive: the pair is ordered
        as preferred).
    """
    margins = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(margins).mean(), margins
