"""Networks built from bionas ops, with learning rules assigned per block."""
from bionas.models.tiny import TinyNet, tiny_net

__all__ = ["TinyNet", "tiny_net"]
