"""Builders: config -> model. They read like the architecture table.

``build_model(load_model_config("tiny"))`` == ``minmo_tiny()``. Build inside
``with torch.device("meta"):`` to get shapes and parameter counts without memory.
"""

from __future__ import annotations

from minmo.config import ModelConfig, load_model_config
from minmo.models.llm import build_llm, load_tokenizer
from minmo.models.minmo import MinMo
from minmo.models.voice_lm import VoiceTokenLM


def build_model(cfg: ModelConfig) -> MinMo:
    """Build every MinMo part from ``cfg`` (pretrained LLM weights when ``cfg.llm.path``)."""
    from minmo.audio.features import build_frontend
    from minmo.models.encoder import build_encoder

    tokenizer = load_tokenizer(cfg.llm)
    return MinMo(
        cfg,
        encoder=build_encoder(cfg.encoder),
        tokenizer=tokenizer,
        llm=build_llm(cfg.llm, vocab_size=len(tokenizer)),
        voice_lm=VoiceTokenLM(cfg.voice_lm),
        frontend=build_frontend(cfg.frontend),
    )


def minmo_tiny() -> MinMo:
    """The CPU test scale: random weights, a few layers everywhere."""
    return build_model(load_model_config("tiny"))


def minmo_7b() -> MinMo:
    """Paper scale: SenseVoice-large-shaped encoder, Qwen2.5-7B-Instruct, CosyVoice 2 LM."""
    return build_model(load_model_config("minmo-7b"))
