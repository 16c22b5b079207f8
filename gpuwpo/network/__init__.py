"""A network: which tensors are layers, the run's settings, the search of all layers (one
pipeline: its tasks run in this process or sharded over Ray workers), its result, the model
programmed with it, its metric over time (evaluate_model), and its layers' input energies
(calibrate: the activation-aware error's importance)."""

from .calibration import calibrate
from .distributed import RayCluster
from .evaluate import ModelEvaluation, evaluate_model
from .executors import InProcess
from .layers import select_weights
from .pipeline import optimize_network
from .program import program_model
from .result import LayerResult, NetworkResult

__all__ = ["InProcess", "LayerResult", "ModelEvaluation", "NetworkResult", "RayCluster",
           "calibrate", "evaluate_model", "optimize_network", "program_model", "select_weights"]
