"""syndicate's benchmarks (`make bench`): figures printed as a table and saved as JSON and a PNG chart.

Everything runs against the sandbox on loopback, in a separate process from the code being measured, and each
figure is the median of several runs. These are measurements, never assertions: the machine is shared and noisy.

1. throughput: deliveries/s through syndicate (SQLite and PostgreSQL) to the webhook stand-in, beside a plain
   aiohttp loop POSTing the same payloads at the same concurrency with no queue at all (the physical limit), and
   beside arq on Redis doing the same job (POST each payload, retry on failure).
2. latency: publish hook answer (p50/p99) and publish-to-first-attempt (p50/p99) at a steady request rate.
3. isolation: healthy channels' throughput while another channel's endpoint hangs.
4. backlog: claim latency, drain rate and worker memory with a large queued backlog.
5. fan-out width: one story to 1, 8 and 32 channels.
6. archive scale: website and rss deliveries/s, and bytes written per delivery, with 1,000, 10,000 and 100,000
   stories already published (``--archive``), through the Adapter contract (``render`` then ``publish``) only.
7. processes: `syndicate work --processes P --until-idle` on PostgreSQL for P = 1, 2, 4: deliveries/s, the ratio
   to one process, and the worker processes' CPU per delivery, labelled with the machine's core count.

``--sections`` picks which of them run (e.g. ``make bench BENCH_ARGS="--sections archive"``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.webhook.adapter import WebhookAdapter  # noqa: E402
from syndicate.channel import DeliveryContext, get_adapter_class, register  # noqa: E402
from syndicate.cli.common import run_async, settle_heap  # noqa: E402
from syndicate.config import Settings, parse_config  # noqa: E402
from syndicate.delivery import Payload, Receipt  # noqa: E402
from syndicate.engine import Engine  # noqa: E402
from syndicate.store import open_store  # noqa: E402
from syndicate.store.base import Completion, DeliveryFilter, State  # noqa: E402
from syndicate.story import Image, Story  # noqa: E402

PG_DSN = os.environ.get("SYNDICATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
RESULTS = REPO / "bench" / "results"
BODY = "<p>" + "上海16区融媒体中心全部建成并挂牌。" * 20 + "</p>"


@register
class NoNetworkAdapter(WebhookAdapter):
    """The webhook adapter with the request taken out (it answers at once): a measuring probe, used only here, that
    isolates what the queue costs per delivery (claim, attempt row, outcome write, task, timeout)."""

    kind = "bench-no-network"

    async def _post(self, payload: Payload, ctx: DeliveryContext) -> Receipt:
        return Receipt(remote_id=ctx.idempotency_key)


def story(i: int, prefix: str = "b") -> Story:
    return Story.from_dict(
        {"id": f"{prefix}{i}", "headline": f"第{i}条: 上海16区融媒体中心全部建成并挂牌", "body_html": BODY}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def sandbox_process() -> AsyncIterator[str]:
    """The sandbox in its own process, so it does not share a CPU core's event loop with what is measured."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "syndicate"),
        "sandbox",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(url + "/_sandbox/health"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=10)


async def control(url: str, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url + path, json=body) as resp:
        return await resp.json() if resp.content_type == "application/json" else None


def settings_for(store_url: str, sandbox: str, channels: dict[str, dict[str, Any]]) -> Settings:
    full = {
        name: {
            "kind": "webhook",
            "url": f"{sandbox}/webhook/{name}",
            "secret": "bench-secret",
            "timeout": 10,
            "retry": [0, 0.05, 0.1, 0.2, 0.5, 1],
            **extra,
        }
        for name, extra in channels.items()
    }
    raw = {
        "store": {"url": store_url},
        "engine": {"poll_interval": 0.5, "claim_batch": 256, "retry_jitter": 0},
        "channels": full,
    }
    return parse_config(raw, source="bench", env={})


@contextlib.asynccontextmanager
async def store_url(kind: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def pg_available() -> bool:
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN, timeout=3)
        await conn.close()
        return True
    except Exception:
        return False


# --- 1. throughput -----------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process (user + system, every thread): the resource a single worker process spends."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: CPU microseconds per delivery of the last timed run of each kind (read by `cpu_breakdown`).
CPU_US: dict[str, list[float]] = {}


def _account(kind: str, cpu_started: float, n: int) -> None:
    CPU_US.setdefault(kind, []).append((cpu_seconds() - cpu_started) / n * 1e6)


