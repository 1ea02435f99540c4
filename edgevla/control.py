"""A chunked policy in the robot's control loop: one action per control tick.

VLA policies (ACT, pi0, edgevla's reference policies) answer a query with a
*chunk* of H future actions. A robot runs them receding-horizon: it executes
``execute`` actions of a chunk, one per tick of its control loop, then uses a
newer chunk. A query takes time: one that does not end within its tick's
period misses the commands of the ticks that pass before its chunk is in (a
45 ms inference at 50 Hz misses two: :func:`latency_ticks`).
:class:`ChunkController` schedules the queries:

* **synchronous** (``lead=0``): query when the chunk is spent. The robot holds
  while the policy thinks, so the world it sees is still the world the chunk
  was planned for, and the chunk is used from its first action.
* **asynchronous** (``lead=L``): query L ticks before the chunk is spent and go
  on executing it meanwhile. The new chunk was planned from where the robot
  stood at the query, so the actions for the ticks the robot has since moved
  through are skipped: it is used from action ``moved``, the number of actions
  executed since the query. ``lead`` = the latency in ticks hides the latency
  whenever ``execute + lead <= H``.

:class:`TemporalEnsemble` is ACT's temporal ensembling: a query as often as the
policy answers, and each tick's action the weighted mean of every chunk's
prediction for that tick.

A tick with no action to give (the first chunk is not in yet, or the next one
is late) returns ``None``: *hold*. What holding means is the robot's own
business (no motion for delta actions, the last setpoint for absolute ones).

Where a query's chunk comes from is the controller's ``inference``:

* :class:`ThreadedInference` (default): the policy runs in a worker thread and
  its chunk is used at the first tick after it is done; the control loop never
  waits longer than ``step(wait=...)`` says. edgevla's native kernels, ONNX
  Runtime and PyTorch release the GIL while they compute.
* :class:`SimulatedLatency` (``ticks``): computed at once, handed over
  ``ticks`` ticks later. The closed-loop evaluator's deterministic model of a
  policy that takes that long (``edgevla eval --latency-ms``);
  :class:`SampledLatency` draws each query's ticks from measured latencies
  instead (``edgevla eval --latency-from``: the jitter too).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np

from .errors import EdgevlaError

Observation = Mapping[str, np.ndarray]
# obs -> actions (batch, H, action_dim); a controller takes any such callable.
ChunkPolicy = Callable[[Observation], np.ndarray]
# The observation, or a function returning it, called only when a query starts
# (a camera frame need not be rendered or copied on the ticks between queries).
ObservationSource = Union[Observation, Callable[[], Observation]]


def _check_whole(value: Any, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EdgevlaError(f"{what}, got {value!r}")


class Inference(Protocol):
    """Runs a query and says when its chunk may be used."""

    def launch(self, policy: ChunkPolicy, obs: Observation, tick: int) -> Any: ...

    def poll(self, handle: Any, tick: int, wait: float | None) -> np.ndarray | None:
        """The chunk if it may be used at ``tick``, else None; ``wait``: seconds to wait for it (None: until
        it is done)."""

    def close(self) -> None: ...


class _HandedOverLater:
    """A chunk computed at once and handed over :meth:`delay` control ticks after its query."""

    def delay(self) -> int:
        """The ticks the chunk of the query launched now comes after it."""
        raise NotImplementedError

    def launch(self, policy: ChunkPolicy, obs: Observation, tick: int) -> tuple[int, np.ndarray]:
        return tick + self.delay(), np.asarray(policy(obs))

    def poll(self, handle: tuple[int, np.ndarray], tick: int, wait: float | None) -> np.ndarray | None:
        ready_at, chunk = handle
        return chunk if tick >= ready_at else None

    def close(self) -> None:
        pass


class SimulatedLatency(_HandedOverLater):
    """Each chunk computed at once and handed over ``ticks`` control ticks after its query."""

    def __init__(self, ticks: int) -> None:
        _check_whole(ticks, 0, "latency must be a whole number of ticks >= 0")
        self.ticks = ticks

    def delay(self) -> int:
        return self.ticks


class SampledLatency(_HandedOverLater):
    """Each query's chunk handed over a number of ticks drawn (seeded, with replacement) from ``draws``: measured
    latencies in ticks, so that a latency's jitter is simulated and not only its typical value."""

    def __init__(self, draws: Sequence[int], seed: int = 0) -> None:
        draws = list(draws)
        if not draws:
            raise EdgevlaError("no latencies to draw from")
        for ticks in draws:
            _check_whole(ticks, 0, "latencies to draw from must be whole numbers of ticks >= 0")
        self.draws = np.asarray(draws, dtype=np.int64)
        self._rng = np.random.default_rng(seed)

    def delay(self) -> int:
        return int(self.draws[self._rng.integers(len(self.draws))])


