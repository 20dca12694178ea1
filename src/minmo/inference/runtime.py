"""The shared, read-only side of inference: a MinMo model, its speech decoder, and the small
operations every session uses (embed ids, encode a turn, logits, semantic vectors).

A :class:`MinMoRuntime` holds no per-session state; sessions own their state objects
(:mod:`minmo.inference.pipeline`) and pass them in. Many sessions share one runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from minmo.inference.vocoder import PlaceholderVocoder, SpeechDecoder
from minmo.models import embedding_ctc
from minmo.models.minmo import MinMo

RANDOM_WEIGHTS_WARNING = "random weights — not a trained model"


@dataclass
class ModelInfo:
    """Where the model came from, shown to users (CLI, ``session.created``, web page).

    Attributes:
        name: config name (``tiny``, ``minmo-small``, ...).
        source: ``preset:<name>`` or a checkpoint path.
        random_weights: nothing trained was loaded.
        vocoder: name of the speech decoder in use.
        notes: further plain-language caveats (e.g. a placeholder vocoder).
        untrained: parameter groups left at their random initialisation in an otherwise
            trained model (an overlay package's ``untrained_groups``, e.g. ``duplex``).
        quantization: how the weights were quantized after loading (None: as loaded;
            :mod:`minmo.inference.quantize`).
    """

    name: str
    source: str
    random_weights: bool
    vocoder: str = "placeholder-tones"
    notes: list[str] = field(default_factory=list)
    untrained: list[str] = field(default_factory=list)
    quantization: str | None = None

    @property
    def trained_predictor(self) -> bool:
        """The duplex predictor holds trained weights (so its turn decisions can be trusted)."""
        return not self.random_weights and "duplex" not in self.untrained

    @property
    def warning(self) -> str | None:
        """One line for stderr / banners, or None for a trained model with real vocoder."""
        parts = [RANDOM_WEIGHTS_WARNING] if self.random_weights else []
        parts += self.notes
        if not parts:
            return None
        return f"model '{self.name}' ({self.source}): " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "random_weights": self.random_weights,
                "vocoder": self.vocoder, "warning": self.warning,
                "quantization": self.quantization}


class MinMoRuntime:
    """A model ready for inference, shared by all sessions.

    Args:
        model: a built (and loaded) :class:`MinMo`; put in eval mode here.
        vocoder: streaming speech-token decoder (None: :class:`PlaceholderVocoder`).
        info: provenance shown to users (None: derived, assumed random weights).
    """

    def __init__(self, model: MinMo, vocoder: SpeechDecoder | None = None,
                 info: ModelInfo | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.vocoder: SpeechDecoder = vocoder or PlaceholderVocoder()
        self.info = info or ModelInfo(model.cfg.name, "in-memory", True, self.vocoder.name)
        self.tok = model.tokenizer
        self.device = next(model.parameters()).device
        self.dtype = next(model.llm.parameters()).dtype
        # decoder bodies (transformers Qwen2Model / LlamaModel) driven with explicit caches
        self.llm_body = model.llm.body
        self.vlm_body = model.voice_lm.body
        stop = {self.tok.im_end_id}
        eos = getattr(self.tok.hf, "eos_token_id", None)
        if eos is not None:
            stop.add(int(eos))
        self.stop_ids = frozenset(stop)
        self.sample_rate_in = model.cfg.frontend.sample_rate
        self.sample_rate_out = self.vocoder.sample_rate
        self._ctc_vocabulary: torch.Tensor | None = None

    # ---- text side -------------------------------------------------------------------

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        """``n`` token ids -> ``(n, H)`` LLM input embeddings."""
        with torch.inference_mode():
            t = torch.tensor(ids, dtype=torch.long, device=self.device)
            return self.model.llm.embed(t[None])[0]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text (special tokens dropped)."""
        return self.tok.decode(ids, skip_special_tokens=True)

    # ---- speech side -----------------------------------------------------------------

    @torch.inference_mode()
    def ctc_log_probs(self, speech: torch.Tensor) -> torch.Tensor:
        """``(F, H)`` speech embeddings -> ``(F, 1 + V)`` float32 CTC log-probabilities over
        the LLM's vocabulary, on the CPU (``models/embedding_ctc.py``; class 0 blank)."""
        if self._ctc_vocabulary is None:
            self._ctc_vocabulary = self.model.ctc_vocabulary()
        return embedding_ctc.ctc_log_probs(speech[None], self._ctc_vocabulary)[0].cpu()

    @property
    def llm_frame_seconds(self) -> float:
        """Seconds of audio per LLM speech frame (0.12 for SenseVoice LFR 6 x stride 2)."""
        return self.model.frame_seconds * self.model.input_projector.stride

    def features(self, wave: np.ndarray, causal: bool = False) -> torch.Tensor:
        """``(N,)`` float32 16 kHz waveform -> ``(T, D_in)`` encoder features (``causal``:
        as the listening stream computes them)."""
        return self.model.frontend(np.asarray(wave, dtype=np.float32), causal).to(self.device)

    @torch.inference_mode()
    def encode_speech(self, wave: np.ndarray, streaming: bool = False) -> torch.Tensor:
        """Offline speech embeddings of one waveform (full context; ``streaming``: the
        listening stream's front end and encoder regime, :meth:`MinMo.encode_speech`).

        Args:
            wave: ``(N,)`` float32 in [-1, 1] at 16 kHz.

        Returns:
            ``(F, H)`` LLM-width speech embeddings (queries' frames included).
        """
        wave = np.asarray(wave, dtype=np.float32)
        if wave.size < self.sample_rate_in // 50:  # < 20 ms: pad so the front end has a frame
            wave = np.pad(wave, (0, self.sample_rate_in // 50 - wave.size))
        feats = self.features(wave, causal=streaming)[None]
        lens = torch.tensor([feats.shape[1]], device=self.device)
        emb, emb_lens = self.model.encode_speech(feats, lens, streaming)
        return emb[0, : int(emb_lens[0])].to(self.dtype)
