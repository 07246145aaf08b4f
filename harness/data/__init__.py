"""Data and models: the offline-first mirror, model aliases and loading, and the vision model builders.
Knows no method or suite.
"""
