"""Configurations, paper presets and seed derivation (reference-algorithms §1-3).

Building a config never touches global state: no seeding, no device probing.
"""

import hashlib
import json
import math
from dataclasses import dataclass

from compact_proofs.errors import ConfigError

# The paper's 151 Max-of-K seeds (reference-algorithms §1.4), sorted.
PAPER_SEEDS: tuple[int, ...] = (
    50,
    104,
    123,
    519,
    742,
    913,
    1185,
    1283,
    1412,
    1490,
    1681,
    1696,
    1895,
    1951,
    2236,
    2306,
    2345,
    2549,
    2743,
    2773,
    3175,
    3254,
    3284,
    4157,
    4305,
    4430,
    4647,
    4729,
    4800,
    4810,
    5358,
    5615,
    5781,
    5928,
    6082,
    6155,
    6159,
    6204,
    6532,
    6549,
    6589,
    6910,
    7098,
    7238,
    7310,
    7467,
    7790,
    7884,
    8048,
    8299,
    8721,
    8745,
    8840,
    8893,
    9132,
    9134,
    9504,
    9816,
    10248,
    11124,
    11130,
    11498,
    11598,
    11611,
    12141,
    12287,
    12457,
    12493,
    12552,
    12561,
    13036,
    13293,
    13468,
    13654,
    13716,
    14095,
    14929,
    15043,
    15399,
    15622,
    15662,
    16069,
    16149,
    16197,
    16284,
    17080,
    17096,
    17194,
    17197,
    18146,
    18289,
    18668,
    19004,
    19093,
    19451,
    19488,
    19538,
    19917,
    20013,
    20294,
    20338,
    20415,
    20539,
    20751,
    20754,
    20976,
    21317,
    21598,
    22261,
    22286,
    22401,
    22545,
    23241,
    23367,
    23447,
    23633,
    23696,
    24144,
    24173,
    24202,
    24262,
    24438,
    24566,
    25516,
    26278,
    26374,
    26829,
    26932,
    27300,
    27484,
    27584,
    27671,
    27714,
    28090,
    28716,
    28778,
    29022,
    29052,
    29110,
    29195,
    29565,
    29725,
    29726,
    30371,
    30463,
    30684,
    30899,
    31308,
    32103,
    32374,
    32382,
)


def reseed(x: int, label: str) -> int:
    """The paper's derived-seed recipe (reference-algorithms §1.5).

    md5 of the compact JSON ``[x, label]``, a zero version byte prepended and the last digest byte
    dropped; the first four bytes read little-endian. ``reseed(123, "model") == 613947648``.
    """
    text = json.dumps(
        [x, label], ensure_ascii=False, sort_keys=True, indent=None, separators=(",", ":")
    )
    digest = b"\x00" + hashlib.md5(text.encode("utf-8")).digest()[:-1]
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a one-layer, one-head, attention-only transformer (HookedTransformerConfig names).

    Args:
        d_vocab: number of input tokens (and output logits: ``d_vocab_out == d_vocab``).
        n_ctx: sequence length; for Max-of-K this is K, and the readout is the last position.
        d_model: residual-stream width.
        d_head: attention-head width; the attention scale is ``sqrt(d_head)``.
    """

    d_vocab: int
    n_ctx: int
    d_model: int = 32
    d_head: int = 32

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "d_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_vocab < 2:
            raise ConfigError(f"d_vocab must be at least 2, got {self.d_vocab}")
        if self.n_ctx < 2:
            raise ConfigError(f"n_ctx (K) must be at least 2, got {self.n_ctx}")

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def attn_scale(self) -> float:
        return math.sqrt(self.d_head)

    @property
    def n_inputs(self) -> int:
        """Number of possible input sequences, ``d_vocab ** n_ctx`` (exact Python int)."""
        return self.d_vocab**self.n_ctx


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The paper's training recipe (reference-algorithms §3).

    Args:
        seed: the user-facing seed; every random stream is derived from it with ``reseed``.
        lr, betas, weight_decay: AdamW hyper-parameters (torch defaults elsewhere).
        batch_size, steps: one pass over a stream of ``steps * batch_size`` uniform samples.
    """

    seed: int
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    batch_size: int = 128
    steps: int = 3000

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.batch_size < 1 or self.steps < 0:
            raise ConfigError("batch_size must be >= 1 and steps >= 0")

    @property
    def model_seed(self) -> int:
        return reseed(self.seed, "model")

    @property
    def dataset_seed(self) -> int:
        return reseed(self.seed, "dataset_seed")

    @property
    def train_seed(self) -> int:
        return reseed(self.dataset_seed, "train")

    @property
    def test_seed(self) -> int:
        return reseed(self.dataset_seed, "test")
