"""The one training loop: a step function, a NaN check, and hooks called every N steps.

Every trainer in pingllm (`train.train`, `experiments.distill.distill`, the DP-SGD runs of
`experiments.privacy_dp.train_variant`) is this loop with its own step and hooks, in the pattern of
levanter's `Trainer.add_hook`:

    loop = TrainLoop(step_fn, steps, name="training loss")
    loop.add_hook(save, every=500, last=True, state=True)   # checkpoint: needs the state
    loop.add_hook(report, every=10, last=True)              # log/progress: the metrics are enough
    state = loop.run(state, start=resumed_step)

What the loop owns:

- `step_fn(state) -> (state, metrics)` runs steps start+1 .. steps. It fetches its own batch (and draws
  its own keys), so the RNG and data order are the caller's, exactly as written there. `metrics` is a
  dict of device scalars with at least "loss".
- Reading: each step's metrics go to the host once (`jax.device_get`, then float), are checked (a
  non-finite "loss" raises FloatingPointError "<name> is nan at step 7<note>" before any hook of that
  step runs, so no checkpoint can persist it) and appended to `history` [(step, metrics)].
- Hooks: `fn(StepInfo)` at every step with step % every == 0 (every=0: never), and at the final step
  if `last`; called in the order they were added. A hook that raises stops the run.
- `read_late=True` (the main training loop) reads step s's metrics only after step s+1 is dispatched,
  so the host never stalls the device. Hooks of step s then run late and get `state=None`: the state of
  step s was donated to step s+1. Steps where a `state=True` hook is due are read at once instead, so
  checkpoints and evals see the state and the NaN check of their own step.

What stays with the caller: building the state, resume (`checkpoint.restore_latest` gives `start`),
what is logged and how (tracker metric names, progress lines), and what happens after the last step
(a final eval, closing the iterator, the result object). Stock hooks: `checkpoint_hook`, `Throughput`.

The three callers (hooks in the order they run at a step):

    train.train               read_late  Throughput; checkpoint every ckpt_every + last; eval every
                                         eval_every; tracker metrics + progress line every log_every + last
    distill.distill           in step    progress every log_every + last; checkpoint at the last step
    privacy_dp.train_variant  in step    progress every steps // 5 + last; no checkpoints
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["StepInfo", "Throughput", "TrainLoop", "checkpoint_hook"]


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a hook sees: a completed step, its host metrics and (for `state=True` hooks) the state after it."""

    step: int
    metrics: dict[str, float]
    state: Any = None  # None when read late (the state was donated to the next step)


@dataclasses.dataclass(frozen=True)
class _Hook:
    fn: Callable[[StepInfo], None]
    every: int
    last: bool
    state: bool

    def due(self, step: int, steps: int) -> bool:
        return bool(self.every and step % self.every == 0) or (self.last and step == steps)


class TrainLoop:
    """Runs `step_fn` to `steps`, checks each step's loss and calls the hooks; see the module docstring."""

    def __init__(
        self,
        step_fn: Callable[[Any], tuple[Any, dict]],
        steps: int,
        *,
        name: str = "training loss",
        nan_note: str = "",
        read_late: bool = False,
    ) -> None:
        self.step_fn, self.steps, self.read_late = step_fn, steps, read_late
        self.name, self.nan_note = name, nan_note  # the NaN error: f"{name} is {loss} at step {s}{nan_note}"
        self.hooks: list[_Hook] = []
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, host metrics), every step read
        self.step = 0  # the last step run (the start step when none ran)

    def add_hook(
        self, fn: Callable[[StepInfo], None], every: int = 1, *, last: bool = False, state: bool = False
    ) -> None:
        """Call `fn` every `every` steps (0: never) and at the final step if `last`; `state`: it needs the state."""
        self.hooks.append(_Hook(fn, every, last, state))

    def run(self, state: Any, start: int = 0) -> Any:
        """Run steps start+1 .. steps from `state`; returns the final state."""
        self.step = start
        pending: tuple[int, dict] | None = None
        for step in range(start + 1, self.steps + 1):
            state, metrics = self.step_fn(state)
            self.step = step
            if pending is not None:
                self._emit(*pending, None)
                pending = None
            if self.read_late and not any(h.state and h.due(step, self.steps) for h in self.hooks):
                pending = (step, metrics)
            else:
                self._emit(step, metrics, state)
        if pending is not None:
            self._emit(*pending, None)
        return state

    def _emit(self, step: int, metrics: dict, state: Any) -> None:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(host["loss"]):
            raise FloatingPointError(f"{self.name} is {host['loss']} at step {step}{self.nan_note}")
        self.history.append((step, host))
        info = StepInfo(step, host, state)
        for hook in self.hooks:
            if hook.due(step, self.steps):
                hook.fn(info)


def checkpoint_hook(mgr, data_iter: Any) -> Callable[[StepInfo], None]:
    """A `state=True` hook saving (model_state, opt_state) = info.state, the data iterator and meta
    {"step", "loss"} with `checkpoint.save_step`."""
    from pingllm_core.model import checkpoint as ckpt  # orbax and grain only where checkpoints are written

    def save(info: StepInfo) -> None:
        meta = {"step": info.step, "loss": info.metrics["loss"]}
        ckpt.save_step(mgr, info.step, info.state[0], info.state[1], data_iter, meta)

    return save


class Throughput:
    """An every-step hook: `metrics[key]` per second, counted from the first step read (the compiling one)."""

    def __init__(self, key: str = "weighted_tokens") -> None:
        self.key, self.total, self.t0 = key, 0.0, None

    def __call__(self, info: StepInfo) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        else:
            self.total += info.metrics[self.key]

    def per_s(self) -> float:
        """The rate so far; 0 before the second step is read."""
        if self.t0 is None:
            return 0.0
        return self.total / max(time.perf_counter() - self.t0, 1e-9)
