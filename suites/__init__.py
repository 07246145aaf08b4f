"""Task suites; each module registers its suite in `harness.suite.SUITES`."""
