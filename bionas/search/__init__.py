"""Architecture search: spaces as data and genotypes (the supernet and strategies build on them)."""
from bionas.search.genotype import (Edge, Genotype, GenotypeError, derive_cell, derive_genotype, edge_index,
                                    load_genotype, parse_darts_literal)
from bionas.search.space import SearchSpace, SupernetShape, check_pair, load_space, space_from_dict

__all__ = ["SearchSpace", "SupernetShape", "load_space", "space_from_dict", "check_pair", "Edge", "Genotype",
           "GenotypeError", "load_genotype", "parse_darts_literal", "derive_cell", "derive_genotype", "edge_index"]
