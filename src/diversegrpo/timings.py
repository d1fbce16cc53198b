"""Per-stage time table from Snakemake's `benchmark:` files: `python -m diversegrpo.timings [DIR]`."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def stage_times(directory: str | Path = "benchmarks/stages") -> pd.DataFrame:
    """One row per stage: jobs, summed and longest wall-clock seconds, peak memory (MB)."""
    rows = []
    for f in sorted(Path(directory).rglob("*.tsv")):
        bench = pd.read_csv(f, sep="\t")
        rows.append(
            {
                "stage": f.relative_to(directory).parts[0],
                "job": str(f.relative_to(directory).with_suffix("")),
                "seconds": float(bench.s.iloc[-1]),
                "max_rss_mb": float(pd.to_numeric(bench.max_rss, errors="coerce").iloc[-1]),
            }
        )
    if not rows:
        return pd.DataFrame(columns=["stage", "jobs", "sum_s", "max_s", "max_rss_mb"])
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("stage", sort=False).agg(
        jobs=("job", "count"), sum_s=("seconds", "sum"), max_s=("seconds", "max"), max_rss_mb=("max_rss_mb", "max")
    )
    return table.reset_index()


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/stages"
    table = stage_times(directory)
    print(
        f"per-stage wall-clock seconds (Snakemake benchmark files in {directory}; jobs of a stage may run in parallel)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
