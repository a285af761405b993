"""One markdown table from every benchmarks/results/gradfp_train/*.json (all seeds).

    python benchmarks/gradfp_report.py

Accuracy deltas are against the FP32 run of the same arch and seed; configs run on 3 or
more seeds also get a paired summary (mean delta, its sd and standard error).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "gradfp_train"


def main() -> None:
    runs: dict[tuple[str, str, int], dict] = {}
    for path in sorted(RESULTS.glob("*.json")):
        payload = json.loads(path.read_text())
        for r in payload["runs"]:
            seed = r.get("seed", payload["settings"].get("seed", 0))
            arch = r["arch"] + ("-bn" if payload["settings"].get("bn") else "")  # a different network
            runs[(arch, r["config"], seed)] = r
    by_config: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for (arch, config, seed), r in runs.items():
        by_config[(arch, config)][seed] = r
    seeds = sorted({seed for _, _, seed in runs})
    header = "| arch | config | formats | " + " | ".join(f"acc seed {s} (vs FP32)" for s in seeds) + " |"
    lines = [header, "|---" * (3 + len(seeds)) + "|"]
    for (arch, config), per_seed in sorted(by_config.items(), key=lambda kv: (kv[0][0], kv[0][1] != "fp32", kv[0][1])):
        used = {fmt for r in per_seed.values() for fmt in r.get("layer_formats", {}).values()}  # every seed's
        fmts = sorted(used - {"-", "None"}) or ["FP32"]
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
    print()
    print(paired_summary(by_config))
    print("\nreproduce: python benchmarks/gradfp_report.py")


def paired_summary(by_config: dict[tuple[str, str], dict[int, dict]], min_seeds: int = 3) -> str:
    """Configs run on at least ``min_seeds`` seeds: mean accuracy minus the same seed's FP32
    run, with its standard deviation and standard error over seeds (FP32's own seed spread
    in the fp32 row). Pairing by seed removes most of the init/data-order noise."""
    lines = ["| arch | config | seeds | mean acc | mean vs FP32 (points) | sd | s.e. |", "|---|---|---|---|---|---|---|"]
    for (arch, config), per_seed in sorted(by_config.items(), key=lambda kv: (kv[0][0], kv[0][1] != "fp32", kv[0][1])):
        base = by_config.get((arch, "fp32"), {})
        seeds = sorted(s for s in per_seed if s in base)
        if len(seeds) < min_seeds:
            continue
        acc = [100 * per_seed[s]["test_accuracy"] for s in seeds]
        spread = acc if config == "fp32" else [a - 100 * base[s]["test_accuracy"] for a, s in zip(acc, seeds)]
        mean_spread = sum(spread) / len(spread)
        sd = (sum((v - mean_spread) ** 2 for v in spread) / (len(spread) - 1)) ** 0.5
        delta = "-" if config == "fp32" else f"{mean_spread:+.2f}"
        lines.append(f"| {arch} | {config} | {len(seeds)} | {sum(acc) / len(acc):.2f} % | {delta} | "
                     f"{sd:.2f} | {sd / len(spread) ** 0.5:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