async def raw_loop(sandbox: str, n: int, concurrency: int) -> float:
    """The physical limit: POST the same rendered payloads at the same concurrency, no queue, no store."""
    from adapters.webhook.adapter import WebhookOptions
    from syndicate.delivery import Action

    adapter = WebhookAdapter("raw", WebhookOptions(url=f"{sandbox}/webhook/raw", secret="bench-secret"), timeout=10)
    bodies = [adapter.render(story(i, "raw"), Action.PUBLISH).data.request_body() for i in range(n)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(
                    f"{sandbox}/webhook/raw", data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()

        started, cpu = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        _account("raw", cpu, n)
        return n / elapsed


async def adapter_loop(sandbox: str, n: int, concurrency: int) -> float:
    """The webhook adapter's own send path (encode, sign, POST, read the receipt) at the same concurrency, with no
    queue: what a delivery costs before the queue adds anything."""
    from adapters.webhook.adapter import WebhookOptions
    from syndicate.delivery import Action

    adapter = WebhookAdapter("ad", WebhookOptions(url=f"{sandbox}/webhook/ad", secret="bench-secret"), timeout=10)
    payloads = [adapter.render(story(i, f"ad-{uuid.uuid4().hex[:4]}-"), Action.PUBLISH) for i in range(n)]
    pending = iter(enumerate(payloads))

    async def refused(*_: Any) -> Any:
        raise RuntimeError("the webhook adapter keeps no state")

    await adapter.start()
    try:

        async def worker() -> None:
            for i, payload in pending:
                ctx = DeliveryContext(
                    delivery_id=i,
                    story_id=f"ad{i}",
                    version=1,
                    channel="ad",
                    action=Action.PUBLISH,
                    attempt=1,
                    state={},
                    receipt=None,
                    save_checkpoint=refused,
                    kv_get=refused,
                    kv_set=refused,
                    kv_add=refused,
                )
                await adapter.send(payload, ctx)

        started, cpu = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        _account("adapter", cpu, n)
        return n / elapsed
    finally:
        await adapter.close()


async def syndicate_drain(
    kind: str, sandbox: str, n: int, concurrency: int, channels: int = 1, *, adapter: str = "webhook"
) -> float:
    """Stories fanned out first (not timed), then the timed drain of n x channels deliveries."""
    names = {f"c{i}": {"concurrency": concurrency, "kind": adapter} for i in range(channels)}
    async with store_url(kind) as url:
        settings = settings_for(url, sandbox, names)
        store = open_store(url)
        await store.migrate()
        try:
            async with Engine(settings, store) as engine:
                for i in range(n):
                    await engine.accept(story(i, f"{kind}-{uuid.uuid4().hex[:4]}-"))
                settle_heap()  # as `syndicate work` does once it has started
                started, cpu = time.perf_counter(), cpu_seconds()
                await engine.run(until_idle=True)
                elapsed = time.perf_counter() - started
                _account(f"{kind}-{adapter}", cpu, n * channels)
                return n * channels / elapsed
        finally:
            await store.close()


async def arq_drain(sandbox: str, n: int, concurrency: int) -> float | None:
    """The same job in arq on Redis: POST each payload, retry on failure."""
    try:
        from arq import create_pool
        from arq.connections import RedisSettings
        from arq.worker import Retry, Worker, func
    except ImportError:
        return None
    queue_name = f"bench:{uuid.uuid4().hex[:8]}"
    redis = RedisSettings()
    pool = await create_pool(redis, default_queue_name=queue_name)
    body = json.dumps({"event": "publish", "story": story(0).to_dict()}).encode()
    session = aiohttp.ClientSession()

    async def post(ctx: dict[str, Any], i: int) -> None:
        async with session.post(f"{sandbox}/webhook/arq", data=body, headers={"Idempotency-Key": f"arq-{i}"}) as resp:
            if resp.status >= 500:
                raise Retry(defer=0.05)
            await resp.read()

    for i in range(n):
        await pool.enqueue_job("post", i)
    worker = Worker(
        functions=[func(post, name="post")],
        redis_pool=pool,
        queue_name=queue_name,
        max_jobs=concurrency,
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        keep_result=0,
    )
    started = time.perf_counter()
    await worker.main()
    elapsed = time.perf_counter() - started
    await worker.close()
    await session.close()
    await pool.aclose()
    return n / elapsed


# --- 2. latency --------------------------------------------------------------------------------------------------


def max_size_story(i: int) -> dict[str, Any]:
    """A story at every text bound of the intake (README's table): 1,000-character headline, 5,000-character
    summary, 1,000,000-character body, 50 tags: what the renderers (text fitting, HTML cleaning) find heaviest."""
    paragraph = "<p>" + "宝山、闵行两个区级融媒体中心正式挂牌，上海16区融媒体中心全部建成。" * 20 + "</p>"
    body = (paragraph * (1_000_000 // len(paragraph)))[:999_000]
    body = body[: body.rfind("</p>") + 4]
    return {
        "id": f"heavy{i}",
        "headline": ("上海16区融媒体中心全部建成并挂牌" * 70)[:1000],
        "summary": ("宝山、闵行两个区级融媒体中心正式挂牌，这是上海区级融媒体中心建设的重要一步。" * 150)[:5000],
        "body_html": body,
        "tags": [f"融媒体{n}" for n in range(50)],
        "url": f"https://news.example.cn/heavy/{i}.html",
        "targets": list(HEAVY_CHANNELS),
    }


#: The channels a maximum-size story goes to in the latency-under-render run: those with the costly renderers.
HEAVY_CHANNELS = ("site", "feed", "x", "weibo")


def _heavy_channels(sandbox: str, root: Path) -> dict[str, dict[str, Any]]:
    # Their deliveries are beside the point (the channels are paused before the run): what is measured is the
    # hook's answer while these stories render and are written. Delivering them in the same process (website pages
    # of 1 MB, feeds) competes with intake for the one core a Python process has: run `syndicate work` apart.
    return {
        "site": {"kind": "website", "root": str(root / "site"), "base_url": "https://news.example.cn"},
        "feed": {"kind": "rss", "root": str(root / "feed"), "title": "bench", "link": "https://news.example.cn/"},
        "x": {
            "kind": "x",
            "api_base": sandbox,
            "consumer_key": "k",
            "consumer_secret": "s",
            "access_token": "t",
            "access_token_secret": "ts",
        },
        "weibo": {
            "kind": "weibo",
            "api_base": sandbox,
            "access_token": "t",
            "safe_domain": "news.example.cn",
            "rip": "203.0.113.10",
        },
    }


async def hook_latency(sandbox: str, rate: float, seconds: float, *, heavy: bool = False) -> dict[str, float]:
    """The hook's answer for small stories at ``rate``; with ``heavy``, while maximum-size stories are accepted
    back to back beside them (their rendering must not hold the small ones' intake; their channels are paused, so
    what competes is their rendering and their write, not their delivery)."""
    from aiohttp import web

    from syndicate.server import create_app
    from syndicate.signing import SIGNATURE_HEADER, sign

    async with store_url("sqlite") as url:
        root = Path(tempfile.mkdtemp(prefix="syndicate-bench-heavy-"))
        (root / "site").mkdir()
        raw = {
            "store": {"url": url},
            "engine": {"poll_interval": 0.5, "retry_jitter": 0},
            "server": {
                "hook_secret": "bench-hook-secret-000",
                "api_token": "bench-api-token-0000",
                "max_body_bytes": 8 * 1024 * 1024,
            },
            "channels": {
                "lat": {"kind": "webhook", "url": f"{sandbox}/webhook/lat", "secret": "s", "timeout": 10},
                **(_heavy_channels(sandbox, root) if heavy else {}),
            },
        }
        settings = parse_config(raw, source="bench", env={})
        store = open_store(url)
        await store.migrate()
        async with Engine(settings, store) as engine:
            app = create_app(settings, engine)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            stop = asyncio.Event()
            if heavy:
                for name in HEAVY_CHANNELS:
                    await store.pause_channel(name, until=time.time() + 3600, reason="bench", now=time.time())
            worker = asyncio.create_task(engine.run(stop=stop))
            answers: list[float] = []
            sent_at: dict[str, float] = {}
            async with aiohttp.ClientSession() as session:

                async def post(document: dict[str, Any]) -> int:
                    body = json.dumps(document, ensure_ascii=False).encode()
                    headers = {
                        "Content-Type": "application/json",
                        SIGNATURE_HEADER: sign("bench-hook-secret-000", body),
                    }
                    async with session.post(f"http://127.0.0.1:{port}/v1/stories", data=body, headers=headers) as r:
                        await r.read()
                        return r.status

                async def one(i: int) -> None:
                    document = story(i, "lat").to_dict()
                    if heavy:
                        document["targets"] = ["lat"]
                    t0 = time.perf_counter()
                    sent_at[f"lat{i}"] = time.time()
                    await post(document)
                    answers.append((time.perf_counter() - t0) * 1000)

                heavy_answers: list[float] = []
                first_heavy = asyncio.Event()

                async def heavy_loop() -> None:
                    for i in range(10**6):
                        t0 = time.perf_counter()
                        status = await post(max_size_story(i))
                        if status != 202:
                            raise RuntimeError(f"the maximum-size story was refused ({status})")
                        heavy_answers.append((time.perf_counter() - t0) * 1000)
                        first_heavy.set()

                heavy_task = asyncio.create_task(heavy_loop()) if heavy else None
                if heavy_task is not None:  # measure from the first one accepted: steady state
                    first = asyncio.create_task(first_heavy.wait())
                    await asyncio.wait({first, heavy_task}, return_when=asyncio.FIRST_COMPLETED)
                    first.cancel()
                tasks = []
                count = int(rate * seconds)
                t_start = time.perf_counter()
                for i in range(count):
                    tasks.append(asyncio.create_task(one(i)))
                    await asyncio.sleep(max(0.0, t_start + (i + 1) / rate - time.perf_counter()))
                await asyncio.gather(*tasks)
                if heavy_task is not None:
                    heavy_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await heavy_task
                deadline = time.time() + (0 if heavy else 30)
                while await store.any_claimable(["lat"], now=time.time()) or await store.count_in_flight():
                    if time.time() > deadline:
                        break
                    await asyncio.sleep(0.1)
            stop.set()
            await worker
            await runner.cleanup()
            if heavy:
                await store.close()
                return {
                    "hook_p50_ms_beside_max_size_stories": percentile(answers, 50),
                    "hook_p99_ms_beside_max_size_stories": percentile(answers, 99),
                    "max_size_story_accept_ms_p50": percentile(heavy_answers, 50),
                    "max_size_stories_accepted": float(len(heavy_answers)),
                }
            first_attempt = []
            for d in await store.list_deliveries(DeliveryFilter(channels=["lat"])):
                attempts = await store.attempts(d.id)
                if attempts:
                    first_attempt.append((attempts[0].started_at - sent_at[d.story_id]) * 1000)
        await store.close()
    return {
        "hook_p50_ms": percentile(answers, 50),
        "hook_p99_ms": percentile(answers, 99),
        "first_attempt_p50_ms": percentile(first_attempt, 50),
        "first_attempt_p99_ms": percentile(first_attempt, 99),
    }


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- 3. isolation ------------------------------------------------------------------------------------------------


async def isolation(sandbox: str, n: int, concurrency: int) -> dict[str, float]:
    baseline = await syndicate_drain("sqlite", sandbox, n, concurrency, channels=2)
    await control(
        sandbox,
        "POST",
        "/_sandbox/faults",
        {"platform": "webhook", "rules": [{"fault": "timeout_before", "probability": 1.0, "name": "stuck"}]},
    )
    names = {"c0": {"concurrency": concurrency}, "c1": {"concurrency": concurrency}, "stuck": {"concurrency": 4}}
    async with store_url("sqlite") as url:
        settings = settings_for(url, sandbox, names)
        store = open_store(url)
        await store.migrate()
        async with Engine(settings, store) as engine:
            for i in range(n):
                await engine.accept(story(i, "iso"))
            stop = asyncio.Event()
            started = time.perf_counter()
            runner = asyncio.create_task(engine.run(stop=stop, grace=0))
            while True:
                depth = await store.queue_depth()
                done = sum(v for (ch, st), v in depth.items() if ch in ("c0", "c1") and st.value == "delivered")
                if done >= 2 * n:
                    break
                await asyncio.sleep(0.02)
            healthy = 2 * n / (time.perf_counter() - started)
            stop.set()
            await runner
        await store.close()
    await control(sandbox, "DELETE", "/_sandbox/faults")
    return {"baseline_per_s": baseline, "with_hanging_channel_per_s": healthy, "ratio": healthy / baseline}


# --- 4. backlog --------------------------------------------------------------------------------------------------


async def backlog(sandbox: str, size: int, drain: int) -> dict[str, float]:
    """Queue `size` deliveries (bulk-inserted, each with a full rendered webhook payload), measure claim latency at
    that depth, then let a real `syndicate work` process drain the first `drain` while its memory is sampled."""
    import sqlite3

    async with store_url("sqlite") as url:
        store = open_store(url)
        await store.migrate()
        path = url[len("sqlite:///") :]
        now = time.time()
        from syndicate.delivery import Action

        payload = dumps_payload(story(0, "bk"))
        conn = sqlite3.connect(path)
        with conn:
            conn.executemany(
                "INSERT INTO deliveries (story_id, version, channel, action, state, due_at, created_at, updated_at)"
                " VALUES (?, 1, 'bk', ?, 'queued', ?, ?, ?)",
                ((f"bk{i}", Action.PUBLISH.value, now + i * 1e-6, now, now) for i in range(size)),
            )
            # Each payload beside its delivery, as a fan-out writes it (migration 4).
            conn.execute("INSERT INTO payloads (delivery_id, body) SELECT id, ? FROM deliveries", (payload,))
        claims = []
        for _ in range(20):
            t0 = time.perf_counter()
            got = await store.claim("probe", now=time.time(), lease_seconds=30, limits={"bk": 32})
            claims.append((time.perf_counter() - t0) * 1000)
            await store.complete(
                [
                    Completion(c.delivery.id, c.attempt_id, "probe", State.DELIVERED, "delivered", time.time(), 1.0)
                    for c in got
                ]
            )
        await store.close()

        def delivered() -> int:
            return conn.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered'").fetchone()[0]

        already = delivered()
        # The claim probe above has already delivered up to 20 x 32 rows: drain only what is still queued, or the
        # loop below waits for deliveries that can never happen (e.g. --backlog 1000 --drain 1000).
        drain = min(drain, size - already)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as config:
            config.write(
                f'[store]\nurl = "{url}"\n[engine]\npoll_interval = 0.5\nclaim_batch = 256\nretry_jitter = 0\n'
                f'[channels.bk]\nkind = "webhook"\nurl = "{sandbox}/webhook/bk"\nsecret = "bench-secret"\n'
                "concurrency = 32\ntimeout = 10\nretry = [0, 0.05, 0.1, 0.2, 0.5, 1]\n"
            )
        worker = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "syndicate"),
            "work",
            "--config",
            config.name,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        rss: list[float] = []
        started = time.perf_counter()
        try:
            while delivered() - already < drain:
                if worker.returncode is not None:
                    raise RuntimeError(f"syndicate work exited with {worker.returncode} before draining {drain}")
                rss.append(process_memory_mb(worker.pid, "VmRSS"))
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            peak = process_memory_mb(worker.pid, "VmHWM")
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), timeout=30)
            conn.close()
            os.unlink(config.name)
    return {
        "backlog": size,
        "claim_p50_ms": statistics.median(claims),
        "claim_max_ms": max(claims),
        "drain_per_s": drain / elapsed,
        "worker_rss_mb_median": statistics.median(rss),
        "worker_rss_mb_peak": peak,
    }


def dumps_payload(sample: Story) -> str:
    """A delivery's stored payload column, as the webhook channel renders it at enqueue time."""
    from adapters.webhook.adapter import WebhookOptions
    from syndicate.delivery import Action

    adapter = WebhookAdapter("bk", WebhookOptions(url="http://127.0.0.1:9/", secret="bench-secret"), timeout=10)
    return json.dumps(adapter.render(sample, Action.PUBLISH).to_json(), ensure_ascii=False)


def process_memory_mb(pid: int, field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- 6. archive scale -------------------------------------------------------------------------------------------

ARCHIVE_SECTIONS = ("shanghai", "baoshan", "minhang", "pudong", "jingan", "xuhui", "culture", "sports")
#: The archive's stories are one every ten minutes, ending here; the timed stories come after them.
ARCHIVE_END = 1_767_225_600.0  # 2026-01-01T00:00:00Z
#: Fields of a page in the website channel's JSON manifest, format 1 (`.syndicate/manifest.json`): the state the
#: website adapter has read since it was written, and that a newer one migrates on first use.
WEBSITE_MANIFEST_FIELDS = (
    "story_id",
    "version",
    "path",
    "headline",
    "summary",
    "section",
    "section_slug",
    "language",
    "published",
    "modified",
    "cover_src",
    "cover_alt",
)


#: The cover's declared size (ninjs sizeinbytes), where the story model has the field (not before issue 15).
COVER_SIZE = {"size_bytes": 48_213} if "size_bytes" in Image.model_fields else {}


def archive_story(i: int, prefix: str = "arc") -> Story:
    """Story i of the archive (or, with another prefix, of the timed run): a real-sized article with a cover whose
    size is declared (ninjs sizeinbytes), so no channel fetches anything."""
    published = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ARCHIVE_END + (i - 1_000_000) * 600))
    if prefix != "arc":
        published = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ARCHIVE_END + 60 + i * 60))
    return Story.from_dict(
        {
            "id": f"{prefix}-{i:07d}",
            "headline": f"第{i}条: 上海16区融媒体中心全部建成并挂牌",
            "summary": "截至目前,上海分两批、共16个区级融媒体中心已全部建成并挂牌。",
            "body_html": BODY,
            "section": ARCHIVE_SECTIONS[i % len(ARCHIVE_SECTIONS)],
            "url": f"https://news.example.cn/{prefix}/{i}.html",
            "published_at": published,
            "images": [{"href": "https://img.example.cn/cover.jpg", "role": "cover", "alt": "现场", **COVER_SIZE}],
        }
    )


