"""The status page: ``GET /`` (HTML, CSS and a small script of ours, no build step, nothing
fetched from elsewhere) and its data, ``GET /v1/status``, from bounded buffers in memory.

``page`` serves both and samples the history; ``history`` and ``thumbnails`` are the
buffers; ``readings`` reads what the metrics already hold; ``static/`` is the page.
"""
