"""Refit the output projector after the LLM's states moved: least squares, no speech tokens.

The voice token LM reads *semantic vectors*, ``output_projector([h_{t-1}; e(y_t)])``, of the
LLM's reply (``models/minmo.py``). Retraining speech to text (the input projector and the
LLM's LoRA) moves the hidden states ``h``, so the voice LM, trained on the old states, hears
vectors it has never seen and its speech gets worse, although nothing it was trained for
changed. Retraining it (``t2s_full``, ``s2s``) needs the assistant voice's speech tokens.

This module needs none. For the same teacher-forced rows it runs the model the voice LM was
trained with (the *teacher*: the earlier package) and the new one (the *student*), and
chooses the student's output projector, one linear layer, so that its vectors on the new
states match the teacher's vectors on the old ones in the least-squares sense (ridge
regression, solved exactly from the accumulated normal equations in float64). The voice LM
is untouched: it keeps hearing what it was trained on, as far as a linear map of the new
states can say it. The fit is reported as the fraction of the vectors' variance left
unexplained (``1 - R^2``) on training and held-out rows, jointly and per task, beside the
same figure for the student's current projector (how far the vectors moved). The equations
are kept per task, so the tasks' weights in the fit can change without reading the rows
again.

``scripts/realign_output_projector.py`` runs it on two packages and writes a new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from minmo.models.minmo import MinMo

log = logging.getLogger(__name__)

DEFAULT_RIDGE = 1e-4
"""Ridge strength of the fit, relative to the inputs' mean energy (hardly matters at
minmo-small's scale: ``docs/minmo_small.md``)."""

REPLY_TASKS = ("tts", "instruct_tts", "s2s_chat")
"""Manifest tasks whose reply the voice LM speaks: the rows the fit reads."""


