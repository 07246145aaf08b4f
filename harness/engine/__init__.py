"""One job, in process: resolve a run spec, apply the method, train, evaluate, measure, write the row.
The only layer that composes specs, data, methods, suites, evaluation and measurement.
"""
