"""Stage entry: snakemake rule `run_config` (one run's resolved settings, with its prompts)."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.run_config import write_run_config  # noqa: E402

write_run_config(snakemake.params.spec, snakemake.input.train, snakemake.input.eval, snakemake.output[0],  # noqa: F821
                 snakemake.input.get("budget"))  # noqa: F821
