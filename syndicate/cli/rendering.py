"""`syndicate preview`: render a story for one channel and show exactly what would be sent, its length in the
channel's own counting and what rendering trimmed. Nothing is stored or sent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from syndicate.cli.common import config_option, json_option, load_settings, out, print_json, unknown_channel
from syndicate.cli.documents import print_bad, read_files
from syndicate.config import ChannelSettings
from syndicate.delivery import Action, RenderError
from syndicate.ninjs import read_document
from syndicate.story import StoryValidationError


@click.command()
@click.argument("file", type=click.Path(exists=True, allow_dash=True, dir_okay=False))
@config_option
@click.option("--channel", "channel", required=True, metavar="NAME", help="The configured channel to render for.")
@click.option(
    "--action",
    type=click.Choice([a.value for a in Action]),
    default=None,
    help="What to render (default: retract for a withheld or canceled story, else publish).",
)
@json_option
@click.pass_context
def preview(
    ctx: click.Context, file: str, config_path: Path | None, channel: str, action: str | None, as_json: bool
) -> None:
    """Show exactly what CHANNEL would be sent for the story in FILE: the payload, its length in the channel's own
    counting and what rendering trimmed. Nothing is stored or sent."""
    settings = load_settings(ctx, config_path)
    ch = settings.channels.get(channel)
    if ch is None:
        raise unknown_channel(settings, channel)
    adapter = ch.create_adapter()
    results: list[dict[str, Any]] = []
    for doc in read_files([file]):
        if doc.error is not None:
            results.append({"source": doc.where, "ok": False, "errors": [doc.error]})
            continue
        try:
            story = read_document(doc.obj)
        except StoryValidationError as exc:
            results.append({"source": doc.where, "ok": False, "errors": [str(e) for e in exc.errors]})
            continue
        act = Action(action) if action else (Action.RETRACT if story.is_retraction else Action.PUBLISH)
        base = {
            "source": doc.where,
            "story_id": story.id,
            "version": story.version,
            "channel": channel,
            "kind": ch.kind,
            "enabled": ch.enabled,
            "action": act.value,
            "targeted": story.targets is None or channel in story.targets,
        }
        if act not in adapter.actions:
            results.append({**base, "ok": True, "skipped": adapter.unsupported_reason(act), "payload": None})
            continue
        try:
            payload = adapter.render(story, act)
        except RenderError as exc:
            results.append({"source": doc.where, "ok": False, "errors": [f"cannot render for {channel}: {exc}"]})
            continue
        results.append(
            {
                **base,
                "ok": True,
                "skipped": None,
                "text_length": payload.text_length,
                "warnings": list(payload.warnings),
                "payload": payload.readable_data(),
            }
        )

    bad = [r for r in results if not r["ok"]]
    if as_json:
        print_json({"previews": results})
    else:
        for r in results:
            if r["ok"]:
                _print_preview(r, ch)
            else:
                print_bad(r["source"], r["errors"])
    if bad:
        sys.exit(1)


def _print_preview(r: dict[str, Any], ch: ChannelSettings) -> None:
    disabled = " (disabled)" if not ch.enabled else ""
    out.print(
        f"[bold]{escape(r['source'])}[/]: {escape(r['story_id'])} v{r['version']} -> {ch.name} "
        f"({ch.kind}{disabled}), {r['action']}",
        soft_wrap=True,
    )
    if not r["targeted"]:
        out.print(f"note: the story's targets do not include {ch.name}: it would not be sent there", soft_wrap=True)
    if r["skipped"]:
        out.print(f"nothing to send: {escape(r['skipped'])} (the delivery would be recorded as skipped)")
        return
    print_json(r["payload"])
    length = "no text limit" if r["text_length"] is None else f"{r['text_length']} (in {ch.kind}'s own counting)"
    out.print(f"length: {length}", highlight=False)
    if not r["warnings"]:
        out.print("warnings: none (nothing trimmed)")
    for warning in r["warnings"]:
        out.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)
