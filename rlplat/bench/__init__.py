"""Benchmarks: `rlplat bench NAME` runs `rlplat.bench.NAME.main(argv)`.

Each benchmark prints a readable table and ends with one JSON line (see `common.emit_headline`), which `rlplat bench`
prints after shutting Ray down, so it is the last line of stdout. Benches run offline (no hub requests); those on Ray
start a local one of their own (the override cluster.address=auto attaches instead) and reach it only through
rlplat.driver (no ray import here). A bench on the demo's model writes models/tiny when it is missing; any other
missing model is one line and exit status 2.
"""
