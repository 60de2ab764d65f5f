"""Evaluation as OpenAI's evaluator computes it (IS, FID, sFID, precision, recall), without TensorFlow.

Data flow: sources (sample files, folders, data sets) → feature networks (Inception-v3 or an
adm classifier) → cached activations → pure metrics (`fid`, `precision_recall`) → `evaluate`;
`ref_batch` builds reference batches in OpenAI's layout.
"""

from .evaluator import ALL_METRICS, METRICS, EvaluateError, EvaluateOptions, Evaluation, evaluate
from .fid import FIDStatistics, fid_statistics, frechet_distance, inception_score
from .inception import FIDInception
from .precision_recall import manifold_radii, pairwise_sq_distances, precision_recall
from .weights import InceptionWeightsError, load_inception, resolve_weights

__all__ = [
    "ALL_METRICS", "METRICS", "EvaluateError", "EvaluateOptions", "Evaluation", "evaluate",
    "FIDStatistics", "fid_statistics", "frechet_distance", "inception_score", "FIDInception",
    "manifold_radii", "pairwise_sq_distances", "precision_recall",
    "InceptionWeightsError", "load_inception", "resolve_weights",
]
