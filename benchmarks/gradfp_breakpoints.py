"""best_format's numerically derived breakpoints next to the paper's table.

    python benchmarks/gradfp_breakpoints.py

Writes benchmarks/results/gradfp_breakpoints/breakpoints.json and prints a markdown table.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from gradtools.fp import format_breakpoints  # noqa: E402
from benchmarks.result_files import results_dir, write_result  # noqa: E402

#: The reference's lookup (sigma2 = std of log2|g|): E = k from the k-th entry on.
PAPER = {3: (0, 0.7), 4: (0, 0.5, 1.2), 5: (0, 0.2, 1, 2.4), 6: (0, 0.3, 0.9, 2, 4.9),
         7: (0, 0.3, 0.7, 1.7, 4, 9.4), 8: (0, 0.1, 0.6, 1.4, 3.7, 8.1, 19.3)}


def main() -> None:
    rows = {}
    lines = ["| bits | paper: sigma2 where E = 2, 3, ... starts | ours (best_format) |", "|---|---|---|"]
    for bits, paper in PAPER.items():
        ours = format_breakpoints(bits)
        rows[bits] = {"paper": list(paper[1:]), "ours": [s for s, _ in ours],
                      "ours_exp_bits": [e for _, e in ours]}
        lines.append(f"| {bits} | {', '.join(f'{v:g}' for v in paper[1:])} | "
                     f"{', '.join(f'{s:.2f}' for s, _ in ours)} |")
    write_result(results_dir("gradfp_breakpoints") / "breakpoints.json", {"breakpoints": rows})
    print("\n".join(lines))
    print("\nreproduce: python benchmarks/gradfp_breakpoints.py")


if __name__ == "__main__":
    main()
