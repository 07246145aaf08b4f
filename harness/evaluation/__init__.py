"""How a model is run for scores and timings: official metrics, forward latency, generation costs and the
lm-eval bridge.
"""
