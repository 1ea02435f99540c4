"""A 2D tabletop reaching task: see the table, read the instruction, move there.

The table is the unit square. Each scene holds ``n_objects`` objects, each a
distinct colour and a random shape; the instruction names one of them by
colour and shape ("reach the red circle"). The robot is an end-effector point
moved by clipped position deltas. An episode succeeds when the end-effector
comes within ``success_radius`` of the named object's centre.

The task needs all three inputs a VLA policy has: the object positions exist
only in the camera image, which object to reach exists only in the
instruction, and the end-effector position is the proprioceptive state (it is
also drawn in the image, as a robot's camera would see its own gripper).

Everything is vectorized over a batch of environments with NumPy and seeded,
so a dataset or an evaluation is reproducible bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.15, 0.75),
}
SHAPES: tuple[str, ...] = ("square", "circle", "diamond")
VERBS: tuple[str, ...] = ("reach", "touch", "go to")

BACKGROUND = (0.82, 0.78, 0.70)
EFFECTOR_COLOUR = (0.05, 0.05, 0.05)


@dataclass(frozen=True)
class TaskConfig:
    image_size: int = 32
    n_cameras: int = 1
    n_objects: int = 3
    object_radius: float = 0.075
    min_separation: float = 0.24
    success_radius: float = 0.06
    max_step: float = 0.08  # largest end-effector move per control step
    max_steps: int = 30
    chunk_size: int = 8
    text_len: int = 6

    @property
    def action_dim(self) -> int:
        return 2

    @property
    def state_dim(self) -> int:
        return 2

    # The closed-loop task's interface (a user's simulator has it too: edgevla.task.user_env.EnvTask).
    expert = True  # the splits carry the scripted expert's actions
    name = "tabletop"

    @property
    def key(self) -> tuple:
        return ("tabletop", self)

    def close(self) -> None:
        """Nothing to release: the episodes are NumPy arrays."""

    def batch_env(self, n: int, seed: int) -> "TabletopEnv":
        return TabletopEnv(self, n, seed)

    def split(self, name: str, n: int, seed: int = 0):
        """A fixed set of ``n`` demonstrations of split ``name`` (calibration, heldout)."""
        from .dataset import fixed_split

        return fixed_split(self, name, n, seed)

    def stream(self, batch: int, seed: int = 0):
        """Endless seeded training batches."""
        from .dataset import stream

        return stream(self, batch, seed)


class Vocabulary:
    """The task's own tiny word-level vocabulary (nothing is downloaded)."""

    PAD = "<pad>"
    UNK = "<unk>"

    def __init__(self) -> None:
        words = [self.PAD, self.UNK, "the"]
        for verb in VERBS:
            words += [w for w in verb.split() if w not in words]
        words += list(COLOURS) + list(SHAPES)
        self.words = tuple(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, length: int) -> np.ndarray:
        ids = [self.index.get(w, self.index[self.UNK]) for w in text.lower().split()][:length]
        return np.array(ids + [0] * (length - len(ids)), dtype=np.int64)

    def decode(self, ids: np.ndarray) -> str:
        return " ".join(self.words[int(i)] for i in ids if int(i) != 0)


VOCAB = Vocabulary()


@dataclass
class Scenes:
    """A batch of scenes: object layout, the target, the instruction."""

    positions: np.ndarray  # (B, n_objects, 2)
    colours: np.ndarray  # (B, n_objects) index into COLOURS
    shapes: np.ndarray  # (B, n_objects) index into SHAPES
    target: np.ndarray  # (B,) index of the named object
    instruction: np.ndarray  # (B, text_len) int64 token ids
    texts: list[str]

    @property
    def target_xy(self) -> np.ndarray:
        return self.positions[np.arange(len(self.target)), self.target]


def sample_scenes(cfg: TaskConfig, batch: int, rng: np.random.Generator) -> Scenes:
    positions = np.empty((batch, cfg.n_objects, 2))
    lo, hi = 0.12, 0.88
    for b in range(batch):  # rejection sampling keeps objects apart
        while True:
            p = rng.uniform(lo, hi, size=(cfg.n_objects, 2))
            d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(cfg.n_objects)
            if d.min() >= cfg.min_separation:
                positions[b] = p
                break
    colours = np.stack([rng.permutation(len(COLOURS))[: cfg.n_objects] for _ in range(batch)])
    shapes = rng.integers(0, len(SHAPES), size=(batch, cfg.n_objects))
    target = rng.integers(0, cfg.n_objects, size=batch)
    verbs = rng.integers(0, len(VERBS), size=batch)
    names = list(COLOURS)
    texts = [f"{VERBS[v]} the {names[colours[b, t]]} {SHAPES[shapes[b, t]]}"
             for b, (t, v) in enumerate(zip(target, verbs))]
    instruction = np.stack([VOCAB.encode(t, cfg.text_len) for t in texts])
    return Scenes(positions, colours, shapes, target, instruction, texts)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size
    return np.meshgrid(c, c, indexing="xy")  # x varies along columns, y along rows


