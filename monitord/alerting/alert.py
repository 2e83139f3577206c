"""The alert record: labels, annotations, times, fingerprint, and its JSON forms."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

#: ``endsAt`` of a firing alert in the webhook payload, as Alertmanager writes it.
ZERO_TIME = "0001-01-01T00:00:00Z"

DRIFT_ALERT = "MonitordDrift"
WARNING_ALERT = "MonitordDriftWarning"


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable hex digest of the labelset (sorted), like Alertmanager's fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(labels):
        digest.update(name.encode())
        digest.update(b"\xff")
        digest.update(str(labels[name]).encode())
        digest.update(b"\xff")
    return digest.hexdigest()[:16]


def rfc3339(moment: datetime) -> str:
    """UTC RFC 3339 with milliseconds and ``Z``."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Alert:
    """One alert notification: firing while ``ends_at`` is None, resolved once set."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    generator_url: str
    ends_at: datetime | None = None

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if self.ends_at is None else "resolved"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def idempotency_key(self) -> str:
        """``<fingerprint>-<status>-<startsAt>``: the same for every copy of one notification."""
        return f"{self.fingerprint}-{self.status}-{rfc3339(self.starts_at)}"

    def resolved(self, at: datetime) -> "Alert":
        return replace(self, ends_at=at)

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
