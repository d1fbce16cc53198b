"""Stage entry: snakemake rule `report`."""
import sys
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.report import report_stage  # noqa: E402

out = snakemake.output  # noqa: F821
outputs = {k: out[k] for k in ("table_md", "table_tex", "summary", "pareto", "pareto_csv", "curves")}
outputs["grids_dir"] = str(Path(out.grids[0]).parent)
p = snakemake.params  # noqa: F821
report_stage(snakemake.input.metrics, [tuple(r) for r in p.runs], p.run_dirs,  # noqa: F821
             [tuple(r) for r in p.grid_runs], snakemake.input.samples, p.base_samples, list(p.seeds),  # noqa: F821
             p.report.get("grid_prompts", 3), p.report.get("grid_images", 8), outputs)
