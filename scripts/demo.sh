#!/usr/bin/env bash
# make demo: start the sandbox, publish the example stories (Chinese text, with images) to the channels in
# config/syndicate.toml, inject a few faults, work until idle, print the per-channel table. Exits 0 only when
# every demo delivery is `delivered`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
PORT="${SYNDICATE_SANDBOX_PORT:-8765}"
export SYNDICATE_SANDBOX_URL="http://127.0.0.1:${PORT}"
export SYNDICATE_CONFIG="${SYNDICATE_CONFIG:-config/syndicate.toml}"

syndicate sandbox --port "$PORT" >var/sandbox.log 2>&1 &
SANDBOX_PID=$!
trap 'kill "$SANDBOX_PID" 2>/dev/null || true; wait "$SANDBOX_PID" 2>/dev/null || true' EXIT

python - "$SYNDICATE_SANDBOX_URL" <<'PY'
import json, sys, time, urllib.request
base = sys.argv[1]
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/_sandbox/health", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"the sandbox did not start on {base}: see var/sandbox.log")
# A flaky receiver: a third of the first tries fail with 503, so the demo shows retries converging.
rules = {"platform": "webhook", "rules": [{"fault": "status:503", "probability": 0.33}]}
req = urllib.request.Request(base + "/_sandbox/faults", data=json.dumps(rules).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
urllib.request.urlopen(req, timeout=5)
print(f"sandbox up at {base} (webhook receivers answer 503 a third of the time)")
PY

echo "== publish the example stories"
syndicate publish examples/*.json
echo "== deliver until idle"
syndicate work --until-idle --wait-for-retries 30
echo "== result"
syndicate status
syndicate status --json | python -c '
import json, sys
rows = json.load(sys.stdin)["deliveries"]
bad = [r for r in rows if r["state"] != "delivered"]
if not rows or bad:
    sys.exit(f"demo: {len(bad)} of {len(rows)} deliveries are not delivered")
print(f"demo: all {len(rows)} deliveries delivered")
'
