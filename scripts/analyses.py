"""Stage entry: snakemake rule `analyses`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.analyses import analyses_stage  # noqa: E402

out = snakemake.output  # noqa: F821
p = snakemake.params  # noqa: F821
analyses_stage([tuple(r) for r in p.runs], p.run_dirs, [tuple(r) for r in p.base_runs],
               list(snakemake.input.budgets) + list(snakemake.input.base_budgets),  # noqa: F821
               {k: out[k] for k in ("efficiency", "efficiency_png", "replicator", "replicator_png", "budget",
                                    "budget_png")})
