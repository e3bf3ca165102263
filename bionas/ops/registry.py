"""The one registry of operations: ``OPS.get("sep_conv_3x3")(C, stride, affine)`` builds one."""
from bionas.registry import Registry

OPS: Registry = Registry("op")
