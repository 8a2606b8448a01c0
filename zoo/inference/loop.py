"""The guarded step loop every backend runs: progress bar, a non-finite stop that keeps the last good
state, Ctrl-C that keeps the work done, and a convergence check of the loss."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ._progress import progress_bar


@dataclass
class Status:
    """How a fit ended. ``stopped``: the objective became non-finite (the last finite state was kept);
    ``interrupted``: Ctrl-C (the work done so far was kept); ``warnings``: things to look at."""

    steps_done: int = 0
    num_steps: int = 0
    stopped: str | None = None
    interrupted: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.stopped is None and self.interrupted is None

    def merge(self, other: Status) -> Status:
        self.steps_done += other.steps_done
        self.num_steps += other.num_steps
        self.stopped = self.stopped or other.stopped
        self.interrupted = self.interrupted or other.interrupted
        self.warnings += other.warnings
        return self

    def to_json(self) -> dict:
        return {"steps_done": self.steps_done, "num_steps": self.num_steps, "stopped": self.stopped,
                "interrupted": self.interrupted, "warnings": list(self.warnings)}


class NonFinite(Exception):
    """Raised by a step whose objective (or its gradient) is not finite, after putting back the last state
    with a finite one. ``what`` says what went wrong ("the loss became nan")."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def invalid_parameters(error: Exception) -> bool:
    """A distribution built from non-finite parameters (a point where the model is undefined): Pyro's
    validation raises this ValueError; the loops treat it as a non-finite objective."""
    return isinstance(error, ValueError) and "invalid values" in str(error)


class Converged(Exception):
    """Raised by a step when the optimisation has converged: the loop ends there, complete."""


def run_steps(num_steps: int, step: Callable[[int], float | None], label: str, progress: bool,
              *, hint: str = "lower lr or standardise the data", postfix: Callable[[], dict] | None = None,
              losses: list | None = None) -> Status:
    """Call ``step(t)`` for t < num_steps; a returned loss is appended to ``losses``.

    A step raises :class:`NonFinite` (leaving its state untouched) when its objective is not finite.
    """
    status = Status(num_steps=num_steps)
    losses = [] if losses is None else losses
    bar = None
    with _ctrl_c_between_steps() as requested:
        try:  # the bar is made inside: a Ctrl-C as it appears is an interrupt like any other
            bar = progress_bar(num_steps, label, progress)
            for t in range(num_steps):
                try:
                    loss = step(t)
                except NonFinite as bad:
                    status.stopped = (f"{label}: {bad.what} at step {t}; kept the last finite "
                                      f"state. {hint[0].upper() + hint[1:]}")
                    break
                except Converged:
                    status.num_steps = t
                    break
                status.steps_done += 1
                if loss is not None:
                    losses.append(loss)
                if requested():
                    raise KeyboardInterrupt
                if t % 50 == 0:
                    bar.set_postfix(postfix() if postfix else {"loss": f"{loss:.4g}"} if loss is not None else {})
                bar.update()
        except KeyboardInterrupt:
            status.interrupted = f"{label}: interrupted at step {status.steps_done} of {num_steps}"
        finally:
            if bar is not None:
                bar.close()
    return status


@contextmanager
def _ctrl_c_between_steps() -> Iterator[Callable[[], bool]]:
    """Ctrl-C asks the loop to stop after the step under way instead of raising inside it: an interrupt
    in the middle of a step (or of a lazy import torch does there) would leave broken state behind. A
    second Ctrl-C raises at once. Off the main thread, where Python cannot handle signals, Ctrl-C raises."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous in (None, signal.SIG_IGN):  # not ours to handle, or ignored by whoever started us
        yield lambda: False
        return
    asked = []

    def ask(signum, frame):
        asked.append(signum)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, ask)
    try:
        yield lambda: bool(asked)
    finally:
        signal.signal(signal.SIGINT, previous)


def check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise NonFinite(f"the loss became {value}")
    return value


def converged(losses: list[float], label: str, rtol: float = 1e-3) -> str | None:
    """A warning when the loss still fell over the last twentieth of the steps, else None."""
    window = max(len(losses) // 20, 1)
    if len(losses) < 2 * window:
        return None
    before = sum(losses[-2 * window:-window]) / window
    after = sum(losses[-window:]) / window
    if before - after > rtol * max(abs(after), 1.0):
        return (f"{label}: had not converged (loss still fell {before - after:.3g} per point over the last "
                f"{window} steps); raise num_steps")
    return None
