"""infoscore: how much each training sample matters, and how well a model generalizes.

The science library of the infoscore service (arXiv 2306.15918). It imports torch and
numpy only and reads no environment variables. Submodules by role: ``data``, ``models``,
``training``, ``scores``, ``ntk``, ``linearized``, ``sample_info``, ``fcmi``, ``limit``,
``distill``.
"""

from .errors import Cancelled, InfoscoreError, InvalidInputError, NumericalError

__version__ = "0.1.0"

__all__ = ["Cancelled", "InfoscoreError", "InvalidInputError", "NumericalError", "__version__"]
