"""Stage entry: snakemake rules `sample` and `sample_base`."""
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821

from diversegrpo.stages.sample import SampleSettings, sample_stage  # noqa: E402

captions = {"eval": snakemake.input.eval, "train": snakemake.input.train}  # noqa: F821
sample_stage(SampleSettings(**snakemake.params.settings), snakemake.params.lora, captions,  # noqa: F821
             snakemake.output[0])  # noqa: F821
