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
