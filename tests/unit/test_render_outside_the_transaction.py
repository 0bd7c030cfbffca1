"""Issue 15 item 3: a story is rendered before its fan-out transaction, in the engine's render threads. While one
story renders, no store connection or store thread waits on it: other stories are accepted and the store takes
writes. When the story's deliveries change between the read the renderings were made from and the transaction,
the transaction refuses the stale renderings and the story is rendered again from what the store now holds."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, ClassVar

from syndicate.channel import Adapter, AdapterOptions, register
from syndicate.delivery import Action, Payload, Receipt
from syndicate.engine import Engine
from syndicate.store.base import FanOutBasis, State, Store
from syndicate.store.sqlite import SQLiteStore
from syndicate.story import ChannelStory
from tests.support import make_settings, make_story


class HeldRender(Adapter[AdapterOptions, Any]):
    """Renders a headline containing HOLD only once the test lets it; counts every rendering by action."""

    kind: ClassVar[str] = "held_render"
    options_model = AdapterOptions
    actions: ClassVar[frozenset[Action]] = frozenset(Action)
    idempotent = True
    rendering = threading.Event()
    release = threading.Event()
    renders: ClassVar[list[tuple[str, str, str]]] = []

    def format(self, story: ChannelStory, action: Action) -> Payload[Any]:
        self.renders.append((story.id, action.value, threading.current_thread().name))
        if "HOLD" in story.headline:
            self.rendering.set()
            assert self.release.wait(timeout=10), "the test never released the render"
        return Payload({"id": story.id, "action": action.value})

    async def publish(self, payload: Payload[Any], ctx: Any) -> Receipt:
        return Receipt(remote_id=str(ctx.delivery_id))

    update = retract = publish


register(HeldRender)


def _engine(tmp_path: Path, store: Store) -> Engine:
    return Engine(make_settings(tmp_path, {"held": {"kind": "held_render", "retry": [0]}}), store)


async def test_other_stories_are_accepted_while_one_renders(tmp_path: Path) -> None:
    HeldRender.renders.clear()
    HeldRender.rendering.clear()
    HeldRender.release.clear()
    store = SQLiteStore(tmp_path / "render.db")
    await store.migrate()
    try:
        async with _engine(tmp_path, store) as engine:
            held = asyncio.create_task(engine.accept(make_story(id="big", headline="HOLD 大稿件")))
            assert await asyncio.to_thread(HeldRender.rendering.wait, 5)
            # The big story is mid-render: the one store thread is free, so a small story goes all the way through.
            small = await asyncio.wait_for(engine.accept(make_story(id="small")), timeout=5)
            assert small.created and [d.state for d in small.deliveries] == [State.QUEUED]
            await asyncio.wait_for(store.kv_set("k", "v", expires_at=None, now=0.0), timeout=5)
            assert not held.done()
            HeldRender.release.set()
            big = await asyncio.wait_for(held, timeout=5)
            assert big.created and [d.payload.data["id"] for d in big.deliveries if d.payload] == ["big"]
    finally:
        HeldRender.release.set()
        await store.close()
    # Every rendering ran in a render thread, none on the event loop or in the store's thread.
    assert {thread.split("_")[0] for _, _, thread in HeldRender.renders} == {"syndicate-render"}


class StaleBasis(SQLiteStore):
    """Answers the first basis read as if the story had no deliveries yet: what a read sees when a worker settles
    the story's deliveries between it and the transaction."""

    stale_reads = 1

    async def fan_out_basis(self, story_id: str) -> FanOutBasis:
        basis = await super().fan_out_basis(story_id)
        if self.stale_reads and basis.existing:
            self.stale_reads -= 1
            return FanOutBasis(None, [], None)
        return basis


async def test_renderings_from_a_stale_read_are_refused_and_made_again(tmp_path: Path) -> None:
    HeldRender.renders.clear()
    store = StaleBasis(tmp_path / "stale.db")
    await store.migrate()
    try:
        async with _engine(tmp_path, store) as engine:
            await engine.accept(make_story(id="s", version=1))
            await engine.run(until_idle=True)
            HeldRender.renders.clear()
            # The stale read says "never published": the pass renders a publish; the transaction sees the delivered
            # publish, needs an update, and rolls back; the next pass renders the update from the fresh read.
            result = await engine.accept(make_story(id="s", version=2, headline="第二版"))
    finally:
        await store.close()
    assert [(d.action, d.state) for d in result.deliveries] == [(Action.UPDATE, State.QUEUED)]
    assert [(story, action) for story, action, _ in HeldRender.renders] == [("s", "publish"), ("s", "update")]


async def test_a_resent_version_renders_nothing(tmp_path: Path) -> None:
    HeldRender.renders.clear()
    store = SQLiteStore(tmp_path / "resend.db")
    await store.migrate()
    try:
        async with _engine(tmp_path, store) as engine:
            first = await engine.accept(make_story(id="r"))
            again = await engine.accept(make_story(id="r"))
    finally:
        await store.close()
    assert first.created and not again.created
    assert len(HeldRender.renders) == 1  # the CMS's retry of an accepted version costs no rendering
