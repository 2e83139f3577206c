"""An example detector plugin for monitord: a two-sided CUSUM (``type = "cusum"``)."""

from .cusum import BadValue, Cusum

__all__ = ["BadValue", "Cusum"]