class ThreadedInference:
    """The policy in one worker thread; a chunk is used at the first tick after it is done."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgevla-policy")

    def launch(self, policy: ChunkPolicy, obs: Observation, tick: int) -> Future:
        # The observation is copied: the robot's buffers may change under a running query.
        frozen = {name: np.array(value, copy=True) for name, value in obs.items()}
        return self._pool.submit(policy, frozen)

    def poll(self, handle: Future, tick: int, wait: float | None) -> np.ndarray | None:
        if wait is None or wait > 0:
            wait_futures([handle], timeout=wait)
        if not handle.done():
            return None
        return np.asarray(handle.result())  # re-raises the policy's exception in the control loop

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class ControlStats:
    """What the controller did since it was made or reset."""

    ticks: int = 0
    queries: int = 0  # chunks asked for
    chunks: int = 0  # chunks that arrived and were used
    held: int = 0  # ticks that returned None
    held_at_start: int = 0  # of those, before the first chunk arrived
    delay_ticks_sum: int = 0  # over arrived chunks: ticks from query to use
    max_delay_ticks: int = 0

    @property
    def mean_delay_ticks(self) -> float:
        return self.delay_ticks_sum / self.chunks if self.chunks else 0.0

    def add(self, other: "ControlStats") -> None:
        """Count ``other``'s run too (the episodes of one evaluation, each with a controller of its own)."""
        for name in ("ticks", "queries", "chunks", "held", "held_at_start", "delay_ticks_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_delay_ticks = max(self.max_delay_ticks, other.max_delay_ticks)

    def to_dict(self) -> dict[str, float]:
        return {"ticks": self.ticks, "queries": self.queries, "chunks": self.chunks, "held": self.held,
                "held_at_start": self.held_at_start, "mean_delay_ticks": self.mean_delay_ticks,
                "max_delay_ticks": self.max_delay_ticks}


class _ChunkLoop:
    """What every schedule shares: one query at a time through ``inference``, a tick count, the stats.

    A schedule says when it wants a query (:meth:`_wants_query`), whether it
    has nothing for this tick without the running one (:meth:`_starving`),
    what to do with an arrived chunk (:meth:`_arrived`) and which action a
    tick gets (:meth:`_action`)."""

    def __init__(self, policy: ChunkPolicy, inference: Inference | None) -> None:
        self.policy = policy
        self.inference: Inference = inference if inference is not None else ThreadedInference()
        self.stats = ControlStats()
        self._closed = False
        self._reset_state()

    def _reset_state(self) -> None:
        self._tick = 0
        self._pending: Any = None  # the running query's handle
        self._pending_since = 0  # its tick

    def step(self, obs: ObservationSource, wait: float | None = 0.0) -> np.ndarray | None:
        """The action for this tick, or ``None`` to hold.

        ``obs`` (or the function returning it) is read only when a query
        starts. ``wait``: seconds this tick may wait for a running query when
        it has no action otherwise (threaded inference; give it what is left
        of the tick's budget); ``None`` waits until the chunk is in, never
        holding after the first chunk (a synchronous loop that blocks).
        """
        if self._closed:
            raise EdgevlaError("the controller is closed")
        tick = self._tick
        if self._pending is None and self._wants_query():
            observation = obs() if callable(obs) else obs
            self._pending = self.inference.launch(self.policy, observation, tick)
            self._pending_since = tick
            self._launched()
            self.stats.queries += 1
        if self._pending is not None:
            chunk = self.inference.poll(self._pending, tick, wait if self._starving() else 0.0)
            if chunk is not None:
                if chunk.ndim != 3:
                    raise EdgevlaError(f"the policy returned actions of shape {chunk.shape}; a controller "
                                       "needs (batch, chunk_size, action_dim)")
                self._arrived(chunk)
                self._pending = None
                delay = tick - self._pending_since
                self.stats.chunks += 1
                self.stats.delay_ticks_sum += delay
                self.stats.max_delay_ticks = max(self.stats.max_delay_ticks, delay)
        self._tick = tick + 1
        self.stats.ticks += 1
        action = self._action()
        if action is None:
            self.stats.held += 1
            self.stats.held_at_start += self.stats.chunks == 0
        return action

    def _wants_query(self) -> bool:
        raise NotImplementedError

    def _launched(self) -> None:
        pass

    def _starving(self) -> bool:
        raise NotImplementedError

    def _arrived(self, chunk: np.ndarray) -> None:
        raise NotImplementedError

    def _action(self) -> np.ndarray | None:
        raise NotImplementedError

    def reset(self) -> None:
        """A new episode: the chunks in hand are dropped, a running query's result is waited for and dropped."""
        try:
            if self._pending is not None:
                self.inference.poll(self._pending, self._tick + 2**62, None)
        finally:
            self._reset_state()
            self.stats = ControlStats()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.inference.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChunkController(_ChunkLoop):
    """Receding horizon: ``execute`` actions of each chunk, one per control tick.

    ``policy(obs)`` returns actions of shape ``(batch, H, action_dim)``;
    :meth:`step` returns the ``(batch, action_dim)`` action for this tick, or
    ``None`` to hold. ``execute`` actions of each chunk are used (fewer when
    an asynchronous chunk arrives late in its horizon), and the next query
    starts when ``lead`` of them remain (module docstring).
    """

    def __init__(self, policy: ChunkPolicy, *, execute: int, lead: int = 0,
                 inference: Inference | None = None) -> None:
        _check_whole(execute, 1, "execute must be an integer >= 1")
        _check_whole(lead, 0, "lead must be an integer >= 0")
        self.execute = execute
        self.lead = lead
        super().__init__(policy, inference)

    def _reset_state(self) -> None:
        super()._reset_state()
        self._chunk: np.ndarray | None = None
        self._next = 0  # index in _chunk of the next action
        self._end = 0  # one past the last action of _chunk to use
        self._moved = 0  # actions given since the running query started

    def _wants_query(self) -> bool:
        return self._end - self._next <= self.lead

    def _launched(self) -> None:
        self._moved = 0

    def _starving(self) -> bool:
        return self._next >= self._end

    def _arrived(self, chunk: np.ndarray) -> None:
        horizon = chunk.shape[1]
        if self.execute > horizon:
            raise EdgevlaError(f"execute = {self.execute} actions of a chunk of {horizon}")
        start = min(self._moved, horizon)  # the actions the robot moved through since the query
        self._chunk, self._next, self._end = chunk, start, min(start + self.execute, horizon)

    def _action(self) -> np.ndarray | None:
        if self._next >= self._end:
            return None
        action = self._chunk[:, self._next]
        self._next += 1
        self._moved += 1
        return action


class TemporalEnsemble(_ChunkLoop):
    """ACT's temporal ensembling: a new query as soon as the last one is in, and each tick's action the
    weighted mean of what every chunk in hand predicted for it.

    A chunk's actions are indexed as the receding-horizon schedule indexes
    them: its action i is the one for after the robot has moved i ticks since
    the query (time while holding does not count). The predictions for a tick
    are weighted ``exp(-m * i)``, i = 0 for the oldest chunk's, as Zhao et al.
    (ACT, 2023) do: a small ``m`` keeps the older plans' say, so the motion
    stays smooth; a larger one follows the newest observation. A tick that no
    chunk covers holds.
    """

    def __init__(self, policy: ChunkPolicy, *, m: float = 0.01, inference: Inference | None = None) -> None:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (m >= 0 and math.isfinite(m)):
            raise EdgevlaError(f"the ensemble weight m must be a finite number >= 0, got {m!r}")
        self.m = float(m)
        super().__init__(policy, inference)

    def _reset_state(self) -> None:
        super()._reset_state()
        self._moved = 0  # actions given since the start
        self._moved_at_query = 0  # ... when the running query started
        self._chunks: list[tuple[int, np.ndarray]] = []  # (_moved at its query, chunk), oldest first

    def _wants_query(self) -> bool:
        return True

    def _launched(self) -> None:
        self._moved_at_query = self._moved

    def _covering(self) -> list[np.ndarray]:
        return [chunk[:, self._moved - at] for at, chunk in self._chunks if self._moved - at < chunk.shape[1]]

    def _starving(self) -> bool:
        return not self._covering()

    def _arrived(self, chunk: np.ndarray) -> None:
        self._chunks.append((self._moved_at_query, chunk))

    def _action(self) -> np.ndarray | None:
        self._chunks = [(at, c) for at, c in self._chunks if self._moved - at < c.shape[1]]  # the rest are spent
        if not self._chunks:
            return None
        predictions = np.stack(self._covering())  # (chunks, batch, action_dim), oldest first
        weights = np.exp(-self.m * np.arange(len(predictions)))
        self._moved += 1
        return np.einsum("k,kba->ba", weights / weights.sum(), predictions)


@dataclass
class PacedLoop:
    """A controller run at its control rate in real time (:func:`run_paced`)."""

    rate_hz: float
    stats: ControlStats
    command_ms: list[float]  # per tick: from the tick's start to its step() returning (the command going out)
    overran: int = 0  # ticks whose step and command took longer than the period

    def add(self, other: "PacedLoop") -> None:
        """Count ``other``'s ticks too (the episodes of one real-time evaluation)."""
        self.stats.add(other.stats)
        self.command_ms += other.command_ms
        self.overran += other.overran

    def to_dict(self) -> dict[str, Any]:
        out = np.asarray(self.command_ms)
        return {"rate_hz": self.rate_hz, **self.stats.to_dict(), "overran": self.overran,
                "command_ms": {"p50": float(np.percentile(out, 50)), "p99": float(np.percentile(out, 99)),
                               "max": float(out.max())}}


def run_paced(controller: _ChunkLoop, observe: Callable[[], Observation], rate_hz: float, ticks: int, *,
              command: Callable[[np.ndarray | None], bool] | None = None,
              clock: Callable[[], float] = time.perf_counter,
              sleep: Callable[[float], None] = time.sleep) -> PacedLoop:
    """Run ``controller`` for ``ticks`` ticks of a ``rate_hz`` loop in real time, as the robot's loop does.

    Each tick starts one period after the last; its step may wait for a running query until the tick's
    period ends, then holds. A tick that overran its period moves the grid: the next starts at once, not
    to catch up. ``observe`` is called when a query starts. ``command``, the robot's side of a tick, is
    given each step's action (``None``: hold) within the tick, and ends the loop early by returning True.
    """
    _check_whole(ticks, 1, "ticks must be an integer >= 1")
    if not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise EdgevlaError(f"control rate must be a positive number of Hz, got {rate_hz!r}")
    period = 1.0 / rate_hz
    command_ms: list[float] = []
    overran = 0
    reserve = 0.0  # of each tick, for the command: the longest one so far
    due = clock()
    for _ in range(ticks):
        now = clock()
        if due > now:
            sleep(due - now)
        action = controller.step(observe, wait=max(0.0, due + period - reserve - clock()))
        stepped = clock()
        command_ms.append((stepped - due) * 1000.0)
        over = command is not None and command(action)
        done = clock()
        reserve = max(reserve, done - stepped)
        overran += done > due + period
        due = max(due + period, done)
        if over:
            break
    return PacedLoop(rate_hz=rate_hz, stats=controller.stats, command_ms=command_ms, overran=overran)


def latency_ticks(latency_ms: float, control_rate_hz: float) -> int:
    """The control ticks whose command goes out before a query's chunk is in, for a query of ``latency_ms``.

    A loop observes, queries and commands within one period, so a query that
    ends inside its tick's period costs no tick (a met deadline); one of 25 ms
    at 50 Hz misses one command, one of 45 ms two.
    """
    if not (latency_ms >= 0 and math.isfinite(latency_ms)):
        raise EdgevlaError(f"latency must be a finite number of milliseconds >= 0, got {latency_ms!r}")
    if not (control_rate_hz > 0 and math.isfinite(control_rate_hz)):
        raise EdgevlaError(f"control rate must be a positive number of Hz, got {control_rate_hz!r}")
    # A hair of tolerance, so that 20 ms at 50 Hz is one whole period and not a little more by rounding.
    periods = math.ceil(latency_ms * control_rate_hz / 1000.0 - 1e-9)
    return max(0, periods - 1)
