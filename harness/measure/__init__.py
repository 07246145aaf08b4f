"""Measurement that takes models and callables and knows no loop, method or suite: time, memory,
sizes, FLOPs, kernel profiles and the passes they run. Imports only harness.core.
"""
