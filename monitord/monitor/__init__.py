"""The monitor role: what happens to an entry once it is in the stream.

It applies every prediction batch and label batch, in stream order, to the drift
detectors, the feedback join and accuracy, the predictions log and the prediction
metrics; the detectors' changes drive the alert state machines and their sinks. Its state
is checkpointed together with the position of the last entry it applied (``runner``).
"""
