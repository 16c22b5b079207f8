"""gpuwpo: batched weight-programming optimisation for analogue in-memory computing (PCM).

The whole population of a differential-evolution search is evaluated as one batched tensor on
the GPU (or the CPU), with programming noise, conductance drift and read noise sampled inside
the batch, and all layers of a network are optimised in one call.
"""

# First: Ctrl-C while the command line imports torch exits 130 with one line (gpuwpo._startup).
from . import _startup  # noqa: F401, I001  (only in the gpuwpo command's own process)
from . import _checkout  # noqa: F401  (registers kernels/ as gpuwpo.kernels in a checkout)
from .device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation
from .device.converters import (
    CustomPairConductanceConverter,
    DualPairConductanceConverter,
    FusionConductanceConverter,
    NPairConductanceConverter,
    SinglePairConductanceConverter,
)
from .network.distributed import RayCluster
from .io import load_result, load_weights, save_result
from .network import (
    LayerResult,
    ModelEvaluation,
    NetworkResult,
    calibrate,
    evaluate_model,
    optimize_network,
    program_model,
    select_weights,
)
from .network.layers import describe_layers
from . import aihwkit  # noqa: F401  (gpuwpo.aihwkit.apply; aihwkit itself is imported on use)
from .device.noise import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel
from .search.objective import TNMSEObjective
from .search.optimizer import OptimizationResult, WeightProgrammingOptimizer
from .device.sampling import downsample_weight_distribution, shuffle_weights
from .device.simulate import simulate_weights
from .search.strategy import StrategySpace
from .device.synthetic import student_t_weights

__version__ = "0.1.0"

__all__ = [
    "CustomDriftPCMLikeNoiseModel",
    "CustomPairConductanceConverter",
    "DualPairConductanceConverter",
    "FusionConductanceConverter",
    "GlobalDriftCompensation",
    "LayerResult",
    "ModelEvaluation",
    "NetworkResult",
    "NPairConductanceConverter",
    "OptimizationResult",
    "PCMLikeNoiseModel",
    "PerColumnDriftCompensation",
    "RayCluster",
    "SinglePairConductanceConverter",
    "StrategySpace",
    "TNMSEObjective",
    "WeightProgrammingOptimizer",
    "calibrate",
    "describe_layers",
    "downsample_weight_distribution",
    "evaluate_model",
    "load_result",
    "load_weights",
    "optimize_network",
    "program_model",
    "save_result",
    "select_weights",
    "shuffle_weights",
    "simulate_weights",
    "student_t_weights",
]
