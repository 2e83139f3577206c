"""Built-in commands ``run``, ``plugins``, ``replay`` and ``reference``, added through ``register_commands``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import click

from monitord.hookspecs import hookimpl
from monitord.plugins import KINDS, PluginError, PluginHost, Registration
from monitord.settings import Settings, SettingsError, load_settings

config_option = click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MONITORD_CONFIG",
    help="TOML settings file (see configs/monitord.toml). Env: MONITORD_CONFIG.",
)


class ConfigurationError(click.ClickException):
    """Settings that cannot work: printed without a traceback, exit status 2."""

    exit_code = 2


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command()
    @config_option
    @click.option("--role", type=click.Choice(["all", "inference", "monitor"]), default="all", show_default=True,
                  envvar="MONITORD_ROLE",
                  help="inference: sources, model, publishing to the stream; monitor: detectors, labels, "
                       "alerts from the stream; all: both (the only one without bus.url). Env: MONITORD_ROLE.")
    @click.pass_obj
    def run(host: PluginHost, config: Path | None, role: str) -> None:
        """Run the daemon: watch the inbox, serve HTTP, export metrics.

        With no settings at all it trains the default digits model on first use,
        watches ./inbox and serves http://127.0.0.1:8000. With bus.url it plays one role
        (or both) beside other processes on one stream (Redis): see the README's
        "Scaling out".

        The whole configuration is checked first (exit status 2 naming each bad key),
        then the state folder is locked (one daemon per state_dir, exit status 1 if
        another holds it), and only then is anything loaded or bound.
        """
        from monitord.logging_setup import configure_logging
        from monitord.preflight import check_configuration
        from monitord.state_lock import StateDirInUse, lock_state_dir

        # Until the daemon's event loop takes the signals over, SIGTERM stops as Ctrl-C
        # does (``monitord.cli.main`` makes it raise KeyboardInterrupt).
        try:
            try:
                settings = load_settings(config)
                check_configuration(settings, host, role)
            except (SettingsError, PluginError) as error:
                raise ConfigurationError(str(error)) from None
            configure_logging(settings.log_level, os.environ.get("MONITORD_LOG_TAG"))
            try:
                lock = lock_state_dir(settings.state_dir)
            except StateDirInUse as error:
                raise click.ClickException(str(error)) from None
        except KeyboardInterrupt:
            sys.exit(0)  # stopped before anything started: nothing to undo
        if settings.pipeline.workers:
            from monitord.supervisor import Supervisor

            try:
                sys.exit(asyncio.run(Supervisor(settings, config).run()))
            finally:
                lock.release()
        try:
            daemon_exit, unfinished = asyncio.run(_run_daemon(settings, host, role))
        except KeyboardInterrupt:
            daemon_exit, unfinished = 0, []  # before the daemon took the signals over
        except PluginError as error:
            raise click.ClickException(str(error)) from None
        finally:
            lock.release()
        if unfinished:
            # Start-up jobs abandoned by a stop (a model still loading or training) cannot
            # be interrupted, and interpreter shutdown would wait for or trip over them.
            logging.getLogger("monitord").info("leaving %s unfinished", ", ".join(unfinished))
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(daemon_exit)
        sys.exit(daemon_exit)

    @cli.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.pass_obj
    def plugins(host: PluginHost, as_json: bool) -> None:
        """List loaded plugins and what each registered (name, kind, distribution, version)."""
        rows = [reg for kind in KINDS for reg in host.registered(kind).values()]
        rows += host.command_registrations
        if as_json:
            click.echo(json.dumps([reg.to_json() for reg in rows], indent=2))
            return
        click.echo(_table(rows))

    from monitord.builtin.reference_command import reference_command
    from monitord.builtin.replay import replay_command

    cli.add_command(replay_command())
    cli.add_command(reference_command())


async def _run_daemon(settings: Settings, host: PluginHost, role: str) -> tuple[int, list[str]]:
    """The daemon's exit code, and the start-up jobs it left running (see ``background``)."""
    from monitord.daemon import Daemon

    daemon = Daemon(settings, host, role)  # type: ignore[arg-type]
    code = await daemon.run()
    return code, daemon.background.unfinished()


def _table(rows: list[Registration]) -> str:
    header = ("NAME", "KIND", "DISTRIBUTION", "VERSION", "PLUGIN")
    body = [(r.name, r.kind, r.plugin.distribution, r.plugin.version, r.plugin.name) for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body])
