"""What this machine has: ``hardware`` (CPU, GPUs, the NVIDIA driver probe), ``cuda_libs`` (where
cuBLAS/cudart are), ``tiers`` (the one tier picker). May import only the bottom modules.
"""
