"""Task instructions: several paraphrases per task, one chosen per example by a seeded RNG.

The instruction is the text of the user turn that comes before ``<|startofspeech|>`` (or, for
text-input tasks such as TTS, the whole user turn). A row may carry its own ``instruction``
(e.g. imported paper-style data); then that one is used verbatim.
"""

from __future__ import annotations

import random

from minmo.data.manifest import LANGUAGE_NAMES, ManifestRow

INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "asr": (
        "Transcribe the speech.",
        "Write down what is said.",
        "Speech to text:",
        "Please transcribe this audio.",
        "What does the speaker say? Give the exact words.",
    ),
    "s2tt": (
        "Translate the speech into {target_language}.",
        "Listen and give the {target_language} translation.",
        "Translate what you hear to {target_language}.",
        "Speech translation into {target_language}:",
    ),
    "lid": (
        "Which language is spoken?",
        "Identify the language of the speech.",
        "What language is this?",
        "Name the language of this recording.",
    ),
    "casr": (
        "Transcribe the speech. Hotwords: {hotwords}.",
        "Write down what is said; these words may occur: {hotwords}.",
        "Transcribe this audio using the context words {hotwords}.",
    ),
    "ser": (
        "What is the speaking style or emotion of the speaker?",
        "Describe the emotion in this voice.",
        "How does the speaker sound?",
        "Recognise the emotion or style of the speech.",
    ),
    "aed": (
        "What sounds can you hear?",
        "Describe the audio events in this recording.",
        "Which sound events are present?",
        "Detect the audio events.",
    ),
    "sa": (
        "Describe the speaker's voice.",
        "What can you tell about the speaker?",
        "Give the speaker's gender, pitch and speaking rate.",
        "Analyse the speaker.",
    ),
    "s2t_chat": (
        "",
        "Answer the question.",
        "Please reply to the speaker.",
        "Respond to what you hear.",
    ),
    "s2s_chat": (
        "",
        "Answer the question.",
        "Please reply to the speaker.",
        "Respond to what you hear.",
    ),
    "tts": (
        "Read this text aloud: {text}",
        "Say the following: {text}",
        "Please speak this sentence: {text}",
        "Text to speech: {text}",
    ),
    "duplex": ("",),
}

STYLE_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "fast": ("Say this quickly: {text}", "Speak fast: {text}", "Read this at a fast pace: {text}"),
    "slow": ("Say this slowly: {text}", "Speak slowly: {text}", "Read this at a slow pace: {text}"),
    "high": ("Say this in a high voice: {text}", "Speak with a high pitch: {text}",
             "Use a high-pitched voice: {text}"),
    "low": ("Say this in a low voice: {text}", "Speak with a low pitch: {text}",
            "Use a deep, low-pitched voice: {text}"),
    "whisper": ("Whisper this: {text}", "Say this in a whisper: {text}",
                "Whisper the following: {text}"),
    "happy": ("Say this happily: {text}", "Sound cheerful: {text}",
              "Read this with a happy voice: {text}"),
    "sad": ("Say this sadly: {text}", "Sound sad: {text}", "Read this with a sad voice: {text}"),
    "angry": ("Say this angrily: {text}", "Sound angry: {text}",
              "Read this with an angry voice: {text}"),
    "neutral": ("Say this in a neutral voice: {text}", "Read this calmly: {text}"),
}
"""instruct_tts instructions per ``style`` value."""


def language_name(code: str | None) -> str:
    """``"de"`` -> ``"German"``; unknown codes come back unchanged."""
    if not code:
        return ""
    return LANGUAGE_NAMES.get(code, LANGUAGE_NAMES.get(code.split("-")[0], code))


def example_rng(seed: int, row_id: str, epoch: int = 0) -> random.Random:
    """A deterministic RNG for one example (same seed, id and epoch -> same choices)."""
    return random.Random(f"{seed}:{epoch}:{row_id}")


def render_instruction(row: ManifestRow, rng: random.Random) -> str:
    """The user-turn text of ``row`` (before the speech, or the whole turn for TTS).

    Raises:
        KeyError: ``instruct_tts`` row whose ``style`` has no instruction and no
            ``instruction`` of its own.
    """
    if row.instruction is not None:
        return row.instruction
    if row.task == "instruct_tts":
        style = row.style or "neutral"
        if style not in STYLE_INSTRUCTIONS:
            raise KeyError(f"row {row.id}: instruct_tts style '{style}' has no template "
                           f"(known: {', '.join(STYLE_INSTRUCTIONS)}); give 'instruction'")
        choices = STYLE_INSTRUCTIONS[style]
    else:
        choices = INSTRUCTIONS[row.task]
    template = rng.choice(choices)
    return template.format(
        text=row.text,
        target_language=language_name(row.target_language),
        hotwords=", ".join(row.hotwords or []),
    )
