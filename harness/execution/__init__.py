"""Where jobs run: the sweep plan, one process per job (isolation, memory limits, claims), local slots,
Ray and Slurm.
"""
