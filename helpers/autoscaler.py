"""Autoscaling: how many replicas to run, decided from the load, as data.

The decision is pure and small, like Ray Serve's ``autoscaling_policy.py`` and Knative's
KPA, and is testable with made-up times and loads:

- ``desired_replicas(load, target)`` — the ratio at the heart of both: the requests in
  flight (or waiting) across the service over what one replica should carry, rounded up
  and kept within ``[min_replicas, max_replicas]``.
- ``Autoscaler`` — that ratio over two windows of load samples:
  - the **stable window** (Knative: 60 s) averages out noise and drives normal decisions;
  - the **panic window** (Knative: 6 s) notices a jump: when it asks for at least
    ``panic_threshold`` × the current replicas, the autoscaler scales up at once and does
    not scale down again until a whole stable window has passed without such a jump;
  - **delays**: outside panic, a change must be wanted for ``upscale_delay_s`` or
    ``downscale_delay_s`` in a row before it is made (Ray Serve's ``upscale_delay_s`` and
    ``downscale_delay_s``), which stops a noisy load from flapping replicas up and down.

Every decision is a ``Decision`` record with its reason, so a run can be read back.
``helpers.traces`` replays a day of traffic against the same ``Autoscaler`` in simulation.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["AutoscalingConfig", "Decision", "desired_replicas", "scale_rule", "hold_changes",
           "Autoscaler"]


@dataclass(frozen=True)
class AutoscalingConfig:
    """The knobs, with Ray Serve's and Knative's names in the comments."""

    target_in_flight: float = 2.0   # per replica: Ray's target_ongoing_requests, Knative's target
    min_replicas: int = 1
    max_replicas: int = 4
    stable_window_s: float = 20.0   # Knative's stable window (60 s by default there)
    panic_window_s: float = 2.0     # Knative's panic window (10 % of the stable window)
    panic_threshold: float = 2.0    # Knative's panic threshold (200 %); inf: never panic
    upscale_delay_s: float = 0.0    # Ray's upscale_delay_s (30 s by default there)
    downscale_delay_s: float = 10.0 # Ray's downscale_delay_s (600 s by default there)
    warm_spares: int = 0            # replicas kept started but idle, to hide a cold start

    def __post_init__(self) -> None:
        problems = []
        if not self.target_in_flight > 0:
            problems.append(f"target_in_flight must be > 0, got {self.target_in_flight}")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            problems.append(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                            f"got {self.min_replicas}..{self.max_replicas}")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            problems.append(f"need 0 < panic_window_s <= stable_window_s, got "
                            f"{self.panic_window_s} and {self.stable_window_s}")
        if not self.panic_threshold > 1:
            problems.append(f"panic_threshold must be > 1, got {self.panic_threshold}")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0 or self.warm_spares < 0:
            problems.append("delays and warm_spares must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))


def desired_replicas(load: float, target_in_flight: float, min_replicas: int = 1,
                     max_replicas: int = 1_000_000) -> int:
    """Replicas for ``load`` requests in flight at ``target_in_flight`` each, rounded up
    (a replica short is a queue), within the bounds. No load asks for the minimum."""
    if not load >= 0 or not math.isfinite(load):
        raise ValueError(f"load must be finite and >= 0, got {load}")
    # The tolerance keeps 4.000000001 requests at 2 each from asking for a third replica.
    wanted = math.ceil(load / target_in_flight - 1e-9) if load > 0 else 0
    return max(min_replicas, min(max_replicas, wanted))


Wanted = tuple[int, float] | None
"""A change wanted but not yet made: (direction +1 up / -1 down, since when), or None."""


def scale_rule(stable_load: float, panic_load: float, current: int, panicking: bool,
               config: AutoscalingConfig) -> tuple[int, bool]:
    """Replicas the load asks for now, and whether this tick starts (or renews) a panic.

    Knative's KPA: the stable window's load sets the replicas; when the panic window's load
    asks for at least ``panic_threshold`` × the current replicas (and more than now), that is
    a panic — and while panicking, the replicas go up at once to the larger of the two asks
    and never down. Delays apply afterwards, outside panic (``hold_changes``)."""
    bounds = (config.min_replicas, config.max_replicas)
    stable = desired_replicas(stable_load, config.target_in_flight, *bounds)
    burst = desired_replicas(panic_load, config.target_in_flight, *bounds)
    starts_panic = burst > current and burst >= config.panic_threshold * max(current, 1)
    if starts_panic or panicking:
        return max(current, stable, burst), starts_panic
    return stable, False


def hold_changes(desired: int, current: int, wanted: Wanted, at_s: float,
                 config: AutoscalingConfig) -> tuple[int, Wanted, str]:
    """The delays: change to ``desired`` only once a change in that direction has been wanted
    for ``upscale_delay_s`` / ``downscale_delay_s`` in a row; a change of mind (the other
    direction, or no change) restarts the clock. Returns (replicas, wanted, reason)."""
    direction = (desired > current) - (desired < current)
    if direction == 0:
        return current, None, f"steady: the load asks for {desired}"
    if wanted is None or wanted[0] != direction:
        wanted = (direction, at_s)
    delay = config.upscale_delay_s if direction > 0 else config.downscale_delay_s
    waited, word = at_s - wanted[1], "up" if direction > 0 else "down"
    if waited >= delay:
        return desired, None, (f"scale {word} to {desired}: wanted for {waited:.1f} s "
                               f"(delay {delay:g} s)")
    return current, wanted, (f"wait: {desired} wanted for {waited:.1f} s of the {delay:g} s "
                             f"{word} delay")


@dataclass(frozen=True)
class Decision:
    """One tick of the autoscaler: what it saw, what it wanted, what it chose, and why."""

    at_s: float
    stable_load: float    # mean requests in flight over the stable window
    panic_load: float     # ... over the panic window
    desired: int          # what the load asks for now (bounded)
    replicas: int         # what to run from now on
    previous: int         # what ran before
    panic: bool
    reason: str

    @property
    def changed(self) -> bool:
        return self.replicas != self.previous


class Autoscaler:
    """Feed it ``observe(at_s, in_flight)`` samples; ``decide(at_s)`` returns a ``Decision``.

    Times are seconds on any clock that only goes forward (a simulation's or
    ``time.monotonic()``); nothing here reads a clock itself.
    """

    def __init__(self, config: AutoscalingConfig, replicas: int | None = None,
                 scale=scale_rule, hold=hold_changes) -> None:
        """``scale`` and ``hold`` are the two rules (with ``scale_rule``'s and
        ``hold_changes``'s signatures): lesson 07 plugs in yours."""
        self.config, self.scale, self.hold = config, scale, hold
        self.replicas = config.min_replicas if replicas is None else replicas
        if not config.min_replicas <= self.replicas <= config.max_replicas:
            raise ValueError(f"{self.replicas} replicas is outside "
                             f"{config.min_replicas}..{config.max_replicas}")
        self._samples: deque[tuple[float, float]] = deque()
        self._wanted: Wanted = None
        self._panic_until = -math.inf
        self.decisions: list[Decision] = []

    def observe(self, at_s: float, in_flight: float) -> None:
        """A load sample: requests in flight (or waiting) across every replica at ``at_s``."""
        if not in_flight >= 0:
            raise ValueError(f"in_flight must be >= 0, got {in_flight}")
        if self._samples and at_s < self._samples[-1][0]:
            raise ValueError(f"samples must come in time order: {at_s} after "
                             f"{self._samples[-1][0]}")
        self._samples.append((at_s, in_flight))
        while self._samples[0][0] <= at_s - self.config.stable_window_s:
            self._samples.popleft()

    def _mean_load(self, at_s: float, window_s: float) -> float:
        recent = [load for t, load in self._samples if t > at_s - window_s]
        return sum(recent) / len(recent) if recent else 0.0

    def decide(self, at_s: float) -> Decision:
        config, previous = self.config, self.replicas
        stable_load = self._mean_load(at_s, config.stable_window_s)
        panic_load = self._mean_load(at_s, config.panic_window_s)
        panicking = at_s < self._panic_until
        desired, starts_panic = self.scale(stable_load, panic_load, previous, panicking, config)
        if starts_panic:
            self._panic_until = at_s + config.stable_window_s  # (re)enter panic
        if at_s < self._panic_until:  # no delays in panic: the rule already never goes down
            self.replicas, self._wanted = desired, None
            reason = (f"panic until {self._panic_until:.1f} s: the last "
                      f"{config.panic_window_s:g} s of load ask for {desired}")
        else:
            self.replicas, self._wanted, reason = self.hold(desired, previous, self._wanted,
                                                            at_s, config)
        decision = Decision(at_s, stable_load, panic_load, desired, self.replicas, previous,
                            at_s < self._panic_until, reason)
        self.decisions.append(decision)
        return decision
