"""Retraining: the evaluation networks of genotypes and the single-rule baselines.

``resolve_config`` builds a :class:`TrainConfig` (the paper's preset for the model and dataset,
``--preset``, file, flags); ``run_train`` trains it, in one process or data-parallel under
``torchrun``; ``load_trained`` rebuilds a trained network from its checkpoint.
"""
from bionas.train.config import TrainConfig, resolve_config
from bionas.train.model import DataShape, Trained, build_network, load_trained, training_genotype
from bionas.train.run import TrainResult, learning_rate, run_train

__all__ = ["TrainConfig", "resolve_config", "run_train", "TrainResult", "learning_rate",
           "build_network", "load_trained", "training_genotype", "Trained", "DataShape"]
