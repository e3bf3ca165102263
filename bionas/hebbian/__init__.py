"""A Hebbian CNN on its own: the SoftHebb-style network trained by local rules, read out linearly.

>>> from bionas.hebbian import resolve_config, run_hebbian
>>> result = run_hebbian(resolve_config("hard_wta_bcm_surround", overrides={"out": "runs/hebb"}))
"""
from bionas.hebbian.config import HebbianConfig, resolve_config
from bionas.hebbian.network import HebbianCNN, Triangle
from bionas.hebbian.run import HebbianResult, run_hebbian
from bionas.hebbian.whitening import ZCA

__all__ = ["HebbianConfig", "resolve_config", "HebbianCNN", "Triangle", "HebbianResult", "run_hebbian",
           "ZCA"]
