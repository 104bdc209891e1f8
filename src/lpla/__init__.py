"""lpla: membership-inference audits of self-supervised image encoders.

The package is layered so that data flows one way:
``data`` -> ``ssl`` (train encoders) -> ``query`` (encoder x images -> embeddings)
-> ``attacks`` (statistics -> scores) -> ``metrics`` -> ``report``.
``attacks`` and ``metrics`` need only numpy arrays, so embeddings from any model can be audited.
"""

__version__ = "0.1.0"

from lpla.errors import LplaError

__all__ = ["LplaError", "__version__"]
