#!/usr/bin/env bash
# latchbench report: the page and figures from two recorded quick runs
# (testdata/, real documents), rendered in headless Chromium, which must
# decode every figure; the comparison of two runs; and bad input.
set -uo pipefail
bench=$(pwd)/tools/latchbench/latchbench
a=$(pwd)/tools/latchbench/testdata/quick-a.json
b=$(pwd)/tools/latchbench/testdata/quick-b.json
tmp=${TEST_TMPDIR:-$(mktemp -d)}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# Renders $1 in headless Chromium and prints the DOM after the page's load
# handler ran.
render() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --user-data-dir="$tmp/chrome.$RANDOM" \
    --virtual-time-budget=10000 --dump-dom "file://$1" 2>"$tmp/chrome.err"
}
# Checks that the page at $1 shows $2 figures and that the browser decoded
# every one.
expect_figures() {
  local dom want=$2 shown decoded
  dom=$(render "$1")
  shown=$(grep -o 'data-figures="[0-9]*"' <<<"$dom" | grep -o '[0-9]*')
  decoded=$(grep -o 'data-figures-decoded="[0-9]*"' <<<"$dom" | grep -o '[0-9]*')
  [[ $shown == "$want" ]] || fail "$1: the browser saw '${shown}' figures, expected $want ($(tail -3 "$tmp/chrome.err"))"
  [[ $decoded == "$want" ]] || fail "$1: the browser decoded '${decoded}' of $want figures"
}

# One run.
out=$tmp/one
"$bench" report --out="$out" "$a" >"$tmp/one.log" 2>&1 || fail "report of one run: $(cat "$tmp/one.log")"
grep -q "index.html: 5 figures" "$tmp/one.log" || fail "report did not say what it wrote: $(cat "$tmp/one.log")"
for f in cdf-uncontended-in-process cdf-uncontended-latchd cdf-uncontended-raw medians-uncontended runs-uncontended; do
  for ext in png svg; do
    [[ -s $out/figures/$f.$ext ]] || fail "figure $f.$ext is missing or empty"
  done
  # A figure with data: the CDF and run lines are SVG paths, many of them.
  (($(grep -c '<path' "$out/figures/$f.svg") > 20)) || fail "$f.svg has (almost) nothing drawn"
done
html=$out/index.html
grep -q 'src=.data:image/png;base64,' "$html" || fail "the page does not embed its figures"
! grep -q 'src=.figures/' "$html" || fail "the page links files: not self-contained"
grep -q "Not measured in this report" "$html" || fail "missing scenarios are not named"
grep -q "contended, handoff, cost, scale, failover" "$html" || fail "the missing scenarios are wrong"
grep -q "latchd adds" "$html" || fail "latchd's share is not shown"
grep -q "Against the raw API" "$html" && grep -q "<td>posixfd</td><td>[^<]*</td><td>exclusive</td><td>in-process</td>" "$html" ||
  fail "the ratio against the raw API is not shown"
grep -q "cpus_online\|2 CPUs" "$html" || fail "the machine is not described"
# Cost per cycle, as lab nodes report it: a table and a figure, and cost is
# no longer "not measured".
python3 -c "
import json; d = json.load(open('$a'))
for r in d['results'][:2]:
    r['cost_per_cycle'] = {'cycles': 600,
        'disk': {'sdb': {'reads': 3.0, 'read_bytes': 1536, 'writes': 2.0, 'write_bytes': 1024}},
        'net': {'eth1': {'rx_packets': 6, 'rx_bytes': 900, 'tx_packets': 6, 'tx_bytes': 1200}},
        'cpu_seconds': {'self': 0.0005, 'latchd': 0.00125}, 'machine_busy_seconds': 0.003}
d['results'][1]['cost_per_cycle']['background'] = {
    'net': {'eth0': {'rx_packets': 0.25, 'tx_packets': 0.25}}, 'machine_busy_seconds': 0.0005}
json.dump(d, open('$tmp/cost.json', 'w'))"
"$bench" report --out="$tmp/cost" "$tmp/cost.json" >"$tmp/cost.log" 2>&1 || fail "report with costs: $(cat "$tmp/cost.log")"
grep -q "index.html: 6 figures" "$tmp/cost.log" || fail "no cost figure: $(cat "$tmp/cost.log")"
[[ -s $tmp/cost/figures/cost-uncontended.png && -s $tmp/cost/figures/cost-uncontended.svg ]] ||
  fail "cost-uncontended.png/.svg missing"
grep -q "<h3>Cost per cycle</h3>" "$tmp/cost/index.html" || fail "no cost table"
grep -q "<td>600</td><td>5.00</td><td>2.5 (sdb)</td><td>12.00</td><td>2.05 (eth1)</td><td>3.000</td><td>0.500</td><td>latchd 1.250</td>" \
  "$tmp/cost/index.html" || fail "the cost row is not per cycle as given: $(grep -o '<td>600</td>.\{0,200\}' "$tmp/cost/index.html" | head -1)"
