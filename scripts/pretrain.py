"""Stage entry: snakemake rule `backbone` (pre-train the toy MMDiT, report its coverage)."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.pretrain import run_pretrain_stage  # noqa: E402

run_pretrain_stage(snakemake.params.spec, snakemake.params.seed,  # noqa: F821
                   snakemake.threads, snakemake.params.out)  # noqa: F821
