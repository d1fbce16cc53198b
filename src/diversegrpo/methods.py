"""The methods the paper compares, by their names in config/config.yaml (`methods`, `runs.methods`).

Flow-GRPO is every ratio's denominator and DiverseGRPO its numerator (tables.py); the claims check (claims.py) holds
each DiverseGRPO variant against Flow-GRPO and SA-Reg. A module of its own, at the bottom of the imports, so that the
workflow can route the sweeps' inputs without importing torch and pandas: through claims.py, they cost every
snakemake call, a no-op rerun included, 2.5 s.
"""

BASELINE, SA_REG, DIVERSE = "flow_grpo", "sa_reg", "diverse_grpo"
REFERENCES = (BASELINE, SA_REG)  # the trained methods a variant is checked against (and the base model)
