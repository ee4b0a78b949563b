"""pyvision_ops: hand-written C++/CUDA kernels for the operations vision models spend time in.

Every operator is a ``torch.ops.pyvision_ops.<name>`` op with CPU and CUDA kernels, autograd and
``torch.compile`` support; this package re-exports the functional API at the top level.
``import pyvision_ops`` works without the compiled extension (``has_ops()`` is then False and
calling an operator raises an error that says how to build it).
"""

from pyvision_ops._version import __version__
from pyvision_ops._extension import build_info, has_cuda, has_ops
from pyvision_ops.ops import *  # noqa: F401,F403
from pyvision_ops.ops import __all__ as _ops_all
from pyvision_ops import box_ops  # noqa: F401
from pyvision_ops import data  # noqa: F401
from pyvision_ops import nn  # noqa: F401
from pyvision_ops import models  # noqa: F401
from pyvision_ops import metric_learning  # noqa: F401
from pyvision_ops import visualize  # noqa: F401
from pyvision_ops.metric_learning import (  # noqa: F401
    ClassTree,
    HierarchicalBatchSampler,
    KMeansResult,
    hierarchical_triplet_loss,
    kmeans,
)

__all__ = ["__version__", "build_info", "has_cuda", "has_ops", "box_ops", "data", "nn", "models", "metric_learning",
           "visualize", "kmeans", "KMeansResult",
           "ClassTree", "HierarchicalBatchSampler", "hierarchical_triplet_loss", *_ops_all]