def archive_adapter(kind: str, root: Path) -> Any:
    """The channel's adapter, made from config exactly as `syndicate work` makes it."""
    options: dict[str, Any] = {"kind": kind, "root": str(root)}
    if kind == "website":
        options["base_url"] = "https://news.example.cn"
    else:
        options.update(title="上海新闻", link="https://news.example.cn/")
        if "enclosure_sizes" in get_adapter_class(kind).options_model.model_fields:
            options["enclosure_sizes"] = "declared"  # the covers state their size; no channel version fetches
    raw = {"store": {"url": "sqlite:///unused.db"}, "channels": {kind: options}}
    return parse_config(raw, source="bench", env={}).channels[kind].create_adapter()


def archive_ctx(kind: str, story_id: str, n: int) -> DeliveryContext:
    from syndicate.delivery import Action

    async def refused(*_: Any) -> Any:
        raise RuntimeError("the owned channels keep no shared keys")

    return DeliveryContext(
        delivery_id=n,
        story_id=story_id,
        version=1,
        channel=kind,
        action=Action.PUBLISH,
        attempt=1,
        state={},
        receipt=None,
        save_checkpoint=refused,
        kv_get=refused,
        kv_set=refused,
        kv_add=refused,
    )


async def seed_archive(kind: str, adapter: Any, root: Path, size: int) -> None:
    """Make `size` stories already published, quickly.

    website: its JSON manifest (format 1) is written directly, one page entry per story cloned from entries the
    adapter itself rendered (one per section); the article pages themselves are not written, since no later
    delivery reads them. rss: both manifests keep only the newest stories (2 x items), trimming the rest in order,
    so the state after `size` publishes is the state after the newest 2 x items + 1 of them: those are published
    through the adapter."""
    from syndicate.delivery import Action

    if kind == "rss":
        keep = 2 * adapter.options.items + 1
        for n, i in enumerate(range(max(0, size - keep), size)):
            sample = archive_story(i)
            await adapter.publish(adapter.render(sample, Action.PUBLISH), archive_ctx(kind, sample.id, n))
        return
    templates: dict[str, dict[str, Any]] = {}
    for i in range(len(ARCHIVE_SECTIONS)):
        sample = archive_story(i)
        entry = adapter.render(sample, Action.PUBLISH).to_json()["data"]["entry"]
        templates[sample.section or ""] = {key: entry[key] for key in WEBSITE_MANIFEST_FIELDS}
    stories: dict[str, dict[str, Any]] = {}
    for i in range(size):
        section = ARCHIVE_SECTIONS[i % len(ARCHIVE_SECTIONS)]
        template = templates[section]
        story_id = f"arc-{i:07d}"
        published = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ARCHIVE_END + (i - 1_000_000) * 600))
        template_year_month = template["published"][:7].replace("-", "/")
        path = template["path"].replace(template["story_id"], story_id)
        path = path.replace(template_year_month, published[:7].replace("-", "/"))
        stories[story_id] = {
            **template,
            "story_id": story_id,
            "path": path,
            "headline": f"第{i}条: 上海16区融媒体中心全部建成并挂牌",
            "published": published,
            "modified": published,
        }
    state = root / ".syndicate"
    state.mkdir(parents=True, exist_ok=True)
    (state / "manifest.json").write_text(json.dumps({"format": 1, "stories": stories}, ensure_ascii=False))


