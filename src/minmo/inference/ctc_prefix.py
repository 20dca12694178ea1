"""Joint CTC/attention decoding of transcripts: the LLM's next-token choice, held to the audio.

The input projector's frames carry CTC log-probabilities over the LLM's own vocabulary
(``models/embedding_ctc.py``; trained by ``s2t_ctc`` and ``aux_losses: [ctc]``). A transcript
written by the LLM alone can drift into text the audio does not hold: minmo-small, trained on
WordNet's example sentences, reads "Five five." as "`55' is a five-letter word.". Here each
step takes the LLM's ``top_k`` candidates and scores each by

    (1 - weight) * log p_LLM(c | prefix) + weight * (log p_CTC(prefix + c ...) - log p_CTC(prefix ...))

where ``p_CTC(g ...)`` is the CTC *prefix* probability: the frames' probability of any
labelling that starts with ``g`` (the stop token: of exactly ``g``). That is the one-beam form
of hybrid CTC/attention decoding (Watanabe et al., 2017), computed by the usual forward
recursion over the frames, for all candidates at once.
"""

from __future__ import annotations

import torch

NEG = float("-inf")


class CtcPrefixScorer:
    """CTC prefix scores of one transcript as it is written.

    Args:
        log_probs: ``(T, 1 + V)`` CTC log-probabilities of the utterance's frames (class 0
            blank, class ``v + 1`` token ``v``); tokens ``>= V`` (added special tokens) have
            no CTC probability and are never chosen over one that has, except to stop.
        weight: the CTC share of the joint score (0: the LLM alone).
        top_k: candidates taken from the LLM per step.
    """

    def __init__(self, log_probs: torch.Tensor, weight: float, top_k: int = 8) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"CTC weight must lie in [0, 1], got {weight}")
        self.x = log_probs.float()
        self.weight = weight
        self.top_k = top_k
        self.vocab = self.x.shape[1] - 1
        # the empty prefix: every frame so far blank
        self.r_n = torch.full((self.x.shape[0],), NEG)
        self.r_b = torch.cumsum(self.x[:, 0], 0)
        self.prefix_score = 0.0
        self.last: int | None = None

    def full_score(self) -> float:
        """log p_CTC of exactly the prefix (all frames spent)."""
        return float(torch.logaddexp(self.r_n[-1], self.r_b[-1]))

    def _extend(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix scores ``(K,)`` and the forward variables ``(T, K)`` of prefix + each token."""
        xc = self.x[:, [t + 1 for t in tokens]]  # (T, K)
        total = torch.logaddexp(self.r_n, self.r_b)[:, None].expand_as(xc)
        repeat = torch.tensor([t == self.last for t in tokens])
        phi = torch.where(repeat[None], self.r_b[:, None].expand_as(xc), total)
        r_n = torch.full_like(xc, NEG)
        r_b = torch.full_like(xc, NEG)
        if self.last is None:
            r_n[0] = xc[0]
        for t in range(1, xc.shape[0]):
            r_n[t] = torch.logaddexp(r_n[t - 1], phi[t - 1]) + xc[t]
            r_b[t] = torch.logaddexp(r_b[t - 1], r_n[t - 1]) + self.x[t, 0]
        # c at frame 0 (only after the empty prefix: r_n[0]), or first at frame t >= 1
        psi = torch.logsumexp(torch.cat([r_n[:1], phi[:-1] + xc[1:]]), 0)
        return psi, r_n, r_b

    def choose(self, logits: torch.Tensor, stop_ids: set[int] | frozenset[int]) -> int:
        """The next token: the LLM's ``top_k`` rescored with the CTC prefix score; the prefix
        then moves on by it (a stop token ends the transcript)."""
        logp = torch.log_softmax(logits.float().cpu(), -1)
        cands = logp.topk(min(self.top_k, logp.numel())).indices.tolist()
        stops = [c for c in cands if c in stop_ids]
        extend = [c for c in cands if c not in stop_ids and c < self.vocab]
        scores: dict[int, float] = {}
        if extend:
            psi, r_n, r_b = self._extend(extend)
            for i, c in enumerate(extend):
                scores[c] = float(psi[i]) - self.prefix_score
        for c in stops:
            scores[c] = self.full_score() - self.prefix_score
        if not scores:  # only added special tokens on top: the LLM decides
            return cands[0]
        best = max(scores, key=lambda c: (1 - self.weight) * float(logp[c])
                   + self.weight * scores[c])
        if best in extend:
            i = extend.index(best)
            self.r_n, self.r_b = r_n[:, i].clone(), r_b[:, i].clone()
            self.prefix_score = float(psi[i])
            self.last = best
        return best
