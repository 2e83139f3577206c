"""Built-in sink ``log``: one structured line per notification on the ``monitord.alerts`` logger.

The line is ``alert <status> key=value ...`` (labels, statistic, threshold, startsAt,
endsAt, fingerprint, summary) at WARNING for firing and INFO for resolved, so it reads
in a terminal and parses with a logfmt parser. It takes no options.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

from monitord.alerting.alert import Alert
from monitord.alerting.sinks import SinkContext, SinkOptions
from monitord.hookspecs import hookimpl

log = logging.getLogger("monitord.alerts")


def _value(value: str) -> str:
    return value if value and all(c.isalnum() or c in "._:-/+" for c in value) else json.dumps(value)


class LogSink:
    def __init__(self, context: SinkContext) -> None:
        SinkOptions.parse(context.options)
        self.name = context.name
        self.context = context

    async def start(self, firing: Sequence[Alert] = ()) -> None:
        pass

    async def send(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            payload = alert.to_webhook()
            fields = {
                **payload["labels"],
                "statistic": alert.annotations.get("statistic", ""),
                "threshold": alert.annotations.get("threshold", ""),
                "startsAt": payload["startsAt"],
                "endsAt": payload["endsAt"],
                "fingerprint": payload["fingerprint"],
                "summary": alert.annotations.get("summary", ""),
            }
            line = " ".join(f"{key}={_value(str(value))}" for key, value in fields.items())
            log.log(logging.WARNING if alert.status == "firing" else logging.INFO, "alert %s %s", alert.status, line)
            self.context.count("delivered")

    async def close(self) -> None:
        pass


@hookimpl
def register_sinks(register) -> None:
    register("log", LogSink)
