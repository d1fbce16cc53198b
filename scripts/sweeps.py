"""Stage entry: snakemake rule `sweeps`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.sweeps import sweeps_stage  # noqa: E402

out = snakemake.output  # noqa: F821
sweeps_stage(snakemake.params.points, snakemake.params.runs, snakemake.input.metrics,  # noqa: F821
             snakemake.input.timings, {k: out[k] for k in ("table", "beta_png", "sa_steps_png")},  # noqa: F821
             snakemake.input.references)  # noqa: F821
