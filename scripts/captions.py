"""Stage entry: snakemake rule `captions`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)

from diversegrpo.stages.captions import make_captions  # noqa: E402

c = snakemake.params.captions  # noqa: F821
make_captions(c["source"], c.get("eval_source"), c.get("eval_fraction"), snakemake.params.seed,  # noqa: F821
              snakemake.output.train, snakemake.output.eval)  # noqa: F821
