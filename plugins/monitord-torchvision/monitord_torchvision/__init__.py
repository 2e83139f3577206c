"""monitord model plugin: torchvision classifiers and the small default digits CNN.

Importing this package is cheap on purpose (no torch): ``monitord --help`` and
``monitord plugins`` load every plugin, and should not pay for a deep-learning framework.
The heavy modules (``loading``, ``training``, ``inference``) import torch themselves.
"""

__version__ = "0.1.0"
