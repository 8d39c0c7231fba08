"""The 5 x 2 x 10 option space of the subcubic proofs (reference-algorithms §8.2, §8.9, §10.4):
axis values, the paper's names, group labels, leading-complexity classes and unexplained
dimensions. Pure metadata: no tensors.
"""

import re
from dataclasses import dataclass

from compact_proofs.config import ModelConfig

EUPU_MODES: tuple[str, ...] = (
    "mean_query+max_diff",
    "svd_query+max_diff",
    "max_diff",
    "max_diff_exact",
    "global_max_diff_exact",
)
ATTN_MODES: tuple[str, ...] = ("mean_query+diff", "drop_average_query_per_output_logit_reasoning")
ATTN_ERR_MODES: tuple[str, ...] = (
    "svd",
    "max_diff",
    "max_diff_subproduct",
    "max_diff_subproduct_recursive",
    "mean+max_diff",
    "mean+max_diff_subproduct",
    "mean+max_diff_subproduct_recursive",
    "mean_recursive+max_diff_subproduct_recursive",
    "exact_EQKE+max_diff_exact",
    "max_diff_exact",
)
EXACT_EUPU = frozenset({"max_diff_exact", "global_max_diff_exact"})
EXACT_ATTN_ERR = frozenset({"max_diff_exact", "exact_EQKE+max_diff_exact"})
FACTORED_ATTN_ERR = frozenset({"svd", "max_diff", "mean+max_diff", "max_diff_exact"})
SUBPRODUCT_ATTN_ERR = frozenset(m for m in ATTN_ERR_MODES if "subproduct" in m)
# The recursive attention-error modes: at which levels of the four-factor product the
# row-range bound uses the mean trick (``eqke.rr_bound``'s ``means``).
RECURSIVE_MEANS: dict[str, list[bool]] = {
    "max_diff_subproduct_recursive": [False, False, False],
    "mean+max_diff_subproduct_recursive": [True, False, False],
    "mean_recursive+max_diff_subproduct_recursive": [True, True, True],
}


def camel(value: str) -> str:
    """``"mean_query+max_diff"`` -> ``"MeanQueryMaxDiff"`` (split on ``_ - +``, capitalise)."""
    return "".join(p.capitalize() for p in re.split(r"[_\-+]", value) if p)


@dataclass(frozen=True)
class Variant:
    """One point of the option space: EUPU handling, attention handling, attention-error
    handling (the dataclass field order of the paper's ``LargestWrongLogitQuadraticConfig``)."""

    eupu: str
    attn: str
    attn_err: str

    def __post_init__(self) -> None:
        if self.eupu not in EUPU_MODES or self.attn not in ATTN_MODES:
            raise ValueError(f"unknown subcubic variant {self}")
        if self.attn_err not in ATTN_ERR_MODES:
            raise ValueError(f"unknown subcubic variant {self}")

    @property
    def name(self) -> str:
        """The paper's short name ``EUPU<X>Attn<Y>AttnErr<Z>``."""
        return f"EUPU{camel(self.eupu)}Attn{camel(self.attn)}AttnErr{camel(self.attn_err)}"

    @property
    def group(self) -> str:
        """The §8.9 group label."""
        parts = []
        if self.attn_err.endswith("_recursive"):
            parts.append("attention-quadratic")
        elif self.attn_err not in EXACT_ATTN_ERR:
            parts.append("attention-vocab-model-squared")
        if self.eupu not in EXACT_EUPU:
            parts.append("direct-quadratic")
        return "subcubic (" + ", ".join(parts) + ")" if parts else "subcubic"

    @property
    def leading(self) -> str:
        """Leading-complexity class (§8.9): almost-quadratic (18), vocab-model-squared (30),
        subcubic (52)."""
        if self.eupu in EXACT_EUPU or self.attn_err in EXACT_ATTN_ERR:
            return "subcubic"
        if self.attn_err.endswith("_recursive"):
            return "almost-quadratic"
        return "vocab-model-squared"

    @property
    def complexity(self) -> str:
        base = "O(d_vocab^2 (n_ctx + d_model) + d_vocab n_ctx^2)"
        extra = {
            "almost-quadratic": "",
            "vocab-model-squared": " + O(d_vocab d_model^2)",
            "subcubic": " + exact O(d_vocab^2 d_model) products",
        }[self.leading]
        return f"{self.leading}: {base}{extra}"

    def unexplained_dim(self, cfg: ModelConfig) -> int:
        """ED(EUPU) + ED(attention error) + V (pessimised PVOU) + V^2 (EVOU) (§10.4)."""
        V, d = cfg.d_vocab, cfg.d_model
        eu = {
            "global_max_diff_exact": 2,
            "max_diff_exact": 2 * V,
            "mean_query+max_diff": V + V * d + 2,
            "svd_query+max_diff": V + V * d + 2,
            "max_diff": V * d + 2,
        }[self.eupu]
        if self.attn_err == "svd":
            err = 2 * V
        elif self.attn_err in ("mean+max_diff", "mean+max_diff_subproduct"):
            err = 3 * V + 2 * d
        elif self.attn_err == "max_diff_exact":
            err = 4 * V
        elif self.attn_err == "exact_EQKE+max_diff_exact":
            err = V * V
        else:
            err = 2 * V + 2 * d
        return eu + err + V + V * V


VARIANTS: tuple[Variant, ...] = tuple(
    Variant(e, a, r) for e in EUPU_MODES for a in ATTN_MODES for r in ATTN_ERR_MODES
)
BY_NAME: dict[str, Variant] = {v.name: v for v in VARIANTS}
