"""Pure data, validated where it enters: the run spec and its resolved form with the job identity, the
method-pipeline grammar, sweep files, the result schema, number types and the fixed data subsets.
Imports only harness.core.
"""
