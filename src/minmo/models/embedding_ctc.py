"""CTC in the LLM's embedding space: the ``s2t_ctc`` stage's loss and its greedy reading.

The input projector's frames are scored against the frozen LLM's own token embeddings, so a
frame that CTC labels as token ``v`` sits where the LLM reads ``v``. No LLM runs; the
classes are the embedding table (``vocab``, ``(V, H)``) plus blank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minmo.modules.transformer import padding_mask


def ctc_log_probs(speech: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """Frames ``(B, N, H)`` -> ``(B, N, 1 + V)`` CTC log-probabilities (class 0 blank, class
    ``v + 1`` token ``v``).

    A frame ``s`` is first put at the mean embedding norm ``r`` (``s' = r s / ||s||``: its
    direction is scored, its norm is :func:`norm_gap`'s business). Token ``v``'s logit is
    ``(r^2 - ||s' - e_v||^2) / (2 tau)``, with ``tau`` a tenth of the mean ``||e_v - m||^2``
    (``m`` the mean embedding), so two typical tokens lie about ten nats apart whatever the
    LLM's embedding scale: a frame's most likely token is the one whose embedding lies
    nearest, what the frozen LLM reads there. Blank is "no token near": the logit of a token
    at squared distance ``5 tau`` (a frame on a token beats it by 2.5 nats), joined
    (log-sum-exp) with that of the mean direction ``r m / ||m||``, a neutral frame. A frame
    far from every token, as all are before training, reads as blank: the usual start of
    CTC training. Computed in float32 under any autocast: the logits are differences of
    dot products of size ``r^2``, which bfloat16 would blur by tenths of a nat.
    """
    with torch.autocast(speech.device.type, enabled=False):
        vocab = vocab.float()
        centre = vocab.mean(0, keepdim=True)
        tau = (vocab - centre).pow(2).sum(-1).mean() / 10.0
        radius = vocab.norm(dim=-1).mean()
        s = F.normalize(speech.float(), dim=-1) * radius
        classes = torch.cat([F.normalize(centre, dim=-1) * radius, vocab])
        logits = (s @ classes.T - 0.5 * classes.pow(2).sum(-1)) / tau  # (r^2 - d^2) / (2 tau)
        far = (0.5 * radius ** 2 - 2.5 * tau) / tau
        blank = torch.logaddexp(logits[..., :1], far)
        return F.log_softmax(torch.cat([blank, logits[..., 1:]], dim=-1), dim=-1)


def norm_gap(speech: torch.Tensor, lengths: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames of ``(||s|| / r - 1)^2``: keeps the frames at the scale of real
    embeddings (the softmax of :func:`ctc_log_probs` does not see the norm)."""
    valid = padding_mask(lengths, speech.shape[1])
    gap = (speech.float().norm(dim=-1) / vocab.norm(dim=-1).mean() - 1.0).pow(2)
    return (gap * valid).sum() / valid.sum()


def ctc_loss(speech: torch.Tensor, lengths: torch.Tensor, targets: list[torch.Tensor],
             vocab: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """CTC (mean over rows of the per-token loss) of ``speech`` against token-id
    ``targets``, plus :func:`norm_gap`.

    Returns:
        The loss and metrics ``ctc_loss``, ``ctc_norm`` and ``ctc_blank`` (the fraction of
        valid frames whose best class is blank).
    """
    log_probs = ctc_log_probs(speech, vocab)
    target_lens = torch.tensor([len(t) for t in targets], device=speech.device)
    loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets) + 1, lengths, target_lens,
                      blank=0, reduction="mean", zero_infinity=True)
    gap = norm_gap(speech, lengths, vocab)
    valid = padding_mask(lengths, speech.shape[1])
    blank_frac = ((log_probs.argmax(-1) == 0) & valid).sum() / valid.sum()
    return loss + gap, {"ctc_loss": loss.item(), "ctc_norm": gap.item(), "ctc_blank": blank_frac.item()}


def greedy_tokens(speech: torch.Tensor, lengths: torch.Tensor, vocab: torch.Tensor) -> list[list[int]]:
    """Best path of :func:`ctc_log_probs` per example: repeats merged, blanks dropped."""
    best = ctc_log_probs(speech, vocab).argmax(-1)
    out = []
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])].tolist()
        out.append([c - 1 for i, c in enumerate(path) if c and (i == 0 or c != path[i - 1])])
    return out
