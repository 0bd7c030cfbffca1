"""The `syndicate` command.

Errors are one clear line on stderr: exit code 2 for usage and config mistakes, 1 for runtime failures.
Operator commands (failed, replay, retract, channels) go through ``syndicate.operations``, the layer the HTTP API
uses too, so the CLI and the API select the same deliveries and print the same JSON views.

This module is the group, its global options and ``main``; the commands live one module per job and are added
here, so every command is listed in one place:

* ``publish``: publish (local store or the signed hook, ``--url``); ``documents``: reading story documents
* ``rendering``: preview
* ``deliveries``: status, failed, landed, retract; ``replay``: replay
* ``channels``: channels (``--check``), pause, resume
* ``reach``: reach (a story's figures per channel, or the period's ranking)
* ``admin``: serve, work, db migrate / db stats, sessions revoke-all, sandbox
* ``common``: what they share (options, settings, store, formatting). Command modules import ``common``, never
  this package, so there is no import cycle.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from syndicate.cli import admin, channels, deliveries, publish, reach, rendering, replay
from syndicate.cli.common import config_option, err
from syndicate.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="Logs on stderr: one JSON object per line, or text (auto: text on a terminal, JSON otherwise).",
)
def cli(config_path: Path | None, verbose: int, log_format: str) -> None:
    """syndicate: write a story once, publish it on every channel, never twice, never lost."""
    level = logging.WARNING - 10 * min(verbose, 2)
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    # Secrets are added to the redaction list as soon as a command loads its config (see load_settings).
    configure_logging(None, fmt="json" if log_format == "json" else "text", level=level)


cli.add_command(publish.publish)
cli.add_command(rendering.preview)
cli.add_command(deliveries.status)
cli.add_command(deliveries.failed)
cli.add_command(deliveries.landed)
cli.add_command(deliveries.retract)
cli.add_command(replay.replay)
cli.add_command(channels.channels_command)
cli.add_command(channels.pause)
cli.add_command(channels.resume)
cli.add_command(reach.reach)
cli.add_command(admin.serve)
cli.add_command(admin.work)
cli.add_command(admin.db)
cli.add_command(admin.sessions)
cli.add_command(admin.sandbox)


def main() -> None:
    """Console-script entry point: map our exceptions onto exit codes and one-line messages."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        err.print(f"syndicate: error: {exc.format_message()}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
