"""Benchmarks (`just bench [GROUP]`): figures beside a floor measured by a thin raw client."""
