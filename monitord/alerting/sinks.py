"""What an alert sink is (``register_sinks``), and building the configured ones.

A sink plugin registers ``factory(context: SinkContext) -> Sink``. The factory checks the
sink's options (``context.options``, the keys of its ``[[sinks]]`` table besides ``type``
and ``name``) and raises ``ValueError`` naming the bad key; the daemon then refuses to
start with that message. Then, on the event loop:

- ``await start(firing)``: open connections, start delivery tasks, deliver what an
  earlier run left pending. ``firing`` holds the alerts still firing from before a
  restart, for sinks that must keep them alive (``alertmanager``); others ignore it.
- ``await send(alerts)``: one notification per alert (firing, re-notified, or resolved).
  It must return promptly: a sink that does network I/O queues (durably, if it promises
  delivery) and delivers in its own task.
- ``await close()``: flush what it can within ``context.shutdown_timeout`` seconds and
  stop; what is left stays queued for the next start.

A sink counts what becomes of its notifications with ``context.count(outcome, amount=1)``,
into ``monitord_alerts_total{sink,outcome}``: ``delivered`` (it reached its destination),
``failed`` (an attempt failed and will be retried) or ``dropped`` (given up for good). The
daemon creates the three series at 0 for every configured sink, so a sink declares
nothing; ``context.metrics`` itself is not part of the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from monitord.alerting.alert import Alert
from monitord.metrics import ALERT_OUTCOMES, Metrics
from monitord.settings import AlertSettings, SinkSpec


@dataclass
class SinkContext:
    """What the daemon lends a sink."""

    #: The instance name (``name``, default the type): the ``sink`` label, spool folder.
    name: str
    type: str
    #: The sink's own keys from its ``[[sinks]]`` table.
    options: dict[str, Any]
    #: The daemon's state folder; spooling sinks keep ``<state_dir>/spool/<name>/``. What a
    #: sink writes there must be private (``monitord.state_files``) and hold no credential.
    state_dir: Path
    metrics: Metrics
    alerts: AlertSettings = field(default_factory=AlertSettings)
    #: The daemon's externalURL (``alerts.external_url`` or its default).
    external_url: str = ""
    #: Seconds ``close()`` may take to flush.
    shutdown_timeout: float = 5.0

    def count(self, outcome: str, amount: int = 1) -> None:
        """Add ``amount`` notifications to ``monitord_alerts_total{sink=<name>, outcome}``.

        ``outcome`` is ``delivered``, ``failed`` (an attempt; it will be retried) or
        ``dropped`` (given up); anything else raises ``ValueError``, since every label value
        is a series Prometheus keeps.
        """
        if outcome not in ALERT_OUTCOMES:
            raise ValueError(f"sink {self.name!r} counted outcome {outcome!r}; "
                             f"monitord_alerts_total takes {', '.join(ALERT_OUTCOMES)}")
        if amount < 0:
            raise ValueError(f"sink {self.name!r} counted {amount} {outcome} notifications; a count only grows")
        self.metrics.alerts.labels(sink=self.name, outcome=outcome).inc(amount)


@runtime_checkable
class Sink(Protocol):
    name: str

    async def start(self, firing: Sequence[Alert] = ()) -> None: ...

    async def send(self, alerts: Sequence[Alert]) -> None: ...

    async def close(self) -> None: ...


class SinkOptions(BaseModel):
    """Base for a sink's options: unknown keys are refused (a typo must not pass)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def parse(cls, options: dict[str, Any]) -> "SinkOptions":
        """Validate; raise ``ValueError`` naming each bad key (never echoing a secret)."""
        try:
            return cls(**options)
        except ValidationError as error:
            problems = []
            for problem in error.errors():
                key = ".".join(str(part) for part in problem["loc"])
                if problem["type"] == "extra_forbidden":
                    problems.append(f"{key}: unknown option; check the spelling")
                elif "secret" in key:
                    problems.append(f"{key}: {problem['msg']}")
                else:
                    problems.append(f"{key} = {problem.get('input')!r}: {problem['msg']}")
            raise ValueError("; ".join(problems)) from None


def build_sinks(
    specs: Sequence[SinkSpec],
    factory_for: Callable[[str], Callable[[SinkContext], Sink]],
    make_context: Callable[[SinkSpec], SinkContext],
) -> list[Sink]:
    """Instantiate the configured sinks; a bad spec raises ``ValueError`` naming it."""
    names = [spec.label for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"sink names must be unique; repeated: {', '.join(duplicates)} (set `name` in [[sinks]])")
    sinks = []
    for index, spec in enumerate(specs):
        where = f"sinks[{index}] (type {spec.type!r}, name {spec.label!r})"
        try:
            factory = factory_for(spec.type)
        except Exception as error:
            raise ValueError(f"{where}: {error}") from None
        context = make_context(spec)
        try:
            sinks.append(factory(context))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}: {error}") from None
        # Every sink's outcome series from the first scrape, also a plugin's that declares none.
        context.metrics.declare_sink(spec.label)
    return sinks
