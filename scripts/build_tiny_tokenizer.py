"""Build the tiny test tokenizer shipped in ``src/minmo/assets/tokenizer/tiny/``.

A byte-level BPE (any UTF-8 text encodes; nothing is ever out of vocabulary) with 1024
entries in all, trained on a built-in English word list and number words, plus the ChatML
special tokens and the speech delimiters. Run once; the output is committed:

    .venv/bin/python scripts/build_tiny_tokenizer.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|startofspeech|>",
    "<|endofspeech|>",
]
VOCAB_SIZE = 1024

WORDS = """
the be to of and a in that have i it for not on with he as you do at this but his by from they
we say her she or an will my one all would there their what so up out if about who get which go
me when make can like time no just him know take people into year your good some could them see
other than then now look only come its over think also back after use two how our work first well
way even new want because any these give day most us is are was were been has had did said does
hello yes please thank thanks sorry okay sure question answer assistant user speech voice audio
listen speak talk say repeat transcribe translate language english german french spanish italian
what where when why how many much more less plus minus times divided equals number numbers
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
thousand million first second third fourth fifth last next before after today tomorrow yesterday
monday tuesday wednesday thursday friday saturday sunday january february march april may june
july august september october november december week month year hour minute minutes hours days
meter meters kilometer kilometers gram grams kilogram kilograms liter liters centimeter inch feet
big small bigger smaller larger largest smallest more most fast slow slowly quickly high low loud
quiet happy sad angry neutral surprised whisper whispered calm excited bigger than smaller than
red green blue yellow black white color colour cat dog bird fish tree water fire earth air sun moon
star city country house home car train plane boat book music song food bread apple orange milk
tea coffee morning evening night afternoon weather rain snow wind cold hot warm spell letter word
sentence text speaker man woman child male female old young noise event dog barking bell ringing
engine clapping laughter door knock phone emotion style instruction read aloud following please
could you tell me is it true false correct wrong right left up down in out open close start stop
""".split()


def training_text(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(4000):
        n = rng.randint(3, 14)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, n), str(rng.randint(0, 9999)))
        line = " ".join(words)
        if rng.random() < 0.5:
            line = line.capitalize() + rng.choice([".", "?", "!", ","])
        lines.append(line)
    return lines


def build(out_dir: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 4096,
                "additional_special_tokens": SPECIAL_TOKENS[1:],
            },
            indent=2,
        )
    )
    return tok


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "src/minmo/assets/tokenizer/tiny"
    t = build(target)
    print(f"wrote {target} ({t.get_vocab_size()} tokens)")