def io_counters() -> dict[str, int]:
    """This process's I/O counters (Linux): ``wchar`` bytes handed to write(), ``write_bytes`` bytes sent to the
    storage layer (counted when pages are dirtied), ``cancelled_write_bytes`` dirty bytes dropped before writeback
    (a temp file replaced before it reached the disk)."""
    counters = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        name, _, value = line.partition(":")
        counters[name.strip()] = int(value)
    return counters


async def archive_scale(kind: str, size: int, deliveries: int, seconds: float) -> dict[str, Any]:
    """Deliveries/s of `kind` publishing new stories onto an archive of `size` (up to `deliveries` of them, or
    fewer when `seconds` run out, at least 3), and what each one writes."""
    from syndicate.delivery import Action

    with tempfile.TemporaryDirectory(prefix="bench-archive-") as folder:
        root = Path(folder) / kind
        root.mkdir()
        adapter = archive_adapter(kind, root)
        await adapter.start()
        try:
            started = time.perf_counter()
            await seed_archive(kind, adapter, root, size)
            seeded = time.perf_counter() - started
            # One untimed delivery: a newer adapter migrates the seeded manifest on first use.
            warm = archive_story(0, "warm")
            started = time.perf_counter()
            await adapter.publish(adapter.render(warm, Action.PUBLISH), archive_ctx(kind, warm.id, 0))
            first_ms = (time.perf_counter() - started) * 1000
            payloads = [adapter.render(archive_story(i, "new"), Action.PUBLISH) for i in range(1, deliveries + 1)]
            durations: list[float] = []
            io_before, cpu = io_counters(), cpu_seconds()
            deadline = time.perf_counter() + seconds
            for n, payload in enumerate(payloads, start=1):
                t0 = time.perf_counter()
                await adapter.publish(payload, archive_ctx(kind, f"new-{n:07d}", n))
                durations.append(time.perf_counter() - t0)
                if n >= 3 and time.perf_counter() > deadline:
                    break
            io_after, cpu_used = io_counters(), cpu_seconds() - cpu
        finally:
            await adapter.close()
    done = len(durations)
    return {
        "channel": kind,
        "archive": size,
        "deliveries": done,
        "per_s": done / sum(durations),
        "ms_p50": percentile([d * 1000 for d in durations], 50),
        "ms_max": max(durations) * 1000,
        "cpu_ms_per_delivery": cpu_used / done * 1000,
        "written_kb_per_delivery": (io_after["wchar"] - io_before["wchar"]) / done / 1024,
        "disk_kb_per_delivery": (io_after["write_bytes"] - io_before["write_bytes"]) / done / 1024,
        "seed_s": seeded,
        "first_delivery_ms": first_ms,
    }


