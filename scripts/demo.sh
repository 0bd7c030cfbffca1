#!/usr/bin/env bash
# make demo: the two everyday paths, end to end, on the embedded SQLite default and the sandbox platforms.
#   1. automatic push on publish: `syndicate serve` runs; the example stories (Chinese text, with images) arrive
#      through the signed publish hook, as a CMS would send them; a flaky and a broken receiver are injected.
#   2. CLI replay of failed posts: the operator lists what failed, the receiver is fixed, `syndicate replay --yes`.
#   3. reach (评): readers open the stories in the app and on the website (counted by the app API and the page
#      beacon); the platforms' figures are read back five seconds after delivery; `syndicate reach` ranks them.
# Exits 0 only when every demo delivery is `delivered` and every story shows reach.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/site var/feeds   # the website's web root and the feeds' folder
SANDBOX_PORT="${SYNDICATE_SANDBOX_PORT:-8765}"
SERVE_PORT="${SYNDICATE_SERVE_PORT:-8780}"
export SYNDICATE_SANDBOX_URL="http://127.0.0.1:${SANDBOX_PORT}"
export SYNDICATE_SANDBOX_HOST="127.0.0.1:${SANDBOX_PORT}"   # the one private host [media] may fetch images from
export SYNDICATE_CONFIG="${SYNDICATE_CONFIG:-config/syndicate.toml}"
SERVER="http://127.0.0.1:${SERVE_PORT}"
export SYNDICATE_SERVER_URL="$SERVER"   # the website's pages load the reach beacon from here

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

sandbox_call() {  # METHOD PATH [JSON]
  python - "$SYNDICATE_SANDBOX_URL" "$@" <<'PY'
import sys, urllib.request
base, method, path, *body = sys.argv[1:]
req = urllib.request.Request(base + path, method=method, data=body[0].encode() if body else None,
                             headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=5)
PY
}

wait_for() {  # URL NAME LOG
  python - "$1" "$2" "$3" <<'PY'
import sys, time, urllib.request
url, name, logfile = sys.argv[1:]
for _ in range(150):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"{name} did not start: see {logfile}")
PY
}

settle() {  # wait until nothing is queued, in flight or waiting for a retry; print progress as deliveries land
  python - <<'PY'
import json, subprocess, sys, time
last = None
for _ in range(600):
    rows = json.loads(subprocess.run(["syndicate", "status", "--json"], check=True, capture_output=True,
                                     text=True).stdout)["deliveries"]
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if line != last:
        print(f"   {line}")
        last = line
    if rows and not {"queued", "in_flight", "retry_wait"} & set(counts):
        sys.exit(0)
    time.sleep(0.2)
sys.exit("deliveries did not settle in 2 minutes")
PY
}

echo "== start the sandbox platforms on ${SYNDICATE_SANDBOX_URL}"
syndicate sandbox --port "$SANDBOX_PORT" >var/sandbox.log 2>&1 &
pids+=($!)
wait_for "${SYNDICATE_SANDBOX_URL}/_sandbox/health" sandbox var/sandbox.log
# Flaky receivers (a third of the webhook requests and a fifth of the partner requests answer 503) and a broken
# one: newswire refuses with 400 until its desk fixes it.
sandbox_call POST /_sandbox/faults '{"platform": "webhook", "rules": [
  {"fault": "status:400", "probability": 1.0, "name": "newswire"},
  {"fault": "status:503", "probability": 0.33}]}'
sandbox_call POST /_sandbox/faults '{"platform": "partner", "rules": [{"fault": "status:503", "probability": 0.2}]}'

echo "== start syndicate serve on ${SERVER} (API + workers; logs in var/serve.log)"
syndicate --log-format json -v serve --port "$SERVE_PORT" >var/serve.log 2>&1 &
SERVE_PID=$!
pids+=($SERVE_PID)
wait_for "${SERVER}/readyz" "syndicate serve" var/serve.log