# The second block's background: what the node did anyway, beside each figure.
grep -q "<td>600</td><td>5.00 (idle 0.00)</td><td>2.5 (sdb)</td><td>12.00 (idle 0.50)</td><td>2.05 (eth1)</td><td>3.000 (idle 0.50)</td>" \
  "$tmp/cost/index.html" || fail "the background is not shown: $(grep -o '<td>600</td>.\{0,200\}' "$tmp/cost/index.html" | tail -1)"
grep -q "contended, handoff, scale, failover" "$tmp/cost/index.html" || fail "cost is still called not measured"
expect_figures "$tmp/cost/index.html" 6
# A block whose runs disagree is flagged, not hidden.
python3 -c "
import json; d = json.load(open('$a'))
for r in d['results']: r['verdict']['trusted'] = True
d['results'][2]['verdict'] = {'trusted': False, 'relative': 0.6,
  'why': 'medians of 3 runs within 60% of their median (limit 25%): too noisy to compare'}
json.dump(d, open('$tmp/noisy.json', 'w'))"
"$bench" report --out="$tmp/noisy" "$tmp/noisy.json" >/dev/null 2>&1 || fail "report of a noisy run"
grep -q "1 of 13 results are too noisy to compare" "$tmp/noisy/index.html" || fail "a noisy result is not flagged"
# Summary rows are one per line; the marked one is the third result's.
marked=$(grep "^<tr class='noisy'>" "$tmp/noisy/index.html")
[[ $(wc -l <<<"$marked") == 1 ]] || fail "not exactly the noisy row is marked: $marked"
r2=$(python3 -c "
import json; r = json.load(open('$a'))['results'][2]
print('</td><td>'.join([r['backend'], r.get('placement', ''), r['path'], r['mode']]))")
[[ $marked == *"<td>$r2</td>"* ]] || fail "the marked row is not $r2: $marked"
expect_figures "$html" 5

# The lab's failover and scale scenarios (recorded lab runs, testdata/lab-*.json):
# their tables and figures. The failover run predates posixfd's latchd-kill
# being expected as a known limit: the page must flag that trial.
fo=$(pwd)/tools/latchbench/testdata/lab-failover.json
sc=$(pwd)/tools/latchbench/testdata/lab-scale.json
"$bench" report --out="$tmp/fo" "$fo" >"$tmp/fo.log" 2>&1 || fail "report of failover: $(cat "$tmp/fo.log")"
grep -q "index.html: 1 figures" "$tmp/fo.log" || fail "failover: not one figure: $(cat "$tmp/fo.log")"
(($(grep -c '<path' "$tmp/fo/figures/failover-timelines.svg") > 20)) || fail "the failover timelines are (almost) empty"
grep -q "<h3>Failover</h3>" "$tmp/fo/index.html" || fail "no failover table"
(($(grep -o "<tr[^>]*><td>\(dlm\|sanlock\|posixfd\)</td><td>[a-z-]*</td><td>\(grant\|kept\|lost\)</td>" "$tmp/fo/index.html" | wc -l) == 22)) ||
  fail "the failover table does not have the run's 22 trials"
(($(grep -o "NOT AS EXPECTED" "$tmp/fo/index.html" | wc -l) == 1)) || fail "not exactly the one unexpected trial flagged"
grep -q "<td>posixfd</td><td>latchd-kill</td><td>kept</td><td>granted (NOT AS EXPECTED)" "$tmp/fo/index.html" ||
  fail "posixfd's grant after latchd-kill is not the flagged one"
grep -q "<td>sanlock</td><td>node-kill</td><td>grant</td><td>granted</td><td>18.32 s fail</td><td>59.97 s</td><td>78.30 s</td>" \
  "$tmp/fo/index.html" || fail "the sanlock node-kill row does not split detection and grant as recorded"
expect_figures "$tmp/fo/index.html" 1
"$bench" report --out="$tmp/sc" "$sc" >"$tmp/sc.log" 2>&1 || fail "report of scale: $(cat "$tmp/sc.log")"
grep -q "index.html: 1 figures" "$tmp/sc.log" || fail "scale: not one figure: $(cat "$tmp/sc.log")"
grep -q "node clocks at the start (against node1)</th><td>node2 [-+][0-9.]* ms ± [0-9.]*; node3 " "$tmp/fo/index.html" ||
  fail "the lab's clocks are not shown"
grep -q "<h3>Scale</h3>" "$tmp/sc/index.html" || fail "no scale table"
grep -q "<td>dlm</td><td>10000</td><td>held</td><td>19.96 s</td><td>5.44 s</td>" "$tmp/sc/index.html" ||
  fail "the dlm 10,000-lock row is not as recorded"
grep -q "does not fit: 1000 leases need 1000 MiB" "$tmp/sc/index.html" || fail "what does not fit sanlock's area is not said"
grep -q "Too many open files" "$tmp/sc/index.html" || fail "posixfd's refusal is not shown"
expect_figures "$tmp/sc/index.html" 1

# Real hosts (--hosts, two latchds of one machine through `sh -c`): the
# hosts, their latchds and clocks in the machine table, the hand-off row
# placed between them.
ho=$(pwd)/tools/latchbench/testdata/hosts.json
"$bench" report --out="$tmp/ho" "$ho" >"$tmp/ho.log" 2>&1 || fail "report of hosts: $(cat "$tmp/ho.log")"
grep -q "reached with [^ ]*sh -c[^ ]*: host1 127.0.0.1 (vm, kernel [^,]*, 2 CPUs), latchd at /tmp/hh/a/latchd.sock with posixfd, nop; host2 localhost" \
  "$tmp/ho/index.html" || fail "the hosts are not described"
grep -q "host clocks at the start (against host1)</th><td>host2 [-+][0-9.]* ms ± [0-9.]*</td>" \
  "$tmp/ho/index.html" || fail "the hosts' clocks are not shown"
grep -q "<td>handoff</td><td>posixfd</td><td>host1 (127.0.0.1) &lt;-&gt; host2 (localhost)</td>" \
  "$tmp/ho/index.html" || fail "no hand-off row between the hosts"

# Two runs: B against A, said to be from different runs.
out=$tmp/two
"$bench" report --out="$out" "$a" "$b" >"$tmp/two.log" 2>&1 || fail "report of two runs: $(cat "$tmp/two.log")"
html=$out/index.html
grep -q "These figures come from two different runs" "$html" || fail "two runs are not said to differ"
grep -q "B / A" "$html" || fail "no comparison table"
grep -q "Environment and parameters match" "$html" || fail "same machine and parameters not said"
# Comparable: the blocks both runs trust (the recorded runs were noisy in places).
both=$(python3 -c "
import json
t = lambda p: {(r['backend'], r['path'], r['mode']) for r in json.load(open(p))['results'] if r['verdict']['trusted']}
print(len(t('$a') & t('$b')))")
((both > 0)) || fail "the recorded runs trust no common block"
(($(grep -o ">comparable<" "$html" | wc -l) == both)) || fail "not the $both blocks both runs trust are comparable"
expect_figures "$html" 5
# A different machine: every ratio is said not to be comparable.
python3 -c "
import json; d = json.load(open('$b')); d['environment']['cpus_online'] = 64
json.dump(d, open('$tmp/big.json', 'w'))"
"$bench" report --out="$tmp/big" "$a" "$tmp/big.json" >/dev/null 2>&1 || fail "report of two machines"
grep -q "They differ in: environment.cpus_online: A 2, B 64" "$tmp/big/index.html" ||
  fail "a different machine is not named"
(($(grep -o "not comparable: [^<]*environment or parameters differ" "$tmp/big/index.html" | wc -l) == 13)) ||
  fail "ratios across machines not flagged"

# Bad input: exit 2 and a message that names the file and the fault; no page.
bad() {  # expected-substring, args...
  local want=$1 rc
  shift
  "$bench" report --out="$tmp/bad" "$@" >"$tmp/bad.log" 2>&1
  rc=$?
  [[ $rc == 2 ]] || fail "report $*: exit $rc, expected 2 ($(cat "$tmp/bad.log"))"
  grep -qF -- "$want" "$tmp/bad.log" || fail "report $*: '$(cat "$tmp/bad.log")' lacks '$want'"
  [[ ! -e $tmp/bad/index.html ]] || fail "report $*: wrote a page anyway"
}
bad "$tmp/absent.json: cannot read" "$tmp/absent.json"
printf '{"schema": "latchbench/1", "results": [' >"$tmp/cut.json"
bad "cut.json: not JSON" "$tmp/cut.json"
printf '\xff\xfe{}' >"$tmp/latin.json"
bad "latin.json: not UTF-8" "$tmp/latin.json"
printf '{"schema": "latchbench/9", "environment": {}, "parameters": {}, "results": []}' >"$tmp/v9.json"
bad "schema 'latchbench/9' is not 'latchbench/1'" "$tmp/v9.json"
python3 -c "print('[' * 200000 + ']' * 200000)" >"$tmp/deep.json"
bad "deep.json: not JSON: nested too deeply" "$tmp/deep.json"
python3 -c "
import json; d = json.load(open('$a')); del d['results'][1]['summary']; json.dump(d, open('$tmp/nosum.json', 'w'))"
bad "results[1]: 'summary' lacks" "$tmp/nosum.json"
python3 -c "
import json; d = json.load(open('$a')); d['results'][0]['runs'][0]['samples'][3] = 'x'; json.dump(d, open('$tmp/str.json', 'w'))"
bad "results[0].runs[0]: 'samples' must be a list of finite numbers" "$tmp/str.json"
bad "give one document, or two" "$a" "$b" "$a"
bad "give one document, or two"
bad "unknown argument '--colour'" --colour "$a"
touch "$tmp/file"
"$bench" report --out="$tmp/file" "$a" >"$tmp/bad.log" 2>&1
[[ $? == 2 ]] && grep -q "exists and is not a directory" "$tmp/bad.log" || fail "--out at a file: $(cat "$tmp/bad.log")"

echo "report_test: $failures failures"
((failures == 0))