# --- 7. worker processes ---------------------------------------------------------------------------------------

PROCESS_COUNTS = (1, 2, 4)
#: High enough that P processes are never capped by the channel's limit (it is global, across all of them).
PROCESS_CONCURRENCY = 64


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited and been waited for, including (through them) their
    own waited-for children: for `syndicate work --processes P` the supervisor plus every worker it reaped; for
    P = 1 the one worker. The sandbox is a child too, but it is only reaped at the end, after every figure."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def process_run(sandbox: str, n: int, processes: int) -> dict[str, float]:
    """n deliveries fanned out in this process (not timed), then one timed `syndicate work --processes P
    --until-idle` in a child process; with n = 0 what starting P workers (and the supervisor) and stopping them
    costs."""
    import asyncpg

    from syndicate.store.postgres import split_url

    async with store_url("postgres") as url:
        settings = settings_for(url, sandbox, {"p0": {"concurrency": PROCESS_CONCURRENCY}})
        store = open_store(url)
        await store.migrate()
        try:
            async with Engine(settings, store) as engine:
                for i in range(n):
                    await engine.accept(story(i, f"proc-{uuid.uuid4().hex[:4]}-"))
        finally:
            await store.close()
        with tempfile.TemporaryDirectory(prefix="bench-processes-") as folder:
            config = Path(folder) / "processes.toml"
            config.write_text(
                f'[store]\nurl = "{url}"\n[engine]\npoll_interval = 0.5\nclaim_batch = 256\nretry_jitter = 0\n'
                f'[channels.p0]\nkind = "webhook"\nurl = "{sandbox}/webhook/p0"\nsecret = "bench-secret"\n'
                f"concurrency = {PROCESS_CONCURRENCY}\ntimeout = 10\nretry = [0, 0.05, 0.1, 0.2, 0.5, 1]\n"
            )
            cpu, started = children_cpu_seconds(), time.perf_counter()
            worker = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "syndicate"),
                "work",
                "--processes",
                str(processes),
                "--until-idle",
                "--config",
                str(config),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, errors = await worker.communicate()
            wall, cpu_used = time.perf_counter() - started, children_cpu_seconds() - cpu
        if worker.returncode != 0:
            raise RuntimeError(f"syndicate work --processes {processes} exited {worker.returncode}: {errors[-2000:]!r}")
        dsn, schema = split_url(url)
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                f"SELECT min(started_at) AS first, max(finished_at) AS last, count(DISTINCT worker) AS workers, "
                f"count(*) FILTER (WHERE outcome = 'delivered') AS delivered FROM \"{schema}\".attempts"
            )
        finally:
            await conn.close()
    if row["delivered"] != n:
        raise RuntimeError(f"{processes} processes delivered {row['delivered']} of {n}")
    return {
        "wall_s": wall,
        "cpu_s": cpu_used,
        "drain_s": (row["last"] - row["first"]) if n else 0.0,
        "workers": float(row["workers"]),
    }


