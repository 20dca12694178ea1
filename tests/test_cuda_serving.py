"""On a GPU (skipped elsewhere): a spoken reply with sampled text and speech tokens runs with
the model on CUDA and the session's sampler on the CPU, as `minmo serve --device cuda` runs
it."""

import numpy as np
import pytest
import torch

from minmo.inference import pipeline as P
from minmo.inference.loading import load_runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sampled_reply_on_cuda_with_the_sessions_cpu_sampler():
    rt = load_runtime("tiny", seed=0, vocoder="placeholder", device="cuda")
    gen = P.GenerationConfig(max_text_tokens=10, max_speech_tokens=40, temperature=0.8,
                             voice_greedy=False, seed=1)
    sess = P.new_session(rt, P.SessionConfig(generation=gen))
    assert sess.generator.device.type == "cpu"
    t = np.arange(16000) / 16000
    reply = P.reply(rt, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sess)
    assert reply.text and len(reply.speech_tokens) == 40 and reply.wave.size > 0
