"""Benchmarks run by `lavinkit bench`."""
