"""What the long-running commands do to their own process once started (in a child interpreter: it is global)."""

from __future__ import annotations

import subprocess
import sys

from syndicate.cli.common import SERVICE_GC_THRESHOLD


def test_settle_heap_freezes_the_started_heap_and_collects_the_young_less_often() -> None:
    script = (
        "import gc\n"
        "from syndicate.cli.common import settle_heap\n"
        "assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700\n"
        "settle_heap()\n"
        "print(gc.get_freeze_count(), gc.get_threshold()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    frozen, threshold = (int(v) for v in done.stdout.split())
    assert frozen > 10_000  # the modules and models loaded so far
    assert threshold == SERVICE_GC_THRESHOLD
