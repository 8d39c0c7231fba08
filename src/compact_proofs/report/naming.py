"""Strategy names, proof families and labels (reference-algorithms §8.2, §8.9), and LaTeX names.

Mapping of the paper's Table 1 row names to the §8.9 groups (our reading of the paper's naming:
"low-rank" = a non-exact bound whose cost has the ``d_vocab d_model^2`` term, "quadratic" = the
recursive, almost-quadratic bound; "QK" = the attention-error (EQKE residual) handling, "EU" = the
direct-path (EUPU) handling; a part not named is handled exactly):

=================================================================  =========================
§8.9 group                                                          paper row
=================================================================  =========================
subcubic (attention-vocab-model-squared)                            low-rank QK
subcubic (direct-quadratic)                                         low-rank EU
subcubic (attention-vocab-model-squared, direct-quadratic)          low-rank QK & EU
subcubic (attention-quadratic)                                      quadratic QK
subcubic (attention-quadratic, direct-quadratic)                    quadratic QK & EU
subcubic                                                            (none: exact QK error & EU)
=================================================================  =========================
"""

import re

from compact_proofs.proofs.subcubic.variants import (
    ATTN_ERR_MODES,
    ATTN_MODES,
    EUPU_MODES,
    Variant,
    camel,
)

BRUTE_FORCE, CUBIC = "brute force", "cubic"
SUBCUBIC_GROUPS: tuple[str, ...] = (
    "subcubic (attention-vocab-model-squared)",
    "subcubic (direct-quadratic)",
    "subcubic (attention-vocab-model-squared, direct-quadratic)",
    "subcubic (attention-quadratic)",
    "subcubic (attention-quadratic, direct-quadratic)",
    "subcubic",
)
PAPER_ROW: dict[str, str] = {
    "subcubic (attention-vocab-model-squared)": "low-rank QK",
    "subcubic (direct-quadratic)": "low-rank EU",
    "subcubic (attention-vocab-model-squared, direct-quadratic)": "low-rank QK & EU",
    "subcubic (attention-quadratic)": "quadratic QK",
    "subcubic (attention-quadratic, direct-quadratic)": "quadratic QK & EU",
    "subcubic": "exact QK & EU",
}
FAMILY_ORDER: tuple[str, ...] = (BRUTE_FORCE, CUBIC, *SUBCUBIC_GROUPS)


def subcubic_name(eupu: str, attn: str, attn_err: str) -> str:
    """The paper's short name ``EUPU<X>Attn<Y>AttnErr<Z>``."""
    return Variant(eupu, attn, attn_err).name


SUBCUBIC_AXES: dict[str, tuple[str, str, str]] = {
    subcubic_name(e, a, r): (e, a, r)
    for e in EUPU_MODES
    for a in ATTN_MODES
    for r in ATTN_ERR_MODES
}


def group_label(eupu: str, attn_err: str) -> str:
    """The §8.9 group of a subcubic variant (it does not depend on the attention handling)."""
    return Variant(eupu, ATTN_MODES[0], attn_err).group


def attn_err_mode(strategy: str) -> str | None:
    """The attention-error mode of a subcubic strategy name (None if it is not one)."""
    axes = SUBCUBIC_AXES.get(strategy)
    if axes is not None:
        return axes[2]
    if "AttnErr" not in strategy:
        return None
    suffix = strategy.rsplit("AttnErr", 1)[1]
    for mode in ATTN_ERR_MODES:
        if camel(mode) == suffix:
            return mode
    return None


def family_label(family: str) -> str:
    """Human label of a family: the paper row name for a §8.9 subcubic group."""
    return PAPER_ROW.get(family, family)


def is_subcubic(family: str) -> bool:
    return family.startswith("subcubic")


# ------------------------------------------------------------------------------------------------
# LaTeX command names: letters only.

_ONES = (
    "Zero One Two Three Four Five Six Seven Eight Nine Ten Eleven Twelve Thirteen Fourteen Fifteen "
    "Sixteen Seventeen Eighteen Nineteen"
).split()
_TENS = "_ _ Twenty Thirty Forty Fifty Sixty Seventy Eighty Ninety".split()


def spell_number(n: int) -> str:
    """``64`` -> ``"SixtyFour"``, ``512`` -> ``"FiveHundredTwelve"`` (0 <= n < 10**9)."""
    if n < 0:
        return "Minus" + spell_number(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (_ONES[n % 10] if n % 10 else "")
    for size, word in ((10**6, "Million"), (1000, "Thousand"), (100, "Hundred")):
        if n >= size:
            return spell_number(n // size) + word + (spell_number(n % size) if n % size else "")
    raise AssertionError("unreachable")


def latex_name(*parts: str | int) -> str:
    """CamelCase command name of letters only: integers and digit runs are spelled out, every
    other non-letter separates words."""
    words: list[str] = []
    for part in parts:
        if isinstance(part, int):
            words.append(spell_number(part))
            continue
        for token in re.findall(r"[A-Za-z]+|\d+", part):
            if token.isdigit():
                words.append(spell_number(int(token)))
            else:
                words.append(token[0].upper() + token[1:])
    name = "".join(words)
    if not re.fullmatch(r"[A-Za-z]+", name):
        raise ValueError(f"cannot build a LaTeX command name from {parts!r}")
    return name
