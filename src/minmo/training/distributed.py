"""Multi-process training: process group, model wrapping (FSDP2 or DDP), collectives and
state-dict gathering.

``torchrun --nproc_per_node N minmo train CONFIG`` starts N processes; each reads
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment. The backend is NCCL on CUDA and
gloo on CPU. ``distributed: auto`` shards with FSDP2 (``torch.distributed.fsdp.fully_shard``)
whenever more than one process runs, on CUDA and on CPU alike (FSDP2 runs on gloo in torch
2.13; the tests check it); ``ddp`` replicates the model with ``DistributedDataParallel``
instead; ``none`` refuses to run under torchrun.

Checkpoints are written from full (gathered) state dicts through
``torch.distributed.checkpoint.state_dict``, so a checkpoint does not depend on the number of
processes that wrote it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """This process's place in the job.

    Attributes:
        rank, world_size, local_rank: from torchrun's environment (0, 1, 0 without it).
        device: where this process computes.
        mode: ``"none"``, ``"ddp"`` or ``"fsdp"``.
        owns_group: this call started the process group (and :func:`shutdown_distributed`
            may end it); False when the caller had started one.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mode: str = "none"
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mode != "none"


def init_distributed(setting: str = "auto") -> DistInfo:
    """Read torchrun's environment, pick the device and, with more than one process, start
    the process group.

    Args:
        setting: ``TrainConfig.distributed`` (``auto``, ``fsdp``, ``ddp`` or ``none``).

    Raises:
        ValueError: ``none`` with several processes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world <= 1:
        return DistInfo(0, 1, 0, device, "none")
    if setting == "none":
        raise ValueError(f"distributed: none, but {world} processes were started (torchrun); "
                         "set distributed to auto, fsdp or ddp")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    mode = "fsdp" if setting == "auto" else setting
    return DistInfo(rank, world, local_rank, device, mode, owns_group=owns)


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` started it."""
    if info.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _layer_lists(model: nn.Module) -> list[nn.Module]:
    """Modules inside ``nn.ModuleList``s of at least two entries (transformer layers and
    similar repeated blocks): the units FSDP shards one by one."""
    out: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2:
            out.extend(m for m in module if any(True for _ in m.parameters()))
    return out


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """Move ``model`` to the device and wrap it for ``info.mode``.

    FSDP2: every repeated layer (``nn.ModuleList`` entry: transformer blocks) is sharded on
    its own, the rest (embeddings, LM head, norms, small projectors) with the root. The root's
    parameters stay gathered for the whole forward pass, so methods other than ``forward``
    (``llm.embed()``, ``llm.logits()``) work inside ``MinMo.forward``; the model object keeps
    its class and methods (parameters become DTensors). DDP: ``DistributedDataParallel``
    with ``find_unused_parameters=True`` (a stage may leave a trainable tensor out of a
    batch's graph). None: the model on the device.
    """
    if info.mode == "none":
        return model.to(info.device)
    if info.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = model.to(info.device)
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    if info.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        model = model.to(info.device)
        done: set[int] = set()
        for layer in reversed(_layer_lists(model)):  # nested blocks before their parents
            if id(layer) not in done:
                fully_shard(layer, mesh=mesh)
                done.add(id(layer))
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown distributed mode '{info.mode}' (auto, fsdp, ddp or none)")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, info: DistInfo, enabled: bool) -> Iterator[None]:
    """Context for one micro-batch's forward+backward: gradients are reduced across
    processes only when ``enabled`` (the last micro-batch of an accumulation)."""
    if info.mode == "ddp" and not enabled:
        with model.no_sync():
            yield
    elif info.mode == "fsdp":
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a list of floats over all processes (identity without a process group)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op alone)."""
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_model_state(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU tensors of ``model`` (trainable ones only if asked), keyed as in
    the unwrapped model's ``state_dict()``. Collective under DDP/FSDP: every process must
    call it; rank 0 receives the tensors, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                               ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    if trainable_only:
        # a frozen parameter can survive under a second name (tied embeddings: lm_head.weight
        # is embed_tokens.weight), which would then fail strict loading on resume
        frozen = {n.removeprefix("module.") for n, p in model.named_parameters(remove_duplicate=False)
                  if not p.requires_grad}
        state = {k: v for k, v in state.items() if k not in frozen}
    return state


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name (independent of the process count).
    Collective like :func:`gather_model_state`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state (from :func:`gather_optimizer_state`) into an
    optimizer over the (possibly sharded) model. Every process passes the full state.

    A trainable parameter that never received a gradient (e.g. the voice LM body's one-row
    text embedding, which ``inputs_embeds`` bypasses) is in the saved param groups but has no
    saved state, exactly as in the optimizer that wrote it; only then is the load non-strict
    (parameter names are checked strictly by the trainable tensors' load)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    grouped = {name for group in state.get("param_groups", []) for name in group.get("params", [])}
    never_stepped = grouped - set(state.get("state", {}))
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True,
                                                      strict=not never_stepped))
