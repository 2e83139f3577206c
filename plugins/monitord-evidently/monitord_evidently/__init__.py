"""An Evidently report of recent predictions against the model's drift reference:
``monitord report`` and ``GET /v1/report``.

The plugin module (``monitord_evidently.plugin``) imports neither Evidently nor pandas, so
a daemon with this distribution installed pays nothing for it until a report is asked for.
"""
