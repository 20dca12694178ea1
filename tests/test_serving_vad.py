"""silero-vad with caller-owned batched state: equals the package's own model; gate rules."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from minmo.serving.vad import SileroVAD, VADGate, split_state, stack_states, stream_probs


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/install.sh installs it)")
    from minmo.audio.io import load_audio

    path = tmp_path_factory.mktemp("vad") / "s.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello, how are you today?"], check=True)
    wave = load_audio(path, 16000)
    pad = np.zeros(8000, dtype=np.float32)
    return np.concatenate([pad, wave, pad, pad])


def test_probabilities_equal_silero_package(speech):
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad  # sets one thread on import

    torch.set_num_threads(threads)
    ref_model = load_silero_vad()
    ref_model.reset_states()
    ours = SileroVAD.from_package()
    state = ours.init_state(1)
    ref, got = [], []
    for k in range(0, len(speech) - 511, 512):
        x = torch.from_numpy(speech[k:k + 512])[None]
        ref.append(ref_model(x, 16000).item())
        p, state = ours.step(x, state)
        got.append(p.item())
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert max(ref) > 0.9 and min(ref) < 0.1


def test_batched_sessions_equal_single(speech):
    vad = SileroVAD.from_package()
    noise = (np.random.default_rng(0).standard_normal(speech.size) * 0.05).astype(np.float32)
    streams = [speech, noise]
    singles = []
    for s in streams:
        st = vad.init_state(1)
        out = []
        for k in range(0, len(s) - 511, 512):
            p, st = vad.step(torch.from_numpy(s[k:k + 512])[None], st)
            out.append(p.item())
        singles.append(out)
    states = [vad.init_state(1), vad.init_state(1)]
    batched = [[], []]
    for k in range(0, len(speech) - 511, 512):
        x = torch.from_numpy(np.stack([s[k:k + 512] for s in streams]))
        p, st = vad.step(x, stack_states(states))
        states = split_state(st)
        for i in range(2):
            batched[i].append(p[i].item())
    np.testing.assert_allclose(batched, singles, atol=1e-4)  # batched conv sums differ in order


def test_gate_start_and_stop_after_silence():
    gate = VADGate(threshold=0.5, silence_ms=100)
    events = []
    probs = [0.1, 0.9, 0.95, 0.2, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]
    for i, p in enumerate(probs):
        ev = gate.update(p, (i + 1) * 512)
        if ev:
            events.append((ev, i))
    # start at window 1; the dip at window 3 is shorter than 100 ms; stop 4 windows after 5
    assert events == [("start", 1), ("stop", 8)]
    assert gate.start_sample == 512 and gate.last_speech_sample == 5 * 512



def test_stream_probs_one_per_whole_window():
    wave = np.zeros(16000 + 100, dtype=np.float32)
    assert stream_probs(SileroVAD.from_package(), wave).shape == (31,)
