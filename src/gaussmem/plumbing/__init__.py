"""What every part of gaussmem leans on and none of it is about: the allocator, atomic
file writes, CUDA graphs, device names, the hardware record, precision, seeding and the
data/cache settings. Modules here import nothing else of gaussmem but `errors`, and
importing this package imports none of them (the CLI's `--help` stays light).
"""
