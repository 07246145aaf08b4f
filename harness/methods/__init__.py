"""Adaptation and compression methods; each module registers its methods in `harness.methods.base.METHODS`."""
