"""Architecture search: the supernet, strategies over it, and the loop that drives them.

``run_search(SearchConfig(...))`` is what ``bionas search`` calls. The search space and the
genotype it returns are shared types (:mod:`bionas.space`, :mod:`bionas.genotype`).

Adding a strategy: one file in this package with a :class:`SearchStrategy` subclass decorated
``@STRATEGIES.register("name")`` (implement ``update_architecture``; override ``derive``,
``state_dict``/``load_state_dict`` and ``write_outputs`` where it keeps state or outputs) and an
options dataclass for its own settings, plus its import below. ``bionas search --method name``
then runs it, and the strategy tests parametrised over :data:`STRATEGIES` cover it.
"""
from bionas.search.strategy import STRATEGIES, SearchStrategy  # noqa: I001  (registry before strategies)
from bionas.search import darts, eg  # noqa: F401  (register "darts", "eg")
from bionas.search.config import SearchConfig, resolve_config
from bionas.search.run import SearchResult, run_search
from bionas.search.supernet import MixedEdge, SearchCell, Supernet

__all__ = ["STRATEGIES", "SearchStrategy", "SearchConfig", "resolve_config", "run_search", "SearchResult",
           "Supernet", "SearchCell", "MixedEdge"]
