"""HandEye: pretrained vision encoders for dexterous manipulation, reproducibly."""

import os

# Idle OpenMP threads spin-wait by default. Alone on 2 cores that is faster (40 demo MAE steps with 2 threads:
# 9.4-10.7 s spinning, 13.2-19.8 s passive), but when another process wants the cores it is ruinous (two such
# runs at once: 110 s each spinning, 14.8 s passive; GOMP_SPINCOUNT 1,000: 16.6 s). It must be set before torch
# loads its OpenMP runtime, and every entry point imports this package first. Scheduling only, never results.
# An empty value opts out: libgomp rejects "" with a warning, so it is removed and OpenMP's default applies.
if os.environ.get("OMP_WAIT_POLICY") == "":
    del os.environ["OMP_WAIT_POLICY"]
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
