"""The tabletop reaching task (environment, scripted expert, datasets), a user's simulator in its place
(:mod:`.user_env`), and the closed-loop evaluation of either."""

from .dataset import Batch, action_statistics, fixed_split, make_batch, stream
from .evaluate import ClosedLoopTask, EvalResult, evaluate, random_policy
from .tabletop import VOCAB, TabletopEnv, TaskConfig, expert_chunk, render, sample_scenes

__all__ = [
    "Batch", "ClosedLoopTask", "EvalResult", "TabletopEnv", "TaskConfig", "VOCAB", "action_statistics", "evaluate",
    "expert_chunk", "fixed_split", "make_batch", "random_policy", "render", "sample_scenes", "stream",
]
