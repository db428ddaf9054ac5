"""PruneNet's learned slicing policy: score FFN channels from weights, train with REINFORCE.

The policy sees one matrix per FFN, the "FFN1" matrix [channels, hidden] (the gate
rows of a gated FFN, as in the reference code for LLaMA; the fc1 rows of a plain
one; with the preceding norm's scale folded in when there is one). It projects every
row through a learned W_inter (W' = W1 W_inter^T + b, [channels, width]) and turns
each projected row into a keep-probability p = sigmoid(.) with a learned quadratic
read-out (sign-free, so a row and its negation score alike). Nothing about the
number of channels is learned, so one policy fits every FFN of a given hidden size:
other layers, other ratios, other models ("prune once").

Training (REINFORCE, as in the paper): per episode and layer, draw a relaxed
Bernoulli keep-score for every channel, keep the top (1 - ratio) of them, and reward
the action with minus the KS distance between the singular values of the original
and the sliced FFN1 matrix. Ratios are drawn per episode so the policy does not
specialise on one. Everything is seeded, single-threaded and uses deterministic
torch ops, so the same inputs give the same policy bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgefold import progress
from edgefold.errors import EdgefoldError
from edgefold.hashing import sha256_file
from edgefold.passes.slice.spectrum import ks_distance, singular_values

POLICY_FORMAT = "edgefold-slice-policy/1"


@dataclass
class LayerMatrix:
    """One FFN as the policy sees it."""

    name: str
    matrix: np.ndarray  # FFN1 [channels, hidden], float32
    spectrum: np.ndarray = field(default=None)  # type: ignore[assignment]  # its singular values (float64)

    def __post_init__(self):
        self.matrix = np.ascontiguousarray(self.matrix, dtype=np.float32)
        if self.spectrum is None:
            self.spectrum = singular_values(self.matrix, method="gram")

    @property
    def channels(self) -> int:
        """Number of channels (rows of the FFN1 matrix)."""
        return self.matrix.shape[0]


def sliced_ks(layer: LayerMatrix, keep: np.ndarray, *, rescale: bool = True) -> float:
    """KS distance between the layer's spectrum and that of its rows `keep`.

    With `rescale`, the sliced matrix is scaled by sqrt(n / k) first: dropping rows at
    random shrinks every singular value by about that factor, and we want the shape of
    the spectrum kept, not to punish every slice for having fewer rows.
    """
    kept = layer.matrix[np.sort(keep)]
    values = singular_values(kept, method="gram")
    if rescale:
        values = values * math.sqrt(layer.channels / max(len(keep), 1))
    return ks_distance(layer.spectrum, values)


class SlicePolicy(torch.nn.Module):
    """keep-probability per row of an FFN1 matrix; parameters depend only on `hidden`."""

    def __init__(self, hidden: int, width: int = 64):
        super().__init__()
        self.hidden, self.width = hidden, width
        self.inter = torch.nn.Linear(hidden, width)  # W_inter
        self.quadratic = torch.nn.Parameter(torch.zeros(width))
        self.offset = torch.nn.Parameter(torch.zeros(1))
        with torch.no_grad():
            self.inter.weight.normal_(0.0, 1.0)
            self.inter.bias.zero_()

    def logits(self, matrix: torch.Tensor) -> torch.Tensor:
        """Keep logit per row of an FFN1 matrix [channels, hidden] (before the sigmoid of `forward`)."""
        # Rows are measured against the layer's own RMS row norm, so the policy judges
        # channels relative to their neighbours and transfers across layers and models.
        scale = matrix.pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12)
        projected = self.inter(matrix / scale)  # W' = W1 W_inter^T + b   [channels, width]
        return projected.pow(2) @ self.quadratic / self.width + self.offset

    def forward(self, matrix: torch.Tensor) -> torch.Tensor:
        """Keep-probability per row of an FFN1 matrix [channels, hidden]."""
        return torch.sigmoid(self.logits(matrix))

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """Keep-probabilities (float64) for one FFN1 matrix, no sampling."""
        with deterministic_torch(), torch.no_grad():
            return self(torch.from_numpy(np.asarray(matrix, dtype=np.float32))).double().numpy()


def relaxed_bernoulli(keep_prob: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """sigmoid(log e - log(1 - e) + log p - log(1 - p)), e ~ U(0, 1): a concrete sample."""
    eps = torch.rand(keep_prob.shape, generator=generator, dtype=keep_prob.dtype).clamp(1e-6, 1 - 1e-6)
    p = keep_prob.clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid(torch.log(eps) - torch.log1p(-eps) + torch.log(p) - torch.log1p(-p))


def top_rows(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` highest scores (ties broken by index), sorted."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return np.sort(order[:keep])


@contextlib.contextmanager
def deterministic_torch(threads: int = 1) -> Iterator[None]:
    """Single-threaded, deterministic torch for the duration (restored afterwards)."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


@dataclass
class TrainingLog:
    """How policy training went: episodes, seconds, whether the time cap stopped it, mean KS first and last."""

    episodes: int
    seconds: float
    stopped_by_time: bool
    mean_ks_first: float
    mean_ks_last: float