def render(cfg: TaskConfig, scenes: Scenes, effector: np.ndarray, camera: int = 0) -> np.ndarray:
    """RGB images (B, 3, S, S) in [0, 1]: a top view of the table.

    Camera 0 sees the whole table; further cameras see it shifted and zoomed
    (a second viewpoint with the same content), so multi-camera policies get
    genuinely different images of one scene.
    """
    size = cfg.image_size
    gx, gy = _grid(size)
    if camera:
        zoom = 1.0 + 0.15 * camera
        gx, gy = (gx - 0.5) / zoom + 0.5 + 0.04 * camera, (gy - 0.5) / zoom + 0.5 - 0.04 * camera
    batch = len(scenes.target)
    img = np.empty((batch, size, size, 3))
    img[:] = BACKGROUND
    palette = np.array(list(COLOURS.values()))
    r = cfg.object_radius
    for k in range(cfg.n_objects):
        dx = gx[None] - scenes.positions[:, k, 0, None, None]
        dy = gy[None] - scenes.positions[:, k, 1, None, None]
        shape = scenes.shapes[:, k, None, None]
        inside = np.where(
            shape == 0, np.maximum(abs(dx), abs(dy)) <= r * 0.85,
            np.where(shape == 1, dx * dx + dy * dy <= r * r, abs(dx) + abs(dy) <= r * 1.15))
        img[inside] = palette[np.broadcast_to(scenes.colours[:, k, None, None], inside.shape)[inside]]
    # The end-effector: a small dark cross drawn on top.
    ex = gx[None] - effector[:, 0, None, None]
    ey = gy[None] - effector[:, 1, None, None]
    arm = 1.5 / size
    cross = ((abs(ex) <= arm * 1.4) & (abs(ey) <= arm * 0.45)) | ((abs(ey) <= arm * 1.4) & (abs(ex) <= arm * 0.45))
    img[cross] = EFFECTOR_COLOUR
    return np.ascontiguousarray(img.transpose(0, 3, 1, 2), dtype=np.float32)


class TabletopEnv:
    """A batch of tabletop episodes stepped together."""

    def __init__(self, cfg: TaskConfig, batch: int, seed: int):
        self.cfg = cfg
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> dict[str, np.ndarray]:
        cfg, rng = self.cfg, self.rng
        self.scenes = sample_scenes(cfg, self.batch, rng)
        # Start the end-effector well away from the target.
        eff = rng.uniform(0.05, 0.95, size=(self.batch, 2))
        far = np.linalg.norm(eff - self.scenes.target_xy, axis=-1) >= 0.3
        while not far.all():
            eff[~far] = rng.uniform(0.05, 0.95, size=((~far).sum(), 2))
            far = np.linalg.norm(eff - self.scenes.target_xy, axis=-1) >= 0.3
        self.effector = eff
        self.steps = np.zeros(self.batch, dtype=np.int64)
        self.done = np.zeros(self.batch, dtype=bool)
        self.success = np.zeros(self.batch, dtype=bool)
        return self.observe()

    def observe(self) -> dict[str, np.ndarray]:
        cams = [render(self.cfg, self.scenes, self.effector, c) for c in range(self.cfg.n_cameras)]
        return {
            "image": np.stack(cams, axis=1),
            "instruction": self.scenes.instruction.copy(),
            "state": self.effector.astype(np.float32),
        }

    def hold(self) -> np.ndarray:
        """The action while no chunk is in: stay."""
        return np.zeros((self.batch, 2))

    def limit(self, action: np.ndarray) -> np.ndarray:
        return clip_norm(action, self.cfg.max_step)

    def distance(self) -> np.ndarray:
        return np.linalg.norm(self.effector - self.scenes.target_xy, axis=-1)

    def step(self, action: np.ndarray) -> None:
        """Apply one action (B, 2) to the episodes still running."""
        step = clip_norm(np.asarray(action, dtype=np.float64), self.cfg.max_step)
        live = ~self.done
        self.effector[live] = np.clip(self.effector[live] + step[live], 0.0, 1.0)
        self.steps[live] += 1
        reached = self.distance() <= self.cfg.success_radius
        self.success |= live & reached
        self.done |= reached | (self.steps >= self.cfg.max_steps)


def clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    """Scale each row of ``v`` down so its Euclidean norm is at most ``limit``."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v * np.minimum(1.0, limit / np.maximum(n, 1e-12))


def expert_chunk(cfg: TaskConfig, effector: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
    """The scripted expert's next ``chunk_size`` actions (B, H, 2), open loop.

    The expert moves straight at the target at full speed and stops on it.
    """
    pos = effector.astype(np.float64).copy()
    out = np.empty((len(pos), cfg.chunk_size, 2))
    for h in range(cfg.chunk_size):
        a = clip_norm(target_xy - pos, cfg.max_step)
        out[:, h] = a
        pos = np.clip(pos + a, 0.0, 1.0)
    return out.astype(np.float32)
