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

# Portable bits (HANDEYE_PORTABLE_BITS=1): cap every math library at the instruction set that the CPU kinds we
# meet share (AVX2: AMD EPYC, Intel Xeon), so that their kernels, and with them the last bits, could agree.
# Read by each library when it loads, hence here. Whether two CPU kinds then agree is measured, not assumed:
# docs/performance.md, benchmarks/bench_portable.py.
PORTABLE_BITS_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "COMPATIBLE,STRICT",  # MKL's conditional numerical reproducibility (torch's BLAS on x86)
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN (torch's convolutions and some matmuls)
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's SIMD dispatch (numpy 2.4 names)
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's OpenBLAS kernels
    "LP_NATIVE_VECTOR_WIDTH": "256",  # Mesa llvmpipe, which renders the MuJoCo cameras
}
if os.environ.get("HANDEYE_PORTABLE_BITS") == "1":
    for key, value in PORTABLE_BITS_ENV.items():
        os.environ.setdefault(key, value)

__version__ = "0.1.0"
