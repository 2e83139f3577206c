"""The ``monitord`` command: a click group that plugins extend (``register_commands``)."""

from __future__ import annotations

import signal
import sys

import click

from monitord import __version__
from monitord.plugins import PluginError, PluginHost, load_plugins


def make_cli() -> tuple[click.Group, PluginHost]:
    """Load plugins and let each add its commands; the host rides along in ``ctx.obj``."""

    @click.group(name="monitord", context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="monitord")
    def cli() -> None:
        """monitord: watch a deployed image classifier and tell its owners when data drifts."""

    host = load_plugins()
    host.command_registrations = host.add_commands(cli)
    return cli, host


def main() -> None:
    # SIGTERM stops like Ctrl-C until a command (the daemon's event loop) takes it over.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cli, host = make_cli()
    except PluginError as error:
        click.echo(f"monitord: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)  # stopped while loading plugins: nothing had started
    cli(prog_name="monitord", obj=host)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
