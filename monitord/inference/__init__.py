"""The inference role: sources, decode, micro-batches, the model, signals, and publishing
each batch to the stream (``role``). The pipeline, decoding and batching modules stay
beside the plugin contracts they serve (``monitord.pipeline``, ``monitord.sources``,
``monitord.model``)."""
