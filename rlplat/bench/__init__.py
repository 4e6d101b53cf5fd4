"""Benchmarks: `rlplat bench NAME` runs `rlplat.bench.NAME.main(argv)`.

Each benchmark prints a readable table and ends with one JSON line (see `common.emit_headline`).
"""
