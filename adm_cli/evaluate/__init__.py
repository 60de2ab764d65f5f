"""Evaluation as OpenAI's evaluator computes it (IS, FID, sFID, precision, recall), without TensorFlow;
plus density / coverage (prdc's reference definitions) and KID.

Data flow: sources (sample files, folders, data sets) → feature networks (Inception-v3 or an
adm classifier) → cached activations → pure metrics (`fid`, `precision_recall`, `prdc`) → `evaluate`;
`ref_batch` builds reference batches in OpenAI's layout.
"""

from .evaluator import ALL_METRICS, METRICS, EvaluateError, EvaluateOptions, Evaluation, evaluate
from .fid import FIDStatistics, fid_statistics, frechet_distance, inception_score
from .inception import FIDInception
from .prdc import density_coverage
from .precision_recall import manifold_radii, pairwise_sq_distances, precision_recall
from .weights import InceptionWeightsError, load_inception, resolve_weights

__all__ = [
    "ALL_METRICS", "METRICS", "EvaluateError", "EvaluateOptions", "Evaluation", "evaluate",
    "FIDStatistics", "fid_statistics", "frechet_distance", "inception_score", "FIDInception",
    "manifold_radii", "pairwise_sq_distances", "precision_recall", "density_coverage",
    "InceptionWeightsError", "load_inception", "resolve_weights",
]
