"""gensight: predict how well trained neural networks generalize, and learn on their weights.

The top-level import is light: subpackages (``gensight.weightspace``, ``gensight.nf``) are
imported on use.
"""

from gensight.errors import GensightError

__version__ = "0.1.0"

__all__ = ["GensightError", "__version__"]
