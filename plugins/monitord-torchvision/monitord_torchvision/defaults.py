"""Training defaults shared by the Python API and ``monitord train``.

Kept apart from ``training`` so the CLI can show them in ``--help`` without importing
torch, which every ``monitord`` invocation would otherwise pay for.
"""

#: Epochs of the default digits model: ~98-99% held-out accuracy in a few CPU seconds.
DEFAULT_EPOCHS = 15
DEFAULT_SEED = 0
#: Below this held-out accuracy a trained model is not worth serving: nothing is written.
MIN_ACCURACY = 0.95

#: Epochs at most for ``monitord train --data``; early stopping usually ends it sooner.
FOLDER_EPOCHS = 30
#: Epochs without a lower validation loss after which ``--data`` training stops.
FOLDER_PATIENCE = 4
#: No minimum held-out accuracy for ``--data`` unless --min-accuracy asks for one: what
#: is good enough depends on the task, unlike for the digits.
FOLDER_MIN_ACCURACY = 0.0
