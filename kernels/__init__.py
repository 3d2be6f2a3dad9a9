"""Masked-expert and statistics kernels (installed as `resect.kernels`)."""
