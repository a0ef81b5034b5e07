"""Side-by-side benchmarks: cachesvc vs the distribution registry's proxy mode vs nginx.

Run with ``python -m benchmarks [--smoke] [--reps N] [--out DIR]``; see ``benchmarks/README.md``.
"""