echo "== the CMS publishes the example stories through the signed hook"
syndicate publish --url "$SERVER" examples/*.json
echo "== deliveries arriving"
settle
syndicate status

echo "== what failed, and why"
syndicate failed || true
echo "== the newswire desk fixes its endpoint; replay the failed posts"
sandbox_call DELETE /_sandbox/faults
syndicate replay --yes
settle

echo "== what the newsroom's own channels now serve"
python - "$SERVER" <<'PY'
import json, sys, urllib.request
base = sys.argv[1]
stories = json.load(urllib.request.urlopen(base + "/app/v1/stories"))["stories"]
print(f"   app API   {base}/app/v1/stories: {len(stories)} stories, newest: {stories[0]['headline']}")
rss = urllib.request.urlopen(base + "/feeds/rss.xml").read().decode()
print(f"   feeds     {base}/feeds/rss.xml: {rss.count('<item>')} items, and /feeds/atom.xml")
home = urllib.request.urlopen(base + "/site/index.html").read().decode()
print(f"   website   {base}/site/index.html ({len(home)} bytes), pages and sitemap.xml under var/site")
PY

echo "== reach (评): readers open the stories in the app and on the website; the platforms are read back"
python - "$SERVER" <<'PY'
import html, json, re, sys, urllib.parse, urllib.request
base = sys.argv[1]
stories = json.load(urllib.request.urlopen(base + "/app/v1/stories"))["stories"]
# What a reader's browser does on the website: open an article page and load its images, the beacon among them.
home_url = base + "/site/index.html"
home = urllib.request.urlopen(home_url).read().decode()
beacons = {}
for href in sorted(set(re.findall(r'href="([^"#?]+\.html)"', home))):
    page = urllib.request.urlopen(urllib.parse.urljoin(home_url, href)).read().decode()
    for src in re.findall(r'<img class="reach-beacon" src="([^"]+)"', page):
        src = html.unescape(src)
        beacons[urllib.parse.parse_qs(urllib.parse.urlsplit(src).query)["s"][0]] = src
for n, story in enumerate(stories):
    quoted = urllib.parse.quote(story["id"], safe="")
    for _ in range(n + 1):  # deterministic figures: the newest story is read once, the next twice ...
        urllib.request.urlopen(f"{base}/app/v1/stories/{quoted}").read()
        urllib.request.urlopen(beacons[story["id"]]).read()
print(f"   {len(stories)} stories read in the app and on the website (each page's beacon loaded as a browser would)")
PY
python - <<'PY'
import json, subprocess, sys, time
# The first sample of each post falls due five seconds after its delivery ([reach] ages in the sandbox config).
ids = sorted({r["story_id"] for r in json.loads(subprocess.run(
    ["syndicate", "status", "--json"], check=True, capture_output=True, text=True).stdout)["deliveries"]})
deadline = time.monotonic() + 40
while True:
    pending = []
    for story_id in ids:
        reach = json.loads(subprocess.run(["syndicate", "reach", story_id, "--json"], check=True,
                                          capture_output=True, text=True).stdout)
        # WeChat's data-analysis interface reports a day's figures from 08:00 (Beijing) the next morning: its
        # samples wait for that (without spending retries), so the demo does not wait for them.
        if not reach["channels"] or any(ch["samples"]["planned"] and not (ch["samples"]["done"] or
                                        ch["samples"]["failed"]) for ch in reach["channels"]
                                        if ch["channel"] != "wechat"):
            pending.append(story_id)
    if not pending:
        break
    if time.monotonic() > deadline:
        sys.exit(f"demo: no reach figures for {', '.join(pending)} after 40 s")
    time.sleep(0.5)
PY

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
kill -TERM "$SERVE_PID"
wait "$SERVE_PID"
echo "demo: syndicate serve stopped cleanly (SIGTERM, exit 0)"

echo "== reach (评): the day's stories ranked by reads, per channel and per section"
echo "   (WeChat's figures for today's articles come tomorrow from 08:00 Beijing time: its samples wait for them)"
syndicate reach --since 1d
