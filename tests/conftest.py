"""Shared test settings."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests use tiny tensors: one intra-op thread is faster than two on the 2-core CI
    machine and immune to other load. Subprocesses (torchrun, the CLI) set their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rt():
    """The tiny model on random weights, speaking placeholder tones: one per test module (a
    test may patch it, and must undo the patch)."""
    from minmo.inference.loading import load_runtime

    return load_runtime("tiny", seed=0, vocoder="placeholder")
