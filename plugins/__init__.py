"""Custom kernels registered as ops of the network-definition API (Triton kernels arrive with the GPU engines)."""
