"""Networks built from bionas ops, with learning rules assigned per block or per edge."""
from bionas.models.darts_net import NetworkCIFAR, NetworkImageNet
from bionas.models.genotypes import GENOTYPES, resolve_genotype, with_random_rules, with_rule
from bionas.models.tiny import TinyNet, tiny_net
from bionas.models import mlp  # noqa: F401  (registers the mlp models)

__all__ = ["TinyNet", "tiny_net", "NetworkCIFAR", "NetworkImageNet", "GENOTYPES", "resolve_genotype", "with_rule",
           "with_random_rules"]
