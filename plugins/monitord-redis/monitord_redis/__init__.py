"""The Redis Streams transport of monitord: inference processes on any hosts publish their
batches to one stream, one active monitor (with standbys) applies them exactly once.

The key layout and the exactly-once argument are in the distribution's README.md.
"""
