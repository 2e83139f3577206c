"""Built-in sink ``alertmanager``: alerts straight to Alertmanager's ``/api/v2/alerts``.

Routing, grouping, inhibition, silences and notification channels then come from
Alertmanager. A firing alert is posted with ``endsAt`` = now + ``ends_after_seconds``
(Alertmanager resolves an alert whose ``endsAt`` passed) and posted again every
``refresh_seconds`` while it fires, as Prometheus does (each post with an
``Idempotency-Key`` of its own); a resolved alert is posted with its
real ``endsAt``. ``url`` (or ``urls``, for every member of an Alertmanager cluster) is the
Alertmanager base URL. Delivery is spooled and retried like the webhook's.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any, Sequence

from pydantic import Field, model_validator

from monitord.alerting.alert import Alert, rfc3339
from monitord.alerting.delivery import DeliveryOptions, HttpDelivery
from monitord.alerting.sinks import SinkContext
from monitord.hookspecs import hookimpl

API_PATH = "/api/v2/alerts"


class AlertmanagerOptions(DeliveryOptions):
    #: Alertmanager base URL, e.g. http://alertmanager:9093 (or ``urls`` for several).
    url: str | None = None
    urls: list[str] = []
    #: ``endsAt`` of a firing alert is this far ahead; refreshed before it passes.
    ends_after_seconds: float = Field(300.0, gt=0)
    #: Re-post every firing alert this often.
    refresh_seconds: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "AlertmanagerOptions":
        if self.url:
            self.urls = [self.url, *self.urls]
        if not self.urls:
            raise ValueError("set url (the Alertmanager base URL, e.g. http://127.0.0.1:9093)")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        if self.refresh_seconds >= self.ends_after_seconds:
            raise ValueError("refresh_seconds must be below ends_after_seconds, or firing alerts expire between posts")
        return self


def postable_alert(alert: Alert, ends_at: datetime) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body."""
    return {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": rfc3339(alert.ends_at or ends_at),
        "generatorURL": alert.generator_url,
    }


class AlertmanagerSink:
    def __init__(self, context: SinkContext) -> None:
        self.options: AlertmanagerOptions = AlertmanagerOptions.parse(context.options)  # type: ignore[assignment]
        self.name = context.name
        self.endpoints = [url.rstrip("/") + API_PATH for url in self.options.urls]
        self.delivery = HttpDelivery(context, self.options, self.endpoints)
        #: Firing alerts by fingerprint, re-posted every refresh_seconds.
        self.firing: dict[str, Alert] = {}
        self._refresher: asyncio.Task[None] | None = None

    async def start(self, firing: Sequence[Alert] = ()) -> None:
        await self.delivery.start()
        for alert in firing:
            self.firing[alert.fingerprint] = alert
        if self.firing:
            await self._post(self._refreshed())
        self._refresher = asyncio.create_task(self._refresh(), name=f"sink-{self.name}-refresh")

    async def send(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            if alert.status == "firing":
                self.firing[alert.fingerprint] = alert
            else:
                self.firing.pop(alert.fingerprint, None)
        await self._post(alerts)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        await self.delivery.close()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.options.refresh_seconds)
            if self.firing:
                await self._post(self._refreshed())

    def _refreshed(self) -> list[Alert]:
        """The firing alerts as posts of their own (each its own Idempotency-Key, so that
        nothing between here and Alertmanager takes a refresh for a duplicate)."""
        now = datetime.now(timezone.utc)
        return [alert.notified(now) for alert in self.firing.values()]

    async def _post(self, alerts: Sequence[Alert]) -> None:
        ends_at = datetime.fromtimestamp(time.time() + self.options.ends_after_seconds, timezone.utc)
        await self.delivery.enqueue([
            (json.dumps([postable_alert(alert, ends_at)]).encode(), {"Idempotency-Key": alert.idempotency_key})
            for alert in alerts
        ])


@hookimpl
def register_sinks(register) -> None:
    register("alertmanager", AlertmanagerSink)
