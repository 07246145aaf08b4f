"""Measurement that takes models and callables and knows no loop, method or suite: timing (wall time,
latency percentiles), memory (peaks, training-memory breakdown), size (parameters, bytes, sparsity),
flops (FLOP formulas and counts), train_flops (FLOPs over the steps that ran), kernels (profiles) and
the passes they run (passes). Imports only harness.core.
"""