async def processes_section(sandbox: str, n: int, runs: int) -> dict[str, Any]:
    if not await pg_available():
        return {"skipped": f"PostgreSQL at {PG_DSN} is unreachable (set SYNDICATE_TEST_PG_DSN)"}
    rows: dict[str, dict[str, float]] = {}
    for processes in PROCESS_COUNTS:
        idle = [await process_run(sandbox, 0, processes) for _ in range(runs)]
        full = [await process_run(sandbox, n, processes) for _ in range(runs)]
        startup_cpu = statistics.median(r["cpu_s"] for r in idle)
        rows[str(processes)] = {
            # From starting the command to its exit: interpreter start-up, imports and the store check included.
            "deliveries_per_s": statistics.median(n / r["wall_s"] for r in full),
            # From the first attempt's start to the last attempt's end, as the attempt rows record them.
            "drain_per_s": statistics.median(n / r["drain_s"] for r in full),
            "cpu_us_per_delivery": statistics.median(r["cpu_s"] / n * 1e6 for r in full),
            "startup_cpu_ms": startup_cpu * 1000,
            "cpu_us_per_delivery_less_startup": statistics.median((r["cpu_s"] - startup_cpu) / n * 1e6 for r in full),
            "worker_ids": max(r["workers"] for r in full),
        }
    one = rows["1"]
    for row in rows.values():
        row["ratio_to_1"] = row["deliveries_per_s"] / one["deliveries_per_s"]
        row["drain_ratio_to_1"] = row["drain_per_s"] / one["drain_per_s"]
    return {
        "cpus": os.cpu_count(),
        "deliveries": n,
        "channel_concurrency": PROCESS_CONCURRENCY,
        "by_processes": rows,
        "note": (
            f"os.cpu_count() = {os.cpu_count()}, shared by the workers, the supervisor, the sandbox (its own process) "
            "and the PostgreSQL server on this machine. CPU is the children's (RUSAGE_CHILDREN): every worker "
            "process and, for P > 1, the supervisor; not the sandbox nor PostgreSQL. 'less start-up' subtracts "
            "the median CPU of the same command on an empty queue (P interpreters starting, checking the store, "
            "finding nothing, stopping)."
        ),
    }


