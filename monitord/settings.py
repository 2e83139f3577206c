"""Settings: defaults < TOML file (``--config``) < ``.env`` < ``MONITORD_*`` variables.

Nested keys use ``__`` in the environment (``MONITORD_HTTP__PORT=9000`` sets
``http.port``). ``configs/monitord.toml`` documents every key with its default; keep the
two in step (a test checks that they agree).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    SettingsError as PydanticSettingsError,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class HttpSettings(_Section):
    """The HTTP server: ingest, health, readiness and ``/metrics``."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: Bind with SO_REUSEPORT, so several processes on this host accept on one port (the
    #: kernel spreads connections among them); ``pipeline.workers`` sets it for its own.
    reuse_port: bool = False
    #: Seconds the server keeps answering after a stop was asked for and the work in flight
    #: is done: 503 with Retry-After and ``Connection: close``, so a client or load balancer
    #: moves on instead of having a request on a kept-alive connection reset.
    lame_duck_seconds: float = Field(1.0, ge=0)
    #: Largest request body accepted by ``POST /v1/predict`` (413 above it).
    max_body_bytes: int = Field(20 * MiB, gt=0)
    #: Most images in one multipart request (413 above it).
    max_parts: int = Field(256, gt=0)
    #: Seconds a client is told to wait (Retry-After) when the daemon is saturated.
    retry_after_seconds: int = Field(1, ge=1)
    #: Bearer token required on every ``/v1/*`` route (``Authorization: Bearer <token>``);
    #: unset, the API is open, which is only safe on loopback.
    token: SecretStr | None = Field(None, min_length=16)
    #: Require the token on ``/metrics`` too (set Prometheus's ``authorization`` then).
    protect_metrics: bool = False
    #: Seconds a client has to send its request line and headers; slower connections are
    #: closed (a slowloris client cannot hold a connection open by trickling bytes).
    header_timeout_seconds: float = Field(10.0, gt=0)
    #: Seconds a client has to send a whole request body (408 after that).
    body_timeout_seconds: float = Field(60.0, gt=0)
    #: After ``body_rate_grace_seconds``, a body must keep arriving at this many bytes per
    #: second on average (408 below it), so that a client trickling its body cannot hold
    #: a place among ``max_concurrent_requests`` for the whole body timeout; 0: no minimum.
    min_body_rate_bytes: int = Field(1024, ge=0)
    #: Seconds a body may take before ``min_body_rate_bytes`` applies.
    body_rate_grace_seconds: float = Field(5.0, ge=0)
    #: ``POST /v1/predict`` requests being read or waiting for their outcome, at most;
    #: more get 429 with Retry-After before their body is read.
    max_concurrent_requests: int = Field(64, gt=0)


class FolderSettings(_Section):
    """The watched folder source."""

    inbox: Path = Path("inbox")
    processed: Path = Path("processed")
    failed: Path = Path("failed")
    #: Take the true label from the first sub-folder under the inbox (ImageFolder style).
    labels_from_subfolders: bool = True
    #: Write ``<image>.json`` with the prediction beside each processed image.
    write_prediction_json: bool = True
    #: Where the writer of a file cannot be checked (other owner, network file system),
    #: a file is read once its size and mtime stayed unchanged this long.
    settle_seconds: float = Field(0.5, ge=0)
    #: Full rescans of the inbox, a safety net for missed file-system events.
    rescan_seconds: float = Field(30.0, gt=0)
    #: Files taken in one turn of the folder thread, at most: claimed, read, run and
    #: carried out a batch (``pipeline.max_batch_size``) at a time.
    max_in_flight: int = Field(256, gt=0)
    #: Waiting files remembered in memory, at most; the rest stay on disk and the next
    #: scan finds them, so a backlog of any size costs the same memory.
    max_backlog: int = Field(4096, gt=0)
    #: Files larger than this go to ``failed/`` unread (an image this size is a mistake,
    #: and reading it whole would take that much memory).
    max_file_bytes: int = Field(50 * MiB, gt=0)
    #: A file the daemon stopped on this many times without reaching its outcome (it
    #: crashed or was killed mid-batch) goes to ``failed/`` instead of being tried again.
    max_attempts: int = Field(3, gt=0)
    #: This process's share of the inbox when several processes on this host take files
    #: from it, ``"I/N"`` (share I of N, from 1; by a hash of each file's path), all of
    #: them with one ``ledger``; unset: every file. ``pipeline.workers`` sets it for its own.
    share: str | None = Field(None, pattern=r"^[1-9][0-9]*/[1-9][0-9]*$")
    #: The folder's ledger; default ``<state_dir>/ledger.sqlite3``. Processes sharing an
    #: inbox share it.
    ledger: Path | None = None

    def partition(self) -> tuple[int, int] | None:
        """``share`` as (index from 0, count), or None."""
        if self.share is None:
            return None
        index, count = (int(part) for part in self.share.split("/"))
        return index - 1, count

    @field_validator("share")
    @classmethod
    def _share_within_count(cls, value: str | None) -> str | None:
        if value is not None:
            index, count = (int(part) for part in value.split("/"))
            if index > count:
                raise ValueError(f"share {index} of {count} does not exist; shares are 1/{count} to {count}/{count}")
        return value


