"""A user's environments, called in this process or spread over worker processes.

A simulator's step is often the slow part of a closed-loop evaluation (a
physics step, a rendered camera frame), and the evaluator steps the episodes
of a batch one after the other. :class:`WorkerEnvs` runs them in ``workers``
processes instead (spawned, so no state of this process is shared; daemonic,
so they end with it, and a simulator that starts processes of its own through
``multiprocessing`` cannot run in them): episode
``i`` of a batch lives in worker ``i % workers``, and each tick every worker
steps its episodes while the others step theirs. An episode's result depends
only on its environment, its seed and the actions it gets, so the results are
the same as :class:`LocalEnvs` gives, in this process.

Both check Gymnasium's API the same way (:class:`LocalEnvs` runs in each
worker) and reduce a step's ``info`` to what the evaluator reads, the success
flag, so that nothing unpicklable crosses a process boundary. An error in a
worker (the user's code, or the API broken) comes back as the same one-line
:class:`~edgevla.errors.EdgevlaError`; a worker that dies is one too.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Sequence

import numpy as np

from ..errors import EdgevlaError
from ..user_code import call_user, import_callable

SUCCESS_KEYS = ("is_success", "success")

# One step of one environment: (raw observation, terminated, truncated, the success its info said or None).
Step = tuple[Any, bool, bool, Any]


class LocalEnvs:
    """Environments of the factory ``ref`` in this process, made as needed, by index."""

    def __init__(self, ref: str, what: str):
        self.what = what
        self._factory = import_callable(ref, what)
        self._envs: list[Any] = []

    def ensure(self, n: int) -> None:
        while len(self._envs) < n:
            env = call_user(self._factory, f"{self.what}: the factory")
            if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
                raise EdgevlaError(f"{self.what}: the factory returned {type(env).__name__}, which has no reset() "
                                   "and step(): expected an environment with Gymnasium's API")
            self._envs.append(env)

    def reset(self, seeds: Sequence[int]) -> list[Any]:
        """Environment ``i`` reset with ``seeds[i]``: its first raw observation."""
        self.ensure(len(seeds))
        out = []
        for env, seed in zip(self._envs, seeds):
            got = call_user(lambda: env.reset(seed=int(seed)), f"{self.what}: reset()")
            if not (isinstance(got, tuple) and len(got) == 2):
                raise EdgevlaError(f"{self.what}: reset(seed=...) must return (observation, info) as Gymnasium's "
                                   "API does")
            out.append(got[0])
        return out

    def step(self, actions: Sequence[tuple[int, np.ndarray]]) -> list[Step]:
        """Environment ``i`` stepped with its action, for each ``(i, action)``."""
        out = []
        for i, action in actions:
            got = call_user(self._envs[i].step, f"{self.what}: step()", action)
            if not (isinstance(got, tuple) and len(got) == 5):
                raise EdgevlaError(f"{self.what}: step() must return (observation, reward, terminated, truncated, "
                                   "info) as Gymnasium's API does")
            obs, _, terminated, truncated, info = got
            said = next((info[k] for k in SUCCESS_KEYS if isinstance(info, dict) and k in info), None)
            out.append((obs, bool(terminated), bool(truncated), None if said is None else bool(said)))
        return out

    def hold(self, indices: Sequence[int]) -> list[np.ndarray | None]:
        """Each environment's ``hold_action()``, None where it has none."""
        out = []
        for i in indices:
            hold = _hold_action(self._envs[i])
            out.append(None if hold is None else
                       np.asarray(call_user(hold, f"{self.what}: hold_action()"), np.float64).reshape(-1))
        return out

    def space(self) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """The first environment's action bounds (None where it has none) and action dtype."""
        space = getattr(self._envs[0], "action_space", None)
        low, high = getattr(space, "low", None), getattr(space, "high", None)
        if low is None or high is None:
            low = high = None
        else:
            low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        return low, high, np.dtype(getattr(space, "dtype", None) or np.float32).str

    def close(self) -> None:
        envs, self._envs = self._envs, []
        for env in envs:
            close = getattr(env, "close", None)
            if callable(close):
                call_user(close, f"{self.what}: close()")


