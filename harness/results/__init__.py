"""The result store and what reads it: rows and kernel tables on disk, store upgrades, comparisons
between stores, statistics and Pareto fronts. Knows nothing of pages.
"""
