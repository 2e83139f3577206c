"""The hooks: the ``report`` command and the ``GET /v1/report`` route.

Neither Evidently nor pandas is imported here: a daemon loads this module at start and
pays for them only when a report is asked for.
"""

from __future__ import annotations

import click
from monitord.hookspecs import Register, hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    from monitord_evidently.command import report_command

    cli.add_command(report_command())


# optionalhook: a monitord from before ``register_routes`` still loads the command.
@hookimpl(optionalhook=True)
def register_routes(register: Register) -> None:
    from monitord_evidently.route import report_route

    register("/v1/report", report_route)
