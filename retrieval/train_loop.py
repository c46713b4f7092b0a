"""The epoch loop every trainer shares: epochs, validation, keep-the-best, a resumable checkpoint, resume.

A trainer builds its network and optimiser, then hands the loop two callbacks: ``train_epoch(epoch)`` runs
one epoch's steps and returns its statistics (``{"loss": ...}`` and anything else its report holds), and
``validate()`` scores the network (higher is better). After every epoch the loop builds the trainer's report,
keeps the best checkpoint by validation score at ``out`` (every epoch when there is no validation), and writes
the resumable one at ``out.last``, both atomically (:func:`retrieval.checkpoint.save_checkpoint`). A resumed
run continues after the last finished epoch of ``out.last`` with its optimiser and RNG state, best score and
history. A learning-rate schedule is best a function of ``(epoch, epochs)`` set by ``train_epoch``: it needs
no saved state, and a run resumed with more epochs follows the new schedule.

Checkpoints' ``train`` dict, for a score named ``S`` (``"val_map"``, ``"val_iou"``): ``config`` (the trainer's
configuration), ``epoch``, ``best_epoch``, ``best_S``, ``initial_S`` (with ``score_before_training``: the score
of the network before the first epoch), ``history`` (one report dict per finished epoch), and in ``out.last``
only, ``optimizer`` and ``rng`` (torch's generator state; trainers seed their numpy draws per epoch). All of
it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

R = TypeVar("R")  # a trainer's epoch report: a dataclass with ``epoch``, ``seconds``, its score and its statistics


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_mean(losses: list[torch.Tensor]) -> float:
    """The mean of one epoch's step losses (0-d tensors, on any device; 0.0 for none), read back to the host
    once: a step that read its loss back would wait for the GPU every step."""
    if not losses:
        return 0.0
    values = torch.stack([t.float() for t in losses]).cpu().numpy().astype(np.float64)
    return float(np.mean(values))


def last_path(out: str | Path) -> Path:
    """Where the resumable checkpoint of ``out`` lives: ``out`` + ``.last``."""
    out = Path(out)
    return out.with_name(out.name + ".last")


@dataclass
class LoopResult(Generic[R]):
    best_epoch: int
    best_score: float | None
    #: The score before the first epoch (``score_before_training``), else ``None``.
    initial_score: float | None
    history: list[R] = field(default_factory=list)


class EpochLoop(Generic[R]):
    """Runs ``epochs`` epochs, writing the best checkpoint to ``out`` and the resumable one to ``out.last``.

    ``report_type`` is the trainer's epoch report, built as ``report_type(epoch=, seconds=, <score>=, **stats)``;
    ``score`` names its validation field (``"val_map"``) and the checkpoint keys (``"best_val_map"``),
    ``score_label`` the score in log messages (``"mAP"``). With ``score_before_training`` the network is
    validated before the first epoch, and that score is the one to beat (written to ``out`` as epoch 0).
    ``on_epoch(report)`` is called after each epoch, once its checkpoints are written.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        epochs: int,
        train_config: dict[str, Any],
        report_type: type[R],
        score: str,
        score_label: str,
        score_before_training: bool = False,
        on_epoch: Callable[[R], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.last = last_path(self.out)
        self.epochs = epochs
        self.train_config = train_config
        self.report_type = report_type
        self.score = score
        self.score_label = score_label
        self.score_before_training = score_before_training
        self.on_epoch = on_epoch or (lambda report: None)

    def resumable(self) -> dict[str, Any] | None:
        """The resumable checkpoint ``out.last``, or ``None`` (and a warning) when there is none yet."""
        if self.last.exists():
            return load_checkpoint(self.last)
        log.warning("nothing to resume at %s: training from the start", self.last)
        return None

    def run(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_epoch: Callable[[int], dict[str, float]],
        validate: Callable[[], float] | None,
        *,
        model_config: dict[str, Any],
        resume_from: dict[str, Any] | None = None,
    ) -> LoopResult[R]:
        """Train from the first epoch, or after the last finished one of ``resume_from`` (a checkpoint from
        :meth:`resumable`, whose network state the trainer has already loaded into ``net``).

        ``validate`` is ``None`` when there is nothing to validate on; ``model_config`` goes into every checkpoint.
        """
        history: list[R] = []
        best_epoch, best, initial = 0, None, None
        start = 1

        def save(path: Path, epoch: int, resumable: bool) -> None:
            train: dict[str, Any] = {
                "config": self.train_config,
                "epoch": epoch,
                "best_epoch": best_epoch,
                f"best_{self.score}": best,
            }
            if self.score_before_training:
                train[f"initial_{self.score}"] = initial
            train["history"] = [dataclasses.asdict(h) for h in history]  # type: ignore[call-overload]
            if resumable:
                train["optimizer"] = optimizer.state_dict()
                train["rng"] = {"torch": torch.get_rng_state()}
            save_checkpoint(path, model_config, net.state_dict(), train)

        if resume_from is not None:
            state = resume_from["train"]
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["epoch"]) + 1
            torch.set_rng_state(state["rng"]["torch"])
            history = [self.report_type(**h) for h in state["history"]]
            best_epoch, best = int(state["best_epoch"]), state[f"best_{self.score}"]
            initial = state.get(f"initial_{self.score}")
            log.info("resuming after epoch %d", start - 1)
        elif self.score_before_training and validate is not None:
            initial = best = float(validate())
            log.info("validation %s before training: %.4f", self.score_label, initial)
            save(self.out, 0, resumable=False)

        for epoch in range(start, self.epochs + 1):
            t0 = time.perf_counter()
            stats = train_epoch(epoch)
            score = None if validate is None else float(validate())
            seconds = time.perf_counter() - t0
            report = self.report_type(epoch=epoch, seconds=seconds, **{self.score: score}, **stats)
            history.append(report)
            log.info(
                "epoch %d: %s, validation %s %s (%.0fs)",
                epoch,
                ", ".join(f"{k} {v:.4f}" for k, v in stats.items()),
                self.score_label,
                "-" if score is None else f"{score:.4f}",
                seconds,
            )
            if score is None or best is None or score > best:
                best_epoch, best = epoch, score
                save(self.out, epoch, resumable=False)
            save(self.last, epoch, resumable=True)
            self.on_epoch(report)
        return LoopResult(best_epoch=best_epoch, best_score=best, initial_score=initial, history=history)
