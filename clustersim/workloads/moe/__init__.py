"""Mixture-of-experts: routing as data, expert-parallel layers, all-to-all, offloading.

Modules: ``routing`` (seeded routing distributions, traces, capacity), ``dispatch`` (per-device
token and byte matrices from routing and placement), ``expert_ops`` (grouped expert GEMMs per
device), ``ep_layer`` (the EP block emitted into a training step's Program), ``offload``
(an HBM expert cache in front of host memory for inference).
"""
