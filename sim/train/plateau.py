"""The plateau criterion that ends a training run ("run until converged", issue 12).

A run is checked every `every` steps on a cheap measure (adversarial training: the robust
accuracy of FGM + the dense attack on held-out test points that the final evaluation does
not use; clean training: the training accuracy). It has converged at step t when, over the
last quarter of the run (the checks at steps >= (1 - window) t, at least `min_points` of
them), the measure moved by less than tol: |last - first| < tol and max - min < 2 tol (the
second condition keeps an oscillating curve from passing). Training stops at the first
converged check at or after min_steps, or at the cap (max_steps); a run that hit the cap
is reported as not converged.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def plateaued(steps, values, window: float = 0.25, tol: float = 0.005, min_points: int = 3,
              origin: int = 0) -> bool:
    """Whether the curve (steps, values) has converged at its last point (see the module).
    origin: checks before this step never count (while a radius ramp runs, the curve measured at
    the full radius can sit flat before training at that radius has begun)."""
    if not steps:
        return False
    last = steps[-1]
    tail = [v for s, v in zip(steps, values) if s >= max(origin, (1.0 - window) * last)]
    if len(tail) < min_points:
        return False
    return abs(tail[-1] - tail[0]) < tol and max(tail) - min(tail) < 2 * tol


@dataclass
class Plateau:
    """A running plateau check: `update(step, value)` records a point of the curve and says
    whether training may stop there (converged and step >= min_steps). `enabled=False`
    records the curve without ever stopping (fixed-length runs are still judged by
    `converged_now`)."""

    measure: str
    every: int
    min_steps: int
    max_steps: int
    tol: float = 0.005
    window: float = 0.25
    enabled: bool = True
    origin: int = 0
    steps: list = field(default_factory=list)
    values: list = field(default_factory=list)
    stopped_at: int | None = None

    def update(self, step: int, value: float, may_stop: bool = True) -> bool:
        """may_stop=False records the point but vetoes stopping there (the caller's own condition)."""
        self.steps.append(int(step))
        self.values.append(float(value))
        stop = (self.enabled and may_stop and step >= self.min_steps and step < self.max_steps
                and self.converged_now())
        if stop:
            self.stopped_at = int(step)
        return stop

    def converged_now(self) -> bool:
        return plateaued(self.steps, self.values, self.window, self.tol, origin=self.origin)

    def criterion(self) -> str:
        return (f"{self.measure} moved by < {self.tol:g} over the last {self.window:g} of the run "
                f"(|last - first| < {self.tol:g} and max - min < {2 * self.tol:g}), checked every {self.every} steps,"
                f" from step {self.min_steps}, cap {self.max_steps} steps"
                + (f", counting only the checks from step {self.origin} (the end of the radius ramp)" if self.origin else "")
                + ("" if self.enabled else " (stopping off: fixed-length run, judged at its end)"))

    def record(self, steps_run: int) -> dict:
        """{"steps", "converged", "curve", "criterion"}: what verify.json keeps."""
        return {"steps": int(steps_run), "converged": bool(self.converged_now()),
                "stopped_early": self.stopped_at is not None,
                "curve": [{"step": s, "value": v} for s, v in zip(self.steps, self.values)],
                "criterion": self.criterion()}
