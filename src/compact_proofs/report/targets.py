"""The paper's published numbers (docs/targets.md), printed beside ours in Table 1.

Keys are Table 1 row keys: ``"brute force"``, ``"cubic"``, ``"best subcubic"`` and the paper's row
names of ``naming.PAPER_ROW``. Values: (bound, FLOPs to check, unexplained dimension), verbatim.
For K=4 "bound" of brute force is the true accuracy; every other bound is relative ("rel").
"""

from compact_proofs.report.data import Config

PaperRow = tuple[str, str, str]

PAPER: dict[Config, dict[str, PaperRow]] = {
    (4, 64): {
        "brute force": ("0.9992 ± 0.0015", "8.76e11", "2^30"),
        "cubic": ("rel 0.9539 ± 0.0080", "3.52e7", "12,800"),
        "best subcubic": ("rel 0.700 ± 0.036", "1.9e6 – 4.7e6", "4,290 – 10,370"),
        "low-rank QK": ("rel 0.675 ± 0.035", "2.7e6 – 4.7e6", ""),
        "low-rank EU": ("rel 0.633 ± 0.062", "2.2e6 – 3.5e6", ""),
        "low-rank QK & EU": ("rel 0.610 ± 0.060", "2.5e6 – 4.5e6", ""),
        "quadratic QK": ("rel 0.316 ± 0.037", "2.2e6", ""),
        "quadratic QK & EU": ("rel 0.283 ± 0.037", "1.9e6 – 2.0e6", ""),
    },
    (5, 64): {
        "brute force": ("0.9990 (est.)", "", ""),
        "cubic": ("rel 0.942", "", ""),
        "best subcubic": ("rel 0.702", "", ""),
        "quadratic QK & EU": ("rel 0.336", "", ""),
    },
    (10, 64): {
        "brute force": ("0.9988 (est.)", "", ""),
        "cubic": ("rel 0.915", "", ""),
        "best subcubic": ("rel 0.673", "", ""),
        "quadratic QK & EU": ("rel 0.391", "", ""),
    },
    (20, 64): {
        "brute force": ("0.995 (est.)", "", ""),
        "cubic": ("rel 0.888", "", ""),
        "best subcubic": ("rel 0.563", "", ""),
        "quadratic QK & EU": ("rel 0.322", "", ""),
    },
}


def paper_row(cfg: Config, key: str) -> PaperRow | None:
    return PAPER.get(cfg, {}).get(key)
