"""Triton kernels for block-sparse FlashAttention (installed as ``sparseflash.kernels``)."""
