"""The paper's training recipe, deterministic on CPU (reference-algorithms §3).

AdamW (lr 1e-3, betas (0.9, 0.999), weight decay 0.01, eps 1e-8, no schedule, no clipping) over the
non-bias parameters; batches of 128 fresh uniform samples from the seeded training stream
(``task.training_stream``); loss = mean cross-entropy at the last position, with the paper's
log1p log-softmax. One pass of ``steps`` batches. Initialisation: ``model.init_weights``.

Global torch state touched while training (deterministic algorithms on, float32 matmul precision
"highest", one intra-op thread, grad mode on) is restored afterwards. The RNG used is a local
``torch.Generator``.
"""

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from compact_proofs import model as model_mod
from compact_proofs import task
from compact_proofs.config import ModelConfig, TrainConfig
from compact_proofs.weights import Weights

Progress = Callable[[int, int, float], None] | None

EPS = 1e-8


@dataclass(frozen=True, kw_only=True)
class TrainStats:
    """What a training run reports.

    Args:
        loss, accuracy: the trained model re-run over the same ``steps`` training batches
            (regenerated from the train seed), averaged over all samples, as the paper's driver
            reports "train loss/accuracy" (log1p log-softmax loss; ties in argmax count for the
            lowest index, as ``torch.argmax``).
        last_batch_loss, last_batch_accuracy: the last optimisation step's batch, before its update.
        seconds: wall time of the optimisation loop (not of the re-run).
        seed, model_seed, dataset_seed, train_seed: the user seed and the derived seeds used.
        steps, batch_size: the length of the run.
    """

    loss: float
    accuracy: float
    last_batch_loss: float
    last_batch_accuracy: float
    seconds: float
    seed: int
    model_seed: int
    dataset_seed: int
    train_seed: int
    steps: int
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_softmax_log1p(
    x: Float[Tensor, "batch d_vocab"], dim: int = -1
) -> Float[Tensor, "batch d_vocab"]:
    """The paper's more precise log-softmax: centre on the row maximum, exponentiate, zero the
    maximum's own term (it is exactly 1) and return ``centred - log1p(sum of the others)``."""
    top = x.argmax(dim=dim, keepdim=True)
    centred = x - x.gather(dim=dim, index=top)
    others = centred.exp().scatter(dim=dim, index=top, src=torch.zeros_like(top, dtype=x.dtype))
    return centred - others.sum(dim=dim, keepdim=True).log1p()


def loss_fn(
    logits: Float[Tensor, "batch n_ctx d_vocab"], labels: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy of the last position's logits against ``labels``."""
    log_probs = log_softmax_log1p(logits[:, -1, :], dim=-1)
    correct = log_probs.gather(-1, labels.unsqueeze(-1))
    return -correct.mean()


def accuracy_fn(
    logits: Float[Tensor, "batch n_ctx d_vocab"], labels: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Fraction of inputs whose last-position argmax equals the label."""
    return (logits[:, -1, :].argmax(dim=-1) == labels).float().mean()


@contextmanager
def _deterministic_cpu():
    """Deterministic algorithms, "highest" float32 matmul precision and one intra-op thread,
    restored on exit.

    One thread: the tensors are tiny (a 2-thread step is no faster, and far slower when the cores
    are shared), and it keeps the result independent of the machine's thread count.
    """
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    precision = torch.get_float32_matmul_precision()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_float32_matmul_precision("highest")
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(threads)


def train(
    model_cfg: ModelConfig, train_cfg: TrainConfig, progress: Progress = None
) -> tuple[Weights, TrainStats]:
    """Train a Max-of-K model with the paper's recipe.

    Args:
        model_cfg: the model shape (K = ``n_ctx``).
        train_cfg: seed and recipe; the model is initialised with ``train_cfg.model_seed`` and the
            data stream is seeded with ``train_cfg.train_seed``.
        progress: optional ``callback(step, total, loss)`` called after every step.

    Returns:
        The trained weights and the run's statistics.
    """
    V, n = model_cfg.d_vocab, model_cfg.n_ctx
    with _deterministic_cpu():
        net = model_mod.build(model_cfg, train_cfg.model_seed)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params,
            lr=train_cfg.lr,
            betas=train_cfg.betas,
            eps=EPS,
            weight_decay=train_cfg.weight_decay,
        )
        last_loss, last_acc = math.nan, math.nan
        start = time.perf_counter()
        stream = task.training_stream(
            train_cfg.train_seed, V, n, train_cfg.batch_size, train_cfg.steps
        )
        for step, (tokens, labels) in enumerate(stream, start=1):
            opt.zero_grad(set_to_none=True)
            logits = net(tokens)
            loss = loss_fn(logits, labels)
            loss.backward()
            opt.step()
            last_loss = float(loss.detach())
            if progress is not None:
                progress(step, train_cfg.steps, last_loss)
            if step == train_cfg.steps:
                last_acc = float(accuracy_fn(logits.detach(), labels))
        seconds = time.perf_counter() - start
        weights = model_mod.to_weights(net)
    mean_loss, mean_acc = evaluate_stream(weights, train_cfg)
    stats = TrainStats(
        loss=mean_loss,
        accuracy=mean_acc,
        last_batch_loss=last_loss,
        last_batch_accuracy=last_acc,
        seconds=seconds,
        seed=train_cfg.seed,
        model_seed=train_cfg.model_seed,
        dataset_seed=train_cfg.dataset_seed,
        train_seed=train_cfg.train_seed,
        steps=train_cfg.steps,
        batch_size=train_cfg.batch_size,
    )
    return weights, stats


def evaluate_stream(
    weights: Weights, train_cfg: TrainConfig, *, chunk_batches: int = 64
) -> tuple[float, float]:
    """Mean loss and accuracy of ``weights`` over the training stream of ``train_cfg``.

    The stream is regenerated from the train seed; ``chunk_batches`` batches are evaluated per
    forward pass (the per-sample values do not depend on the grouping).
    """
    cfg = weights.config
    total = train_cfg.steps * train_cfg.batch_size
    if total == 0:
        return math.nan, math.nan
    net = model_mod.from_weights(weights)
    g = torch.Generator().manual_seed(train_cfg.train_seed)
    loss_sum, correct, done = 0.0, 0, 0
    with torch.no_grad():
        while done < total:
            m = min(chunk_batches * train_cfg.batch_size, total - done)
            tokens, labels = task.sample_batch(g, cfg.d_vocab, cfg.n_ctx, m)
            last = net(tokens)[:, -1, :]
            log_probs = log_softmax_log1p(last, dim=-1).gather(-1, labels.unsqueeze(-1))
            loss_sum -= float(log_probs.double().sum())
            correct += int((last.argmax(dim=-1) == labels).sum())
            done += m
    return loss_sum / total, correct / total