class PipelineSettings(_Section):
    """Queues, micro-batching and shutdown."""

    #: Items accepted but not yet decoded, at most (HTTP answers 503 beyond it).
    queue_size: int = Field(1024, gt=0)
    #: 64: the ceiling's best on the 2-core CPU machine (64 to 128 in every run of
    #: ``benchmarks/throughput.py``); at 32 the digits model costs 15 % more per image, and
    #: every batch costs the monitor a stream entry and a detector update.
    max_batch_size: int = Field(64, gt=0)
    #: Seconds the batcher waits for a batch to fill after its first item arrives, while
    #: the model is busy; an idle model gets what is ready at once.
    max_batch_delay: float = Field(0.01, ge=0)
    #: Send a partial batch at once when the model is idle (off: every batch waits up to
    #: ``max_batch_delay`` to fill, even when the model has nothing to do).
    adaptive_batching: bool = True
    #: Threads that decode and preprocess images.
    decode_workers: int = Field(2, gt=0)
    #: Inference processes to run on this host (0: this one process does everything).
    #: ``monitord run`` then supervises N inference processes, sharing ``http.port`` and
    #: the inbox, and a monitor, all on one stream (``bus.url``, or a private redis-server
    #: it starts in ``state_dir``). One Python process uses about one core; see the
    #: README's "Performance" and "Scaling out".
    workers: int = Field(0, ge=0, le=64)
    #: Images with more pixels than this are refused before decoding.
    max_image_pixels: int = Field(40_000_000, gt=0)
    #: Encoded bytes of accepted images not yet decoded, at most (HTTP answers 503 beyond
    #: it); with ``queue_size`` this bounds the memory queued work can take.
    max_queued_bytes: int = Field(256 * MiB, gt=0)
    #: Seconds allowed for a graceful shutdown to finish in-flight work.
    shutdown_timeout: float = Field(30.0, gt=0)


class FeedbackSettings(_Section):
    """Joining delayed ground truth (``POST /v1/feedback``) to earlier predictions."""

    #: Predictions remembered for a later label, at most; the oldest are forgotten first.
    max_pending: int = Field(100_000, gt=0)
    #: Seconds a prediction waits for its label; later labels count as ``late``.
    ttl_seconds: float = Field(3600.0, gt=0)
    #: ``monitord_accuracy`` is the share of correct predictions among the last N labelled.
    accuracy_window: int = Field(500, gt=0)
    #: ... once at least this many labelled predictions are in the window (NaN before):
    #: one wrong label must not read as 0 % accuracy.
    min_labels: int = Field(50, gt=0)
    #: ... and NaN once no label came for this many seconds (evaluated at each scrape); the
    #: next label starts a new window.
    accuracy_max_age_seconds: float = Field(3600.0, gt=0)
    #: Seconds a label whose prediction is not known yet waits for it (it may still be in
    #: the inbox, or on its way through the stream) before it counts as ``unknown``; 0
    #: refuses such labels at once.
    grace_seconds: float = Field(60.0, ge=0)
    #: Largest ``POST /v1/feedback`` body in bytes, and most records in one request.
    max_body_bytes: int = Field(MiB, gt=0)
    max_records: int = Field(10_000, gt=0)

    @model_validator(mode="after")
    def _min_labels_fit_the_window(self) -> "FeedbackSettings":
        if self.min_labels > self.accuracy_window:
            raise ValueError(
                f"feedback.min_labels ({self.min_labels}) is larger than feedback.accuracy_window "
                f"({self.accuracy_window}), so monitord_accuracy could never be a number; "
                "lower min_labels or raise accuracy_window"
            )
        return self


