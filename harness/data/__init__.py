"""Packaged data: published accuracy numbers (copied from the method specs)."""
