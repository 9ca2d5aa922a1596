"""Dense model parts: MLP layers, the pairwise interaction, the loss, and the DLRM / Wide&Deep
networks (NumPy GEMMs plus fused Numba kernels for the elementwise and interaction work)."""
