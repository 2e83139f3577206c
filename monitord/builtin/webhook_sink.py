"""Built-in sink ``webhook``: the Alertmanager webhook payload (version "4") to your URLs.

Each notification (one alert: firing, re-notified or resolved) is POSTed to every URL in
``urls`` as the JSON body Alertmanager's webhook receiver sends, so receivers written for
Alertmanager take it unchanged. Headers: ``Idempotency-Key:
<fingerprint>-<status>-<startsAt>-<notifiedAt>`` (the same for every copy and every retry
of one notification, so a receiver can drop duplicates, and another for each
re-notification) and, with a ``secret``, ``X-Monitord-Signature: sha256=<hex HMAC-SHA256
of the body>``. Delivery is spooled and retried (``monitord.alerting.delivery``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Sequence

from pydantic import Field, SecretStr, field_validator

from monitord.alerting.alert import Alert
from monitord.alerting.delivery import DeliveryOptions, HttpDelivery
from monitord.alerting.sinks import SinkContext
from monitord.hookspecs import hookimpl

SIGNATURE_HEADER = "X-Monitord-Signature"


class WebhookOptions(DeliveryOptions):
    #: Receivers; every notification goes to each of them.
    urls: list[str] = Field(min_length=1)
    #: Shared secret for the signature header; never logged or exported.
    secret: SecretStr | None = None

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return urls


def signature(secret: str, body: bytes) -> str:
    """The ``X-Monitord-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def webhook_payload(alert: Alert, receiver: str, external_url: str) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one alert, grouped by alertname and detector."""
    group = {name: alert.labels[name] for name in ("alertname", "detector") if name in alert.labels}
    group_key = "{}:{" + ", ".join(f'{name}="{value}"' for name, value in group.items()) + "}"
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": alert.status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": dict(alert.labels),
        "commonAnnotations": dict(alert.annotations),
        "externalURL": external_url,
        "alerts": [alert.to_webhook()],
    }


class WebhookSink:
    def __init__(self, context: SinkContext) -> None:
        self.options: WebhookOptions = WebhookOptions.parse(context.options)  # type: ignore[assignment]
        self.name = context.name
        self.context = context
        secret = self.options.secret.get_secret_value() if self.options.secret else None
        sign = (lambda body: {SIGNATURE_HEADER: signature(secret, body)}) if secret else None
        self.delivery = HttpDelivery(context, self.options, self.options.urls, sign)

    async def start(self, firing: Sequence[Alert] = ()) -> None:
        await self.delivery.start()

    async def send(self, alerts: Sequence[Alert]) -> None:
        await self.delivery.enqueue([
            (json.dumps(webhook_payload(alert, self.name, self.context.external_url)).encode(),
             {"Idempotency-Key": alert.idempotency_key})
            for alert in alerts
        ])

    async def close(self) -> None:
        await self.delivery.close()


@hookimpl
def register_sinks(register) -> None:
    register("webhook", WebhookSink)
