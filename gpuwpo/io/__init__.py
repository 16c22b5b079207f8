"""Files gpuwpo reads and writes: results files (:mod:`gpuwpo.io.results`) and weight files
(:mod:`gpuwpo.io.weights`).

``from gpuwpo.io import load_result, load_weights, save_result`` reads and writes them; both
modules refuse a bad file with one line naming it (:mod:`gpuwpo.io.common`). ``load_weights``
reads checkpoints as training scripts write them (nested dicts, ``module.`` prefixes, sharded
safetensors, a directory) and returns a :class:`LoadedWeights`: a dict name -> tensor with the
one note line of what it left out.
"""

from .results import (
    MAX_RESULT_BYTES,
    RESULT_FORMAT,
    RESULT_VERSION,
    check_output_file,
    is_results_file,
    load_result,
    result_to_json_bytes,
    save_result,
)
from .weights import LoadedWeights, load_weights

__all__ = ["save_result", "load_result", "load_weights", "LoadedWeights", "is_results_file",
           "check_output_file", "result_to_json_bytes", "RESULT_FORMAT", "RESULT_VERSION",
           "MAX_RESULT_BYTES"]
