"""One markdown table from every benchmarks/results/gradfp_train*.json (all seeds).

    python benchmarks/gradfp_report.py

Accuracy deltas are against the FP32 run of the same arch and seed.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    runs: dict[tuple[str, str, int], dict] = {}
    for path in sorted(RESULTS.glob("gradfp_train*.json")):
        payload = json.loads(path.read_text())
        for r in payload["runs"]:
            seed = r.get("seed", payload["settings"].get("seed", 0))
            runs[(r["arch"], r["config"], seed)] = r
    by_config: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for (arch, config, seed), r in runs.items():
        by_config[(arch, config)][seed] = r
    seeds = sorted({seed for _, _, seed in runs})
    header = "| arch | config | formats | " + " | ".join(f"acc seed {s} (vs FP32)" for s in seeds) + " |"
    lines = [header, "|---" * (3 + len(seeds)) + "|"]
    for (arch, config), per_seed in sorted(by_config.items(), key=lambda kv: (kv[0][0], kv[0][1] != "fp32", kv[0][1])):
        any_run = next(iter(per_seed.values()))
        fmts = sorted(set(any_run.get("layer_formats", {}).values()) - {"-", "None"}) or ["FP32"]
        cells = []
        for s in seeds:
            r, base = per_seed.get(s), by_config.get((arch, "fp32"), {}).get(s)
            if r is None:
                cells.append("-")
            elif base is None or config == "fp32":
                cells.append(f"{100 * r['test_accuracy']:.2f} %")
            else:
                cells.append(f"{100 * r['test_accuracy']:.2f} % ({100 * (r['test_accuracy'] - base['test_accuracy']):+.2f})")
        lines.append(f"| {arch} | {config} | {', '.join(fmts)} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print("\nreproduce: python benchmarks/gradfp_report.py")


if __name__ == "__main__":
    sys.exit(main())
