"""Cost stage (rules/cluster.smk: cost_preflight) and the Slurm site: time and memory before submitting, resources per
job.
"""
