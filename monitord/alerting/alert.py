"""The alert record: labels, annotations, times, fingerprint, and its JSON forms."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

#: ``endsAt`` of a firing alert in the webhook payload, as Alertmanager writes it.
ZERO_TIME = "0001-01-01T00:00:00Z"

DRIFT_ALERT = "MonitordDrift"
WARNING_ALERT = "MonitordDriftWarning"


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_SEPARATOR = b"\xff"


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of the labelset (``model.LabelSet.Fingerprint()``):
    64-bit FNV-1a over each label name and value, names sorted, every one followed by the
    byte 0xff, as 16 hex digits. The same alert has the same fingerprint here, in
    Alertmanager's API and in its webhooks."""
    value = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name.encode(), _SEPARATOR, str(labels[name]).encode(), _SEPARATOR):
            for byte in part:
                value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def rfc3339(moment: datetime) -> str:
    """UTC RFC 3339 with milliseconds and ``Z``."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Alert:
    """One alert notification: firing while ``ends_at`` is None, resolved once set.

    ``notified_at`` is when this notification was made (the first firing: ``starts_at``;
    a re-notification: its time; resolved: ``ends_at``); it tells notifications of one
    alert apart and is no part of the alert's identity (nor of equality).
    """

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    generator_url: str
    ends_at: datetime | None = None
    notified_at: datetime | None = field(default=None, compare=False)

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if self.ends_at is None else "resolved"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def idempotency_key(self) -> str:
        """``<fingerprint>-<status>-<startsAt>-<notifiedAt>``: the same for every copy and
        every retry of one notification, another for each re-notification."""
        notified_at = self.notified_at or self.ends_at or self.starts_at
        return f"{self.fingerprint}-{self.status}-{rfc3339(self.starts_at)}-{rfc3339(notified_at)}"

    def resolved(self, at: datetime) -> "Alert":
        return replace(self, ends_at=at, notified_at=at)

    def notified(self, at: datetime) -> "Alert":
        """This alert as a notification made at ``at`` (a re-notification, a refresh)."""
        return replace(self, notified_at=at)

    def to_webhook(self) -> dict[str, Any]:
        """The alert as an element of the Alertmanager webhook payload's ``alerts``."""
        return {
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": ZERO_TIME if self.ends_at is None else rfc3339(self.ends_at),
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": rfc3339(self.starts_at),
            "generatorURL": self.generator_url,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> "Alert":
        return cls(
            labels={str(k): str(v) for k, v in data["labels"].items()},
            annotations={str(k): str(v) for k, v in data["annotations"].items()},
            starts_at=parse_rfc3339(data["startsAt"]),
            generator_url=str(data.get("generatorURL", "")),
        )