# --- main --------------------------------------------------------------------------------------------------------


SECTIONS = ("throughput", "latency", "isolation", "fan_out_width", "backlog", "archive", "processes")


def median_or_none(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


async def median_of(runs: int, fn: Callable[[], Awaitable[float | None]]) -> float | None:
    values = [v for v in [await fn() for _ in range(runs)] if v is not None]
    return statistics.median(values) if values else None


async def queue_sections(results: dict[str, Any], sandbox: str, args: argparse.Namespace, sections: set[str]) -> None:
    """Sections 1-5, against the sandbox's webhook stand-in."""
    n, c, runs = args.deliveries, args.concurrency, args.runs
    if "throughput" in sections:
        pg_available_now = await pg_available()
        # Alternated round by round (raw, then each queue, then the parts), so that a machine whose speed drifts
        # during the run shifts every figure of a round alike; each ratio is the median of its rounds' ratios.
        kinds: dict[str, Callable[[], Awaitable[float | None]]] = {
            "raw": lambda: raw_loop(sandbox, n, c),
            "sqlite": lambda: syndicate_drain("sqlite", sandbox, n, c),
            "adapter": lambda: adapter_loop(sandbox, n, c),
            "queue": lambda: syndicate_drain("sqlite", sandbox, n, c, adapter="bench-no-network"),
            "arq": lambda: arq_drain(sandbox, n, c),
        }
        if pg_available_now:
            kinds["postgres"] = lambda: syndicate_drain("postgres", sandbox, n, c)
        rounds: dict[str, list[float | None]] = {kind: [] for kind in kinds}
        for _ in range(runs):
            for kind, measure in kinds.items():
                rounds[kind].append(await measure())

        def rate(kind: str) -> float | None:
            return median_or_none([v for v in rounds.get(kind, []) if v is not None])

        def ratio(kind: str) -> float | None:
            pairs = [(q, r) for q, r in zip(rounds.get(kind, []), rounds["raw"], strict=False) if q and r]
            return statistics.median(q / r for q, r in pairs) if pairs else None

        results["throughput"] = {
            "raw_aiohttp_per_s": rate("raw"),
            "syndicate_sqlite_per_s": rate("sqlite"),
            "syndicate_postgres_per_s": rate("postgres"),
            "arq_redis_per_s": rate("arq"),
            "ratio_sqlite_vs_raw": ratio("sqlite"),
            "ratio_postgres_vs_raw": ratio("postgres"),
            # Where a delivery's CPU goes, in one process: the request itself (raw), the adapter's own work on top
            # of it, and the queue's work measured with the request taken out. Their sum against the full drain
            # shows whether the queue or the request bounds throughput.
            "webhook_adapter_alone_per_s": rate("adapter"),
            "queue_alone_no_network_per_s": rate("queue"),
        }
        results["cpu_us_per_delivery"] = {
            "raw_aiohttp": median_or_none(CPU_US.get("raw")),
            "webhook_adapter_alone": median_or_none(CPU_US.get("adapter")),
            "queue_alone_no_network": median_or_none(CPU_US.get("sqlite-bench-no-network")),
            "syndicate_sqlite": median_or_none(CPU_US.get("sqlite-webhook")),
            "syndicate_postgres_client_side": median_or_none(CPU_US.get("postgres-webhook")),
        }
    if "latency" in sections:
        results["latency"] = await hook_latency(sandbox, rate=args.rate, seconds=args.seconds)
        results["latency"].update(await hook_latency(sandbox, rate=args.rate, seconds=args.seconds, heavy=True))
    if "isolation" in sections:
        results["isolation"] = await isolation(sandbox, n // 2, c)
    if "fan_out_width" in sections:
        results["fan_out_width"] = {}
        for width in (1, 8, 32):
            stories = max(20, n // width)
            rate = await median_of(runs, lambda w=width, s=stories: syndicate_drain("sqlite", sandbox, s, 8, w))
            results["fan_out_width"][str(width)] = rate
    if "backlog" in sections:
        results["backlog"] = [await backlog(sandbox, size, min(size, args.drain)) for size in args.backlog]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            # The loop `syndicate work` runs on (SYNDICATE_EVENT_LOOP); every section, the raw loop too, runs on it.
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
        "params": vars(args),
    }
    sections = set(args.sections)
    if sections - {"archive"}:
        async with sandbox_process() as sandbox:
            await queue_sections(results, sandbox, args, sections)
            if "processes" in sections:
                results["processes"] = await processes_section(sandbox, args.deliveries, args.runs)
    if "archive" in sections:
        # Channels that write files: no sandbox, one adapter at a time, each figure from its own fresh root.
        results["archive"] = []
        for kind in args.archive_channels:
            for size in args.archive:
                row = await archive_scale(kind, size, args.archive_deliveries, args.archive_seconds)
                print(f"  archive {kind} {size:,}: {row['per_s']:,.1f} deliveries/s", file=sys.stderr, flush=True)
                results["archive"].append(row)
    return results


def table(results: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = [f"machine: {results['machine']}", ""]
    for section in ("throughput", "cpu_us_per_delivery", "latency", "isolation"):
        if section not in results:
            continue
        lines.append(f"[{section}]")
        for key, value in results[section].items():
            shown = f"{value:.2f}" if key.startswith("ratio") and isinstance(value, float) else fmt(value)
            lines.append(f"  {key:32s} {shown}")
    if "fan_out_width" in results:
        lines.append("[fan_out_width] deliveries/s")
        for width, value in results["fan_out_width"].items():
            lines.append(f"  {width:>3} channels                     {fmt(value)}")
    if "backlog" in results:
        lines.append("[backlog]")
        for row in results["backlog"]:
            lines.append("  " + ", ".join(f"{k}={fmt(v)}" for k, v in row.items()))
    if "archive" in results:
        lines.append("[archive] publishing new stories onto an archive already published")
        header = ("channel", "archive", "deliveries/s", "ms p50", "ms max", "CPU ms", "KB written", "KB to disk")
        lines.append("  " + "".join(f"{h:>13s}" for h in header))
        for row in results["archive"]:
            values = (
                row["channel"],
                f"{row['archive']:,}",
                f"{row['per_s']:,.1f}",
                f"{row['ms_p50']:,.1f}",
                f"{row['ms_max']:,.1f}",
                f"{row['cpu_ms_per_delivery']:,.1f}",
                f"{row['written_kb_per_delivery']:,.1f}",
                f"{row['disk_kb_per_delivery']:,.1f}",
            )
            lines.append("  " + "".join(f"{v:>13s}" for v in values))
        lines.append("  (KB written: bytes handed to write() per delivery; KB to disk: /proc/self/io write_bytes)")
    if "processes" in results:
        lines += processes_table(results["processes"])
    return "\n".join(lines)


def processes_table(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"[processes] skipped: {section['skipped']}"]
    lines = [
        f"[processes] syndicate work --processes P --until-idle, PostgreSQL, {section['deliveries']:,} deliveries on "
        f"one channel at concurrency {section['channel_concurrency']}, {section['cpus']} CPUs (os.cpu_count)"
    ]
    header = ("P", "deliv/s", "ratio", "drain/s", "ratio", "CPU µs/d", "less start", "start CPU ms", "worker ids")
    lines.append("  " + "".join(f"{h:>13s}" for h in header))
    for processes, row in section["by_processes"].items():
        values = (
            processes,
            f"{row['deliveries_per_s']:,.1f}",
            f"{row['ratio_to_1']:.2f}",
            f"{row['drain_per_s']:,.1f}",
            f"{row['drain_ratio_to_1']:.2f}",
            f"{row['cpu_us_per_delivery']:,.0f}",
            f"{row['cpu_us_per_delivery_less_startup']:,.0f}",
            f"{row['startup_cpu_ms']:,.0f}",
            f"{row['worker_ids']:.0f}",
        )
        lines.append("  " + "".join(f"{v:>13s}" for v in values))
    lines.append("  (deliv/s: command start to exit; drain/s: first attempt to last; " + section["note"] + ")")
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "throughput" not in results or "fan_out_width" not in results:
        if "archive" in results:
            archive_chart(results["archive"], path)
        return
    t = results["throughput"]
    labels = ["raw aiohttp", "syndicate SQLite", "syndicate PostgreSQL", "arq (Redis)"]
    values = [t["raw_aiohttp_per_s"], t["syndicate_sqlite_per_s"], t["syndicate_postgres_per_s"], t["arq_redis_per_s"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(labels, [v or 0 for v in values], color=["#888", "#2a7", "#27a", "#a72"])
    left.set_title("deliveries per second to the webhook stand-in")
    left.tick_params(axis="x", rotation=15)
    widths = list(results["fan_out_width"])
    right.plot([int(w) for w in widths], [results["fan_out_width"][w] or 0 for w in widths], marker="o")
    right.set_xscale("log", base=2)
    right.set_title("fan-out width: deliveries per second")
    right.set_xlabel("channels per story")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    if "archive" in results:
        archive_chart(results["archive"], path.with_name("bench-archive.png"))


def archive_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for kind in dict.fromkeys(row["channel"] for row in rows):
        mine = [row for row in rows if row["channel"] == kind]
        axis.plot([row["archive"] for row in mine], [row["per_s"] for row in mine], marker="o", label=kind)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("stories already published")
    axis.set_title("deliveries per second onto an archive")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="hook requests per second for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, nargs="+", default=[100_000])
    parser.add_argument("--drain", type=int, default=5000)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="which sections to run (default: all)",
    )
    parser.add_argument(
        "--archive",
        type=int,
        nargs="+",
        default=[1_000, 10_000, 100_000],
        help="archive sizes (stories already published) for the archive section",
    )
    parser.add_argument("--archive-channels", nargs="+", choices=("website", "rss"), default=["website", "rss"])
    parser.add_argument("--archive-deliveries", type=int, default=200, help="new stories published per archive size")
    parser.add_argument(
        "--archive-seconds", type=float, default=30.0, help="stop publishing after this (at least 3 deliveries)"
    )
    arguments = parser.parse_args()
    outcome = run_async(main(arguments))
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "bench.json"
    if set(arguments.sections) != set(SECTIONS) and saved.exists():
        # A partial run replaces only its own sections; the others keep the figures of the run that made them.
        earlier = json.loads(saved.read_text())
        earlier.setdefault("runs", {})[",".join(arguments.sections)] = {k: outcome[k] for k in ("machine", "params")}
        outcome = {**earlier, **{k: v for k, v in outcome.items() if k not in ("machine", "params")}}
    saved.write_text(json.dumps(outcome, indent=2, ensure_ascii=False))
    chart(outcome, RESULTS / "bench.png")
    print(table(outcome))
    print(f"\nsaved {RESULTS / 'bench.json'} and {RESULTS / 'bench.png'}")
