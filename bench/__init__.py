"""Benchmarks of the S13 hot path: load generator, framing-only echo server, driver.

Run ``python -m bench.ecr_bench`` from the repository root; see bench/README.md.
"""
