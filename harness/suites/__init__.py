"""Task suites; each module registers its suite in `harness.suites.base.SUITES`."""
