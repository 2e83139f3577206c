"""An example model plugin for monitord: a nearest-centroid classifier (``model.type =
"nearest_centroid"``) over downsampled gray pixels, needing numpy and Pillow only."""

from .model import NearestCentroidModel

__all__ = ["NearestCentroidModel"]