class BusSettings(_Section):
    """The stream between inference and monitoring (see ``monitord run --role``)."""

    #: Unset: in-process, one process does both (the default: nothing else to run).
    #: ``redis://host:port/db`` (or ``rediss://``, ``unix:///path?db=0``): Redis Streams,
    #: any number of inference processes and one active monitor, on any hosts.
    url: str | None = None
    #: The stream's name, the prefix of every key it uses: one per model (or tenant).
    stream: str = Field("monitord", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: Entries (one a batch) published and not yet applied by the monitor, at most;
    #: beyond it inference refuses work (HTTP 503 with Retry-After, files wait in the inbox).
    max_lag: int = Field(1000, gt=0)
    #: Seconds between the monitor's checkpoints: after a crash or a takeover, at most
    #: this much is applied again (exactly once all the same). A state that takes long to
    #: write is written less often (at most a twentieth of the monitor's time).
    checkpoint_seconds: float = Field(1.0, gt=0)
    #: Seconds the active monitor's lease lasts unless renewed: a standby takes over
    #: about this long after the active one stopped.
    lease_seconds: float = Field(5.0, gt=0)
    #: Seconds ``POST /v1/feedback`` waits for the monitor's verdicts before answering
    #: 202 (accepted, verdicts counted in ``monitord_feedback_total`` on the monitor).
    reply_timeout_seconds: float = Field(5.0, gt=0)

    @property
    def transport(self) -> str:
        """The registered transport the URL's scheme names (``local`` without one)."""
        if not self.url:
            return "local"
        scheme, separator, _ = self.url.partition("://")
        return scheme.lower() if separator else self.url


class SnapshotSettings(_Section):
    """Detector state saved to ``<state_dir>/detectors.json`` and restored at start."""

    enabled: bool = True
    #: Seconds between snapshots while running (one is always taken at shutdown);
    #: after a crash at most this much detector history is lost.
    interval_seconds: float = Field(60.0, gt=0)


class PredictionsLogSettings(_Section):
    """The JSON-lines log of every prediction, in the state folder."""

    enabled: bool = True
    max_bytes: int = Field(50 * MiB, gt=0)
    #: Rotated files kept beside the live one (predictions.jsonl.1, .2, ...).
    backups: int = Field(5, ge=0)


class EstimatedAccuracySettings(_Section):
    """``monitord_estimated_accuracy``: accuracy without labels, from the model's confidence."""

    #: The estimate is over this many latest predictions (NaN until that many came): a
    #: smaller window follows a change sooner and is noisier (200: settled 200 images after
    #: an abrupt change, about ±1.4 points of noise on the digits model).
    window: int = Field(200, gt=0)


class StatusPageSettings(_Section):
    """The status page (``GET /``) and its data (``GET /v1/status``), kept in memory only."""

    enabled: bool = True
    #: Seconds between two samples of the page's history (the detectors, throughput,
    #: latency, accuracy); the history holds the last ``history_seconds``.
    sample_seconds: float = Field(10.0, ge=0.1)
    history_seconds: float = Field(3600.0, gt=0)
    #: Recent images kept per predicted class, as small thumbnails (0: none).
    thumbnails_per_class: int = Field(4, ge=0, le=32)


class ModelSettings(BaseModel):
    """The model. Keys beyond these belong to the model plugin, which validates them."""

    model_config = ConfigDict(extra="allow", validate_default=True)

    type: str = "torchvision"
    #: The trained model's folder; defaults to ``<state_dir>/model``.
    artifact: Path | None = None
    #: ``auto`` picks CUDA when present, else the CPU; or ``cpu``, ``cuda``, ``cuda:1``.
    device: str = "auto"

    def plugin_options(self) -> dict[str, Any]:
        """The keys this section holds for the model plugin."""
        return dict(self.model_extra or {})


class DetectorSpec(BaseModel):
    """One detector instance: a type from a detector plugin, the signal(s) it watches,
    where its reference comes from, and the type's own parameters (every other key)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1)
    #: One signal name, or a list of them for a multivariate detector (``nm_ddm``).
    signal: str | list[str]
    #: Name in metrics, alerts and ``GET /v1/detectors``; default ``<type>_<signal>``.
    name: str | None = Field(None, min_length=1)
    #: ``model``: the model's saved reference signals when it has them (else the
    #: stream); ``stream``: always the first ``reference_size`` samples of the stream.
    reference: Literal["model", "stream"] = "model"

    @field_validator("signal")
    @classmethod
    def _signal_names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not name for name in names):
            raise ValueError("name at least one signal, e.g. signal = \"confidence\"")
        if len(set(names)) != len(names):
            raise ValueError(f"signals must be distinct, got {names}")
        return value

    @property
    def signals(self) -> list[str]:
        return [self.signal] if isinstance(self.signal, str) else list(self.signal)

    @property
    def signal_label(self) -> str:
        """The ``signal`` label of the detector's metrics: names joined with ``+``."""
        return "+".join(self.signals)

    @property
    def label(self) -> str:
        return self.name or f"{self.type}_{'_'.join(self.signals)}"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AlertSettings(_Section):
    """The alert state machine: one alert per drift episode of a detector."""

    enabled: bool = True
    #: Also raise ``severity="warning"`` alerts (``MonitordDriftWarning``) at the warning level.
    warning_alerts: bool = True
    #: An episode resolves once its detector has seen ``resolve_after_samples`` samples
    #: without coming back to the level, and at least this many seconds passed since it
    #: last did. Time alone never resolves: a traffic pause keeps an episode open.
    cooldown_seconds: float = Field(60.0, ge=0)
    #: Samples without a detection before an episode resolves: above the gaps at which a
    #: restarting detector (PHT, the DDM family) re-detects a change that persists.
    resolve_after_samples: int = Field(1000, ge=1)
    #: Re-send a still-firing alert this often; 0 never re-sends.
    renotify_seconds: float = Field(3600.0, ge=0)
    #: Base of each alert's generatorURL; default ``http://<http.host>:<http.port>``.
    external_url: str = ""
    #: The ``instance`` label; default ``<http.host>:<http.port>`` (the host name for a
    #: wildcard host), what Prometheus calls a scrape target written that way. Set it to
    #: the target Prometheus scrapes when that is another name.
    instance: str = ""


class SinkSpec(BaseModel):
    """One alert sink instance: a ``type`` from a sink plugin, an optional ``name``, and the
    type's own keys (every other key), which the sink validates at start-up."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1)
    #: Name in logs, metrics (``sink`` label), the spool folder and the webhook ``receiver``.
    name: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    @property
    def label(self) -> str:
        return self.name or self.type

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def default_sinks() -> list[SinkSpec]:
    """Out of the box alerts go to the log only; add webhook or alertmanager sinks."""
    return [SinkSpec(type="log")]


def default_detectors() -> list[DetectorSpec]:
    """The detector set that runs out of the box (types from ``monitord-drift``).

    Each statistical threshold is set by its expected run time between false alarms on
    data like the reference (``ert``, 100,000 samples), not by a per-test level whose
    meaning depends on how often the detector tests (benchmarks/RESULTS.md, issue 18).
    Page-Hinkley on the confidence catches a shift of its mean; IKS on the entropy any
    change of its distribution; NM-DDM the joint distribution of the activation
    statistics;
    the class mix on the predicted class a label shift no input signal shows;
    the Bernoulli CUSUM on the error rate, once labels arrive, a rise from the rate it
    learns from the first 500 labels (HDDM_A, the default before, found 5 % → 10 % within
    1,000 labels in 1 of 20 streams; this one in 20 of 20).
    """
    return [
        DetectorSpec(type="pht", signal="confidence", ert=100_000),
        DetectorSpec(type="iks", signal="entropy", ert=100_000),
        DetectorSpec(type="nm_ddm", signal=["activation_mean", "activation_std"], ert=100_000),
        DetectorSpec(type="class_mix", signal="predicted_class", ert=100_000),
        DetectorSpec(type="bernoulli_cusum", signal="error", ert=100_000),
    ]


class Settings(BaseSettings):
    """Every setting of the daemon. See ``configs/monitord.toml``."""

    model_config = SettingsConfigDict(
        env_prefix="MONITORD_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        validate_default=True,
    )

    #: Enabled sources, by registered name.
    sources: list[str] = ["folder", "http"]
    state_dir: Path = Path("state")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http: HttpSettings = HttpSettings()
    folder: FolderSettings = FolderSettings()
    pipeline: PipelineSettings = PipelineSettings()
    predictions_log: PredictionsLogSettings = PredictionsLogSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    estimated_accuracy: EstimatedAccuracySettings = EstimatedAccuracySettings()
    status_page: StatusPageSettings = StatusPageSettings()
    model: ModelSettings = ModelSettings()
    detectors: list[DetectorSpec] = Field(default_factory=default_detectors)
    alerts: AlertSettings = AlertSettings()
    bus: BusSettings = BusSettings()
    #: Alert sinks, a list of instances (``[[sinks]]``).
    sinks: list[SinkSpec] = Field(default_factory=default_sinks)
    #: Settings of third-party sources, keyed by source name.
    source_options: dict[str, dict[str, Any]] = {}

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def model_artifact(self) -> Path:
        return self.model.artifact or self.state_dir / "model"

    #: The TOML file this class reads; ``load_settings`` makes a subclass per file.
    config_path: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        toml_file = cls.config_path
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


class SettingsError(Exception):
    """Settings that cannot be used; the message says which key and what to do."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``config_file`` (TOML), ``.env`` and the environment.

    Raises ``SettingsError`` naming each bad key with its value, never a traceback.
    """
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise SettingsError(f"config file {config_file} does not exist (given with --config)")
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SettingsError(f"config file {config_file} is not valid TOML: {error}") from None
    settings_cls = type("Settings", (Settings,), {"config_path": config_file})
    try:
        return settings_cls(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, config_file)) from None
    except PydanticSettingsError as error:
        raise SettingsError(describe_source_error(error)) from None


#: pydantic-settings' sources, by the name its errors give them.
_SOURCE_NAMES = {"EnvSettingsSource": "the environment", "DotEnvSettingsSource": ".env"}


def describe_source_error(error: PydanticSettingsError) -> str:
    """A value pydantic-settings could not even parse (malformed JSON in
    ``MONITORD_DETECTORS``, say), as one line naming the variable and what is wrong."""
    found = re.search(r'field "([^"]+)" from source "([^"]+)"', str(error))
    if found is None:
        return f"invalid settings: {error}"
    field, source = found.groups()
    variable = f"MONITORD_{field.upper()}"
    where = _SOURCE_NAMES.get(source, source)
    cause = error.__cause__
    reason = f"not valid JSON ({cause})" if isinstance(cause, ValueError) else f"cannot be parsed ({cause or error})"
    return (f"invalid settings: {variable} in {where} is {reason}; it takes a JSON value such as "
            f"{_JSON_EXAMPLES.get(field, '[...]')}")


_JSON_EXAMPLES = {
    "detectors": '\'[{"type": "pht", "signal": "confidence"}]\'',
    "sinks": '\'[{"type": "log"}]\'',
    "sources": '\'["folder", "http"]\'',
}


#: Settings whose values never appear in error messages or logs.
SECRET_KEYS = frozenset({"token", "secret", "password"})


def describe_validation_error(
    error: ValidationError, config_file: Path | None = None, prefix: tuple[str, ...] = ()
) -> str:
    """One line per bad key: dotted name, the value given, what is wrong, where to fix.

    ``prefix`` places a plugin's own section (``("model",)``) under its settings key.
    """
    where = f"{config_file}, " if config_file else ""
    lines = [f"invalid settings ({len(error.errors())} problems):"]
    for problem in error.errors():
        loc = (*prefix, *problem["loc"])
        key = ".".join(str(part) for part in loc)
        env = "MONITORD_" + "__".join(str(p).upper() for p in loc if isinstance(p, str))
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown setting (value {problem['input']!r}); check the spelling")
            continue
        secret = any(isinstance(part, str) and part in SECRET_KEYS for part in loc)
        shown = "<hidden>" if secret else repr(problem["input"])
        lines.append(f"  {key} = {shown}: {problem['msg']} (set it in {where}.env or {env})")
    if len(lines) == 2:
        return f"invalid settings: {lines[1].strip()}"
    return "\n".join(lines)