@dataclass
class NormalEquations:
    """Running ``X^T X``, ``X^T Y`` and the sums needed to score a fit, in float64; ``X``
    rows are ``[features ; 1]`` (the bias)."""

    in_dim: int
    out_dim: int
    xtx: torch.Tensor = field(init=False)
    xty: torch.Tensor = field(init=False)
    y_sum: torch.Tensor = field(init=False)
    yty: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.xtx = torch.zeros(self.in_dim + 1, self.in_dim + 1, dtype=torch.float64)
        self.xty = torch.zeros(self.in_dim + 1, self.out_dim, dtype=torch.float64)
        self.y_sum = torch.zeros(self.out_dim, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add ``(N, in_dim)`` inputs with their ``(N, out_dim)`` targets."""
        x = torch.cat([x.double(), x.new_ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
        y = y.double()
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.y_sum += y.sum(0)
        self.yty += float((y * y).sum())
        self.count += x.shape[0]

    def __add__(self, other: "NormalEquations") -> "NormalEquations":
        out = NormalEquations(self.in_dim, self.out_dim)
        for name in ("xtx", "xty", "y_sum", "yty", "count"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def scaled(self, weight: float) -> "NormalEquations":
        """The same rows counted ``weight`` times (a task's weight in a joint fit)."""
        out = NormalEquations(self.in_dim, self.out_dim)
        for name in ("xtx", "xty", "y_sum", "yty", "count"):
            setattr(out, name, getattr(self, name) * weight)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"xtx": self.xtx, "xty": self.xty, "y_sum": self.y_sum, "yty": self.yty,
                "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "NormalEquations":
        out = cls(state["xtx"].shape[0] - 1, state["xty"].shape[1])
        for name, value in state.items():
            setattr(out, name, value)
        return out

    def solve(self, ridge: float = DEFAULT_RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
        """Least squares with a ridge of ``ridge`` times the mean diagonal of ``X^T X`` on the
        weights (not the bias): ``(out_dim, in_dim)`` weight and ``(out_dim,)`` bias."""
        if self.count == 0:
            raise ValueError("no rows to fit")
        reg = torch.zeros_like(self.xtx)
        scale = float(self.xtx.diagonal()[:-1].mean())
        reg.diagonal()[:-1] = ridge * scale
        w = torch.linalg.solve(self.xtx + reg, self.xty)
        return w[:-1].T.contiguous(), w[-1].contiguous()

    def unexplained(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        """``1 - R^2`` of ``x @ weight.T + bias`` over the rows added: squared error over the
        targets' variance (summed over their dimensions)."""
        w = torch.cat([weight.detach().double().T, bias.detach().double()[None]], dim=0)
        sse = self.yty - 2 * float((w * self.xty).sum()) + float((w * (self.xtx @ w)).sum())
        var = self.yty - float((self.y_sum ** 2).sum()) / self.count
        return max(sse, 0.0) / var


def reply_batches(model: MinMo, manifests: Iterable[str | Path], batch_size: int = 8,
                  limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The :data:`REPLY_TASKS` rows of ``manifests`` (no speech tokens needed), collated for
    ``model`` in file order, one pass; ``limit``: stop after the batch that reaches it."""
    from minmo.config import DataConfig
    from minmo.data.loader import build_loader

    cfg = DataConfig(train=[str(m) for m in manifests], batch_size=batch_size, num_workers=0,
                     shuffle=False, max_audio_seconds=30.0, max_text_tokens=256)
    loader = build_loader(cfg, cfg.train, model.frontend, model.tokenizer,
                          system_prompt=model.cfg.system_prompt, train=False, tasks=REPLY_TASKS)
    seen = 0
    for batch in loader:
        if limit is not None and seen >= limit:
            return
        seen += len(batch["input_ids"])
        yield batch


def _read(model: MinMo, batch: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forced LLM reading of ``batch``: per example, the output projector's inputs of
    its reply tokens (:meth:`MinMo.semantic_inputs`)."""
    speech, speech_lens = None, None
    if batch.get("feats") is not None and bool((batch["speech_pos"] >= 0).any()):
        speech, speech_lens = model.encode_speech(batch["feats"], batch["feat_lens"])
    x = model.splice(batch, speech, speech_lens)
    return model.semantic_inputs(model.llm(x.embeds, x.mask).hidden, x)


@torch.no_grad()
def accumulate(teacher: MinMo, student: MinMo, batches: Iterable[dict[str, Any]],
               on_batch: Callable[[int], None] | None = None) -> dict[str, NormalEquations]:
    """Normal equations of the student's projector inputs against the teacher's semantic
    vectors, per manifest task, over ``batches`` (collated for the student; the two models
    must share the tokenizer and the speech front end, so the reply positions agree)."""
    proj = student.output_projector.proj
    per_task: dict[str, NormalEquations] = {}
    for batch in batches:
        ids = batch["ids"]
        tasks = batch.get("tasks") or ["?"] * len(ids)
        for row_id, task, (h_t, e_t), (h_s, e_s) in zip(ids, tasks, _read(teacher, batch),
                                                       _read(student, batch)):
            if h_t.shape != h_s.shape:
                raise ValueError(f"row {row_id}: teacher and student read {h_t.shape[0]} and "
                                 f"{h_s.shape[0]} reply tokens: they must share the tokenizer "
                                 "and the front end")
            eq = per_task.setdefault(task, NormalEquations(proj.in_features, proj.out_features))
            eq.add(torch.cat([h_s, e_s], dim=-1).float(), teacher.output_projector(h_t, e_t).float())
        if on_batch is not None:
            on_batch(len(ids))
    return per_task


def _joint(per_task: dict[str, NormalEquations], weights: dict[str, float]) -> NormalEquations:
    """The tasks' equations summed, each counted ``weights.get(task, 1)`` times."""
    if not per_task:
        raise ValueError("no rows to fit (no tts / instruct_tts / s2s_chat rows read)")
    terms = [eq.scaled(weights.get(task, 1.0)) for task, eq in sorted(per_task.items())]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


@dataclass
class RealignResult:
    """The refitted projector and how well it matches the teacher: ``1 - R^2`` of the joint
    fit and per task, with the student's current projector (``before``) and the new one."""

    weight: torch.Tensor
    bias: torch.Tensor
    vectors: int
    unexplained_before: float
    unexplained_train: float
    unexplained_valid: float | None = None
    unexplained_valid_before: float | None = None
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("weight", "bias")}


def solve_realignment(student: MinMo, train: dict[str, NormalEquations],
                      valid: dict[str, NormalEquations] | None = None, ridge: float = DEFAULT_RIDGE,
                      task_weights: dict[str, float] | None = None) -> RealignResult:
    """The projector fitted to ``train``'s equations (:func:`accumulate`), scored on both."""
    weights = task_weights or {}
    joint = _joint(train, weights)
    weight, bias = joint.solve(ridge)
    proj = student.output_projector.proj
    result = RealignResult(weight.float(), bias.float(), sum(eq.count for eq in train.values()),
                           unexplained_before=joint.unexplained(proj.weight, proj.bias),
                           unexplained_train=joint.unexplained(weight, bias))
    for split, per_task in (("train", train), ("valid", valid or {})):
        for task, eq in sorted(per_task.items()):
            result.per_task.setdefault(task, {}).update({
                f"{split}_vectors": eq.count,
                f"{split}_before": eq.unexplained(proj.weight, proj.bias),
                f"{split}_after": eq.unexplained(weight, bias)})
    if valid:
        held = _joint(valid, weights)
        result.unexplained_valid = held.unexplained(weight, bias)
        result.unexplained_valid_before = held.unexplained(proj.weight, proj.bias)
    log.info("realign: %d vectors, 1-R^2 %.4f before, %.4f after (held out: %s)",
             result.vectors, result.unexplained_before, result.unexplained_train,
             result.unexplained_valid)
    return result


def realign_output_projector(teacher: MinMo, student: MinMo, train: Iterable[dict[str, Any]],
                             valid: Iterable[dict[str, Any]] | None = None, ridge: float = DEFAULT_RIDGE,
                             task_weights: dict[str, float] | None = None,
                             on_batch: Callable[[int], None] | None = None) -> RealignResult:
    """Fit the student's output projector to the teacher's semantic vectors (module
    docstring); the student's own projector is left as it was.

    Args:
        teacher / student: MinMo models in eval mode.
        train / valid: collated batches of rows with a spoken or read-aloud reply (``tts``,
            ``instruct_tts``, ``s2s_chat``); ``valid`` only scores the fit.
        ridge: ridge strength relative to the inputs' mean energy.
        task_weights: how many times a task's rows count in the fit (default 1 each).
    """
    train_eq = accumulate(teacher, student, train, on_batch)
    valid_eq = accumulate(teacher, student, valid, on_batch) if valid is not None else None
    return solve_realignment(student, train_eq, valid_eq, ridge, task_weights)


def write_realigned(model_dir: str | Path, out: str | Path, result: RealignResult,
                    record: dict[str, Any]) -> Path:
    """The overlay package ``model_dir`` again at ``out``, with the refitted projector and
    ``record`` as ``training.realign_output_projector`` in its ``overlay.json``."""
    from minmo.checkpoints import CheckpointError, load_tensors
    from minmo.checkpoints.overlay import CONFIG_FILE, OVERLAY_FILE, read_meta, write_overlay
    from minmo.config import load_model_config

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    tensors = load_tensors(model_dir / OVERLAY_FILE)
    for name, value in (("weight", result.weight), ("bias", result.bias)):
        key = f"output_projector.proj.{name}"
        if key not in tensors or tensors[key].shape != value.shape:
            raise CheckpointError(f"{model_dir}: {key} is missing or not of shape "
                                  f"{tuple(value.shape)}: not the package the fit was made for")
        tensors[key] = value
    parts = {p.stem: load_tensors(p) for p in sorted(model_dir.glob("*.safetensors"))
             if p.name != OVERLAY_FILE}
    training = {**meta.get("training", {}), "realign_output_projector": record}
    readme = model_dir / "README.md"
    return write_overlay(out, load_model_config(model_dir / CONFIG_FILE), tensors,
                         base=meta["base"], training=training,
                         dtype=getattr(torch, meta.get("dtype", "float16")), parts=parts,
                         readme=readme.read_text() if readme.is_file() else None,
                         notes=meta.get("notes"))
