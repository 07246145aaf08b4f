"""Layer 0: what every layer needs and nothing else: the one error type, the generic registry, atomic
writes, the environment record, device peaks, progress bars and file digests. Imports nothing from harness.
"""
