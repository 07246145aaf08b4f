"""Where jobs run: the sweep plan, one process per job (isolation, memory limits, claims), and the
executors of the EXECUTORS registry (base.py): local slots, Ray, Slurm, printed commands.
"""
