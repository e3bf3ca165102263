"""The one registry of learning rules: ``RULES.get("fa")`` is the class of feedback alignment."""
from bionas.registry import Registry

RULES: Registry = Registry("learning rule")
