"""CUDA-graph replay of fixed-shape inference functions, one graph per input signature.

Streaming token2wav on a GPU is launch-bound: one flow chunk at CosyVoice 2's shapes is ~10
Euler steps x ~800 small kernels, and launching them one by one from Python costs far more
than running them. :class:`CudaGraphCache` records a function once per input signature (the
shapes, dtypes and devices of its tensor arguments, and every non-tensor argument) and replays
the recording afterwards::

    solve = CudaGraphCache(flow._solve, max_graphs=16)
    mel, caches = solve(mu, mask, spks, cond, z, bias, caches, 10, 0.7)

* Arguments and results are pytrees (tuples, lists, dicts, registered dataclasses such as
  ``EstimatorCache``) of tensors and plain values. Every tensor argument is copied into the
  recording's input buffers before a replay; every tensor result is copied out after it, so
  results never alias the recording (a later replay cannot overwrite a session's state).
* Input buffers are views of shared scratch buffers, one per argument position, which grow
  (doubling) as larger arguments come: recordings of a growing cache (one per chunk of a
  stream) then hold memory for the largest cache, not for the sum of all of them. Results
  are held per recording, so functions should return what is new, not a grown copy of an
  argument (the flow returns the new frames' keys/values and appends them outside).
* The function must be free of host synchronisation (no ``.item()``, no data-dependent
  shapes) and must not mutate its arguments: the same rules as ``torch.cuda.graph``.
* Replays are serialised by a lock (sessions run on several threads). Once ``max_graphs``
  recordings exist, calls with a new signature run eagerly (no eviction: a stream longer than
  the budget would otherwise re-record its first chunks again and again).
* If recording fails (an operation that cannot be recorded), the wrapper warns once and
  calls the function directly from then on: slower, never wrong.
* Not on CUDA, the wrapper calls the function directly. ``graph_factory`` replaces the CUDA
  recorder (tests use an emulation that re-runs the function into the same buffers on CPU,
  which checks the caching, copying and buffer logic without a GPU).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree


@dataclass
class _Recording:
    replay: Callable[[], None]
    inputs: list[torch.Tensor]
    outputs: Any  # pytree of tensors / values (the recording's own buffers)
    graph: Any = None  # keeps the CUDA graph (and its memory pool) alive


def record_cuda_graph(fn: Callable[..., Any], args: tuple, warmup: int = 1) -> tuple[Callable[[], None], Any, Any]:
    """Record ``fn(*args)`` as a CUDA graph (after ``warmup`` eager runs on a side stream).

    Returns:
        ``(replay, outputs, graph)``: replaying re-runs the kernels on the same input and
        output buffers.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = fn(*args)
    return graph.replay, outputs, graph


def emulate_graph(fn: Callable[..., Any], args: tuple, warmup: int = 1) -> tuple[Callable[[], None], Any, None]:
    """CPU stand-in for :func:`record_cuda_graph` with the same buffer semantics: a replay
    re-runs ``fn`` on the recorded input buffers and writes into the recorded output buffers."""
    outputs = fn(*args)

    def replay() -> None:
        fresh = pytree.tree_leaves(fn(*args))
        for dst, src in zip(pytree.tree_leaves(outputs), fresh):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)

    return replay, outputs, None


def _signature(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.requires_grad)
    return ("value", leaf)


class CudaGraphCache:
    """Calls ``fn`` through CUDA graphs recorded per input signature (see module docstring).

    Args:
        fn: the function to record (pure; no host synchronisation).
        max_graphs: recordings made at most (later new signatures run eagerly).
        warmup: eager runs before recording (cuBLAS/cuDNN pick their kernels there).
        graph_factory: ``(fn, args, warmup) -> (replay, outputs, graph)``; default records on
            CUDA when the tensor arguments live there.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        max_graphs: int = 64,
        warmup: int = 1,
        graph_factory: Callable[..., tuple[Callable[[], None], Any, Any]] | None = None,
    ):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.fn = fn
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.graph_factory = graph_factory
        self.recorded = 0  # recordings made so far
        self.failed: str | None = None  # why recording failed (then calls go straight to fn)
        self._graphs: dict[Any, _Recording] = {}
        self._scratch: dict[tuple, torch.Tensor] = {}  # (position, dtype, device) -> flat buffer
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every recording (and its memory)."""
        with self._lock:
            self._graphs.clear()
            self._scratch.clear()

    def input_bytes(self) -> int:
        """Bytes of the input buffers the recordings hold (shared buffers counted once)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for rec in self._graphs.values() for t in rec.inputs}
        return sum(storages.values())

    def __call__(self, *args: Any) -> Any:
        leaves, spec = pytree.tree_flatten(args)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        factory = self.graph_factory
        if self.failed is not None:
            return self.fn(*args)
        if factory is None:
            if not tensors or any(t.device.type != "cuda" for t in tensors) or torch.is_grad_enabled():
                return self.fn(*args)
            factory = record_cuda_graph
        # autocast changes the recorded kernels, so its state is part of the signature
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        key = (spec, autocast, tuple(_signature(x) for x in leaves))
        with self._lock:
            rec = self._graphs.get(key)
            if rec is None and len(self._graphs) >= self.max_graphs:
                return self.fn(*args)
            if rec is None:
                try:
                    rec = self._record(factory, leaves, spec)
                except RuntimeError as err:
                    self.failed = f"{type(err).__name__}: {err}"
                    warnings.warn(f"CUDA graph recording of {getattr(self.fn, '__qualname__', self.fn)} failed, "
                                  f"running it eagerly from now on ({self.failed.splitlines()[0]})", stacklevel=2)
                    return self.fn(*args)
                self._graphs[key] = rec
            else:
                torch._foreach_copy_(rec.inputs, tensors)
            rec.replay()
            out_leaves, out_spec = pytree.tree_flatten(rec.outputs)
            out_tensors = [x for x in out_leaves if isinstance(x, torch.Tensor)]
            copies = iter([t.clone() for t in out_tensors])
            return pytree.tree_unflatten(
                [next(copies) if isinstance(x, torch.Tensor) else x for x in out_leaves], out_spec
            )

    def _input_buffer(self, position: int, like: torch.Tensor) -> torch.Tensor:
        """A view shaped like ``like`` (holding its values) at the start of the shared scratch
        buffer of argument ``position``; the buffer doubles when too small (recordings that
        use the old one keep it alive)."""
        key = (position, like.dtype, like.device)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < like.numel():
            size = max(like.numel(), 2 * buf.numel() if buf is not None else 0)
            buf = self._scratch[key] = torch.empty(size, dtype=like.dtype, device=like.device)
        view = buf[: like.numel()].view(like.shape)
        view.copy_(like)
        return view

    def _record(self, factory: Callable[..., Any], leaves: list[Any], spec: Any) -> _Recording:
        inputs = [self._input_buffer(i, x) if isinstance(x, torch.Tensor) else x for i, x in enumerate(leaves)]
        static_args = pytree.tree_unflatten(inputs, spec)
        replay, outputs, graph = factory(self.fn, static_args, self.warmup)
        self.recorded += 1
        return _Recording(replay, [x for x in inputs if isinstance(x, torch.Tensor)], outputs, graph)