def train_policy(layers: list[LayerMatrix], *, seed: int = 0, episodes: int = 40, train_seconds: float = 120.0,
                 ratios: tuple[float, float] = (0.1, 0.5), layers_per_episode: int = 8, samples: int = 4,
                 width: int = 64, learning_rate: float = 0.02, rescale: bool = False) -> tuple[SlicePolicy, TrainingLog]:
    """REINFORCE: maximise -KS(spectrum, sliced spectrum) over sampled keep-masks.

    Each episode draws one ratio in `ratios` and up to `layers_per_episode` layers, and
    `samples` keep-masks per layer; each mask's advantage is its reward minus the mean
    reward of the layer's other masks (leave-one-out baseline: same layer, same ratio,
    so the baseline is fair). `train_seconds` caps the wall time: if it cuts training
    short, the number of episodes run (and so the policy) depends on the machine's
    speed, which the log reports.
    """
    hidden = {layer.matrix.shape[1] for layer in layers}
    if len(hidden) != 1:
        raise EdgefoldError(f"one policy needs FFNs of one hidden size; got {sorted(hidden)}")
    if samples < 2:
        raise EdgefoldError("policy training needs samples >= 2 (the baseline is the other samples' mean)")
    with deterministic_torch():
        torch.manual_seed(seed)
        policy = SlicePolicy(hidden.pop(), width)
        optimiser = torch.optim.Adam(policy.parameters(), lr=learning_rate)
        rng = np.random.default_rng(seed)
        sampler = torch.Generator().manual_seed(seed)
        tensors = {layer.name: torch.from_numpy(layer.matrix) for layer in layers}
        start = time.perf_counter()
        history: list[float] = []
        done, stopped = 0, False
        for episode in range(episodes):
            if time.perf_counter() - start > train_seconds:
                stopped = True
                break
            ratio = float(rng.uniform(*ratios))
            chosen = np.sort(rng.choice(len(layers), size=min(layers_per_episode, len(layers)), replace=False))
            terms = []
            distances = []
            for index in chosen:
                layer = layers[index]
                keep_prob = policy(tensors[layer.name]).clamp(1e-6, 1 - 1e-6)
                kept = max(1, round(layer.channels * (1 - ratio)))
                log_probs, rewards = [], []
                for _ in range(samples):
                    with torch.no_grad():
                        draw = relaxed_bernoulli(keep_prob, sampler)
                    keep = top_rows(draw.numpy(), kept)
                    mask = torch.zeros(layer.channels, dtype=torch.bool)
                    mask[torch.from_numpy(keep)] = True
                    log_probs.append(torch.where(mask, torch.log(keep_prob), torch.log1p(-keep_prob)).sum())
                    rewards.append(-sliced_ks(layer, keep, rescale=rescale))
                rewards_t = torch.tensor(rewards, dtype=torch.float32)
                advantage = rewards_t - (rewards_t.sum() - rewards_t) / (samples - 1)
                terms.append(-(advantage * torch.stack(log_probs)).mean())
                distances.append(-float(np.mean(rewards)))
            loss = torch.stack(terms).mean() * 100.0
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimiser.step()
            history.append(float(np.mean(distances)))
            done = episode + 1
            if episode % max(1, episodes // 5) == 0 or done == episodes:
                progress.info(f"    policy episode {done}/{episodes}: ratio {ratio:.2f}, mean KS {history[-1]:.4f}")
        seconds = time.perf_counter() - start
    if stopped:
        progress.info(f"    policy training stopped by train_seconds={train_seconds} after {done} episodes")
    head = float(np.mean(history[:5])) if history else float("nan")
    tail = float(np.mean(history[-5:])) if history else float("nan")
    return policy, TrainingLog(done, round(seconds, 3), stopped, head, tail)


def save_policy(policy: SlicePolicy, path: Path, *, meta: dict) -> Path:
    """Write the policy as a torch file with its metadata (atomic, deterministic bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in policy.state_dict().items()}
    payload = {"format": POLICY_FORMAT, "hidden": policy.hidden, "width": policy.width,
               "meta": json.dumps(meta, sort_keys=True), "state": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return path


def load_policy(path: Path, *, hidden: int | None = None) -> tuple[SlicePolicy, dict]:
    """Read a saved policy; a missing/corrupt file or a hidden-size mismatch is a user error."""
    path = Path(path)
    if not path.is_file():
        raise EdgefoldError(f"slice policy file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != POLICY_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}")
        policy = SlicePolicy(int(payload["hidden"]), int(payload["width"]))
        policy.load_state_dict(payload["state"])
        meta = json.loads(payload["meta"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        # torch's message spans lines and suggests weights_only=False (running the file's code): never that.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise EdgefoldError(f"{path} is not an edgefold slice policy ({type(exc).__name__}: {first})") from None
    if hidden is not None and policy.hidden != hidden:
        raise EdgefoldError(f"slice policy {path} is for hidden size {policy.hidden}; this model's FFNs have {hidden}")
    policy.eval()
    return policy, meta


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's sha256 (how the manifest names a policy file)."""
    return sha256_file(Path(path))[:16]
