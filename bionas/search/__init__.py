"""Architecture search: spaces as data, the supernet, strategies over it, genotypes.

``run_search(SearchConfig(...))`` is what ``bionas search`` calls. Strategies register in
:data:`STRATEGIES` (``darts``, ``eg``; import order below fixes the registry order).
"""
from bionas.search.genotype import (Edge, Genotype, GenotypeError, derive_cell, derive_genotype, edge_index,
                                    load_genotype, parse_darts_literal)
from bionas.search.space import SearchSpace, SupernetShape, check_pair, load_space, space_from_dict
from bionas.search.strategy import STRATEGIES, SearchStrategy  # noqa: I001  (registry before strategies)
from bionas.search import darts, eg  # noqa: F401  (register "darts", "eg")
from bionas.search.config import SearchConfig, resolve_config
from bionas.search.run import SearchResult, run_search
from bionas.search.supernet import MixedEdge, SearchCell, Supernet

__all__ = ["SearchSpace", "SupernetShape", "load_space", "space_from_dict", "check_pair", "Edge", "Genotype",
           "GenotypeError", "load_genotype", "parse_darts_literal", "derive_cell", "derive_genotype", "edge_index",
           "STRATEGIES", "SearchStrategy", "SearchConfig", "resolve_config", "run_search", "SearchResult",
           "Supernet", "SearchCell", "MixedEdge"]