class WorkerEnvs:
    """The same calls as :class:`LocalEnvs`, on ``workers`` spawned processes; environment ``i`` lives in worker
    ``i % workers``."""

    def __init__(self, ref: str, what: str, workers: int):
        self.what, self.workers = what, workers
        self._space: tuple[np.ndarray | None, np.ndarray | None, str] | None = None
        ctx = multiprocessing.get_context("spawn")
        self._pipes, self._procs = [], []
        for _ in range(workers):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs, ref, what), daemon=True, name="edgevla-env")
            proc.start()
            theirs.close()
            self._pipes.append(mine)
            self._procs.append(proc)

    def _call(self, requests: dict[int, tuple[str, Any]]) -> dict[int, Any]:
        """Send each worker its request, then gather the replies: the workers run side by side."""
        for w, request in requests.items():
            self._pipes[w].send(request)
        replies, error = {}, None
        for w in requests:  # every reply read, an error's too, so that none is left for the next call
            try:
                status, value = self._pipes[w].recv()
            except (EOFError, OSError):
                self._procs[w].join(timeout=5)  # reaped, so that its exit code is known
                code = self._procs[w].exitcode
                status, value = "error", (f"{self.what}: environment worker {w} died"
                                          + (f" (exit code {code})" if code is not None else ""))
            if status == "error":
                error = error or value
            replies[w] = value
        if error is not None:
            raise EdgevlaError(error)
        return replies

    def _spread(self, items: Sequence[tuple[int, Any]]) -> dict[int, list[tuple[int, Any]]]:
        """``(i, x)`` items by worker, with ``i`` as the worker's own index."""
        by_worker: dict[int, list[tuple[int, Any]]] = {}
        for i, x in items:
            by_worker.setdefault(i % self.workers, []).append((i // self.workers, x))
        return by_worker

    def _gather(self, replies: dict[int, list[Any]], order: Sequence[int]) -> list[Any]:
        """Replies back in the order of ``order`` (global indices), each worker's in its own order."""
        taken = {w: iter(r) for w, r in replies.items()}
        return [next(taken[i % self.workers]) for i in order]

    def reset(self, seeds: Sequence[int]) -> list[Any]:
        spread = self._spread(list(enumerate(seeds)))
        replies = self._call({w: ("reset", [s for _, s in items]) for w, items in spread.items()})
        return self._gather(replies, range(len(seeds)))

    def step(self, actions: Sequence[tuple[int, np.ndarray]]) -> list[Step]:
        spread = self._spread(actions)
        replies = self._call({w: ("step", items) for w, items in spread.items()})
        return self._gather(replies, [i for i, _ in actions])

    def hold(self, indices: Sequence[int]) -> list[np.ndarray | None]:
        spread = self._spread([(i, None) for i in indices])
        replies = self._call({w: ("hold", [i for i, _ in items]) for w, items in spread.items()})
        return self._gather(replies, indices)

    def space(self) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        """Asked of worker 0 once (every batch reads it; the environments are of one factory)."""
        if self._space is None:
            self._space = self._call({0: ("space", None)})[0]
        return self._space

    def close(self) -> None:
        for pipe, proc in zip(self._pipes, self._procs):
            try:
                pipe.send(("close", None))
                pipe.recv()
            except (EOFError, OSError, BrokenPipeError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            pipe.close()
        self._pipes, self._procs = [], []


def _serve(pipe, ref: str, what: str) -> None:
    """A worker: a :class:`LocalEnvs` answering ``(call, argument)`` requests until ``close``."""
    envs: LocalEnvs | None = None
    while True:
        try:
            call, arg = pipe.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        try:
            if envs is None:
                envs = LocalEnvs(ref, what)
            if call == "close":
                envs.close()
                pipe.send(("ok", None))
                return
            method = getattr(envs, call)
            pipe.send(("ok", method() if arg is None else method(arg)))
        except EdgevlaError as e:
            pipe.send(("error", str(e)))
        except Exception as e:  # noqa: BLE001 - anything else is still one line for the parent
            pipe.send(("error", f"{what}: {type(e).__name__}: {e}"))


def _hold_action(env: Any):
    """The environment's ``hold_action`` (through Gymnasium's wrappers, which no longer forward attributes)."""
    get = getattr(env, "get_wrapper_attr", None)
    try:
        found = get("hold_action") if callable(get) else getattr(env, "hold_action")
    except AttributeError:
        return None
    return found if callable(found) else None
