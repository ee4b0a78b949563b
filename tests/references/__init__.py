"""Independent references for the tests, one module per op family (one reference per op).

``references.unpool`` (max pooling / unpooling), ``references.gram`` (Gram matrix, style and
perceptual losses), ``references.assign`` (Hungarian assignment via SciPy, DETR's box ops, cost
and losses), ``references.distance`` (pairwise distances, k-nearest, triplet mining, metric-learning
losses). The test files import from the family module; everything is re-exported here too.
"""

from references.assign import *  # noqa: F401,F403
from references.assign import __all__ as _assign_all
from references.distance import *  # noqa: F401,F403
from references.distance import __all__ as _distance_all
from references.gram import *  # noqa: F401,F403
from references.gram import __all__ as _gram_all
from references.unpool import *  # noqa: F401,F403
from references.unpool import __all__ as _unpool_all

__all__ = [*_unpool_all, *_gram_all, *_assign_all, *_distance_all]
