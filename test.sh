#!/usr/bin/env bash
# ./test.sh — installs what the tests need, builds Duet, runs every test suite, and ends
# with one line "N passed, N failed". Exit status is non-zero if anything failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

# Debian packages the tests drive Duet with (real clients and peers).
packages=(libnbd-bin fio nbdkit qemu-utils libisal2 jq libiscsi-bin qemu-block-extra tgt)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get install -y -q "${missing[@]}" >/tmp/duet-apt.log 2>&1 \
        || { $sudo_ apt-get update -q >>/tmp/duet-apt.log 2>&1 && $sudo_ apt-get install -y -q "${missing[@]}" >>/tmp/duet-apt.log 2>&1; } \
        || { cat /tmp/duet-apt.log; echo "test.sh: could not install ${missing[*]}"; exit 1; }
fi

start=$(date +%s)
echo "test.sh: building (Release)"
buildlog=$(mktemp)
if ! dotnet build Duet.slnx -c Release -nologo -v quiet >"$buildlog" 2>&1; then
    grep -E ' error |error :' "$buildlog" | sort -u | head -n 40
    tail -n 20 "$buildlog"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "test.sh: build took $(( $(date +%s) - start )) s"

passed=0; failed=0; skipped=0; broken=0
results=$(mktemp -d)
# Order: fast unit suites first, then the ones that start real servers and clients.
suites=(Duet.Core.Tests Duet.Raid.Tests Duet.Interconnect.Tests Duet.Cache.Tests Duet.Nbd.Tests Duet.Cli.Tests Duet.Interop.Tests)
# Only *.Tests projects are suites; other projects under tests/ are helpers (Duet.Cache.Crasher).
for extra in tests/*.Tests/; do
    name=$(basename "$extra")
    [[ " ${suites[*]} " == *" $name "* ]] || suites+=("$name")
done
# The iSCSI conformance run (Duet.Iscsi.Tests, IscsiConformanceTests) leaves its counts here.
cu_report="${TMPDIR:-/tmp}/duet-iscsi-test-cu.txt"
rm -f "$cu_report"
for suite in "${suites[@]}"; do
    proj="tests/$suite/$suite.csproj"
    [ -f "$proj" ] || continue
    t0=$(date +%s)
    log="$results/$suite.log"
    # A test that hangs is stopped after 15 minutes and the suite reported without a result (the log names the
    # test that was running), instead of running the whole job into CI's limit.
    dotnet test "$proj" -c Release --no-build -nologo --blame-hang-timeout 15m --blame-hang-dump-type none \
        --logger "console;verbosity=normal" >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    # vstest's summary block: "Total tests: N" then "Passed: N", "Failed: N", "Skipped: N" lines.
    line=$(grep -E '^Total tests: [0-9]+' "$log" | tail -n 1)
    if [ -z "$line" ] && grep -q 'No test is available' "$log"; then
        echo "suite $suite: no tests yet"
        continue
    fi
    if [ -z "$line" ]; then
        echo "suite $suite: no result (exit $rc) in ${secs} s"
        tail -n 40 "$log"
        broken=$((broken + 1)); failed=$((failed + 1))
        continue
    fi
    count() { awk -v k="$1" '/^Total tests:/ {on=1} on && $1 == k":" {v=$2} END {print v+0}' "$log"; }
    p=$(count Passed); f=$(count Failed); s=$(count Skipped)
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    echo "suite $suite: $p passed, $f failed, $s skipped in ${secs} s"
    if [ "$f" -ne 0 ] || [ "$rc" -ne 0 ]; then
        grep -E -A3 '^\s+Failed |Error Message' "$log" | head -n 80
        [ "$f" -eq 0 ] && failed=$((failed + 1))
    fi
done
if [ -f "$cu_report" ]; then
    echo "iscsi-test-cu --dataloss against a Duet LUN: $(head -n 1 "$cu_report")"
    sed -n '2,/^$/p' "$cu_report" | sed '/^$/d; s/^/  failed: /'
else
    echo "iscsi-test-cu --dataloss: no report (the conformance test did not run)"
fi
# The simulator's campaign (issue 4): 500 seeds, every fault drawn swarm-style, each seed
# replayable with `duet sim --seed S --ops 500`. Seeds listed in tests/sim-known-failures.txt fail
# for a reason tracked in an issue: reported, not counted; any other failure fails the run, and so
# does a listed seed that passes (the list must stay true). Then one seed run twice, in two
# processes, must give the same trace (nothing seeded per process may leak into a run).
t0=$(date +%s)
simlog="$results/sim-campaign.log"
duet_sim() { dotnet src/Duet.Cli/bin/Release/net10.0/duet.dll sim "$@"; }
# Every fault: the simulator issue's (crash, link delay/drop, partition, slow and failed drives, full
# cache, shuffle) and the failover issue's (takeover, hang, shelf-path loss, shelf restart), both
# controllers behind the shelf (heartbeats, leases, fences, claims).
duet_sim --seeds 500 --ops 500 > "$simlog" 2>&1
rc=$?
known=$(grep -v '^#' tests/sim-known-failures.txt | awk 'NF {print $1}' | sort -n)
found=$(grep -o '^failure seed [0-9]*' "$simlog" | awk '{print $3}' | sort -n)
unexpected=$(comm -13 <(echo "$known") <(echo "$found") | grep . || true)
stale=$(comm -23 <(echo "$known") <(echo "$found") | grep . || true)
grep '^failure seed' "$simlog" | head -n 20
echo "campaign duet sim --seeds 500 --ops 500: $(tail -n 1 "$simlog") in $(( $(date +%s) - t0 )) s; known (tests/sim-known-failures.txt): $(echo $known)"
if [[ "$(tail -n 1 "$simlog")" == "seeds 500 failures "* ]] && [ -z "$unexpected" ] && [ -z "$stale" ]; then
    passed=$((passed + 1))
else
    echo "campaign: unexpected failures: ${unexpected:-none}; listed seeds that passed: ${stale:-none} (exit $rc)"
    failed=$((failed + 1))
fi
# The power campaign (issue 6, AW-4..AW-7): 1,000 seeds, each with whole-system power cuts (both
# controllers die at once, the shelf restarts, every drive keeps its flushed data plus any subset of
# its unflushed block writes, so multi-block writes and data/tag pairs tear), drawn swarm-style with
# controller crashes, small caches, slow drives and shuffled work, on RAID 1, 5 and 6. After the
# last cut: recovery, every written sector read back through both controllers, and a scrub of every
# array: zero lost acknowledged writes, zero checksum errors, zero parity mismatches. No known failures.
t0=$(date +%s)
powerlog="$results/sim-power-campaign.log"
duet_sim --seeds 1000 --faults power --ops 300 > "$powerlog" 2>&1
rc=$?
grep '^failure seed' "$powerlog" | head -n 20
echo "campaign duet sim --seeds 1000 --faults power --ops 300: $(tail -n 2 "$powerlog" | head -n 1); $(tail -n 1 "$powerlog") in $(( $(date +%s) - t0 )) s"
if [ "$(tail -n 1 "$powerlog")" == "seeds 1000 failures 0" ] && [ $rc -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
# The same with drive failures (AW-4, the write hole with a member missing): a parity array's drive fails
# at power-on or at any time, so cuts tear rows whose block on a lost member exists only in the write's
# partial sums. The same checks; no known failures.
t0=$(date +%s)
pfdlog="$results/sim-power-fail-drive-campaign.log"
duet_sim --seeds 1000 --faults power,fail-drive --ops 300 > "$pfdlog" 2>&1
rc=$?
grep '^failure seed' "$pfdlog" | head -n 20
echo "campaign duet sim --seeds 1000 --faults power,fail-drive --ops 300: $(tail -n 2 "$pfdlog" | head -n 1); $(tail -n 1 "$pfdlog") in $(( $(date +%s) - t0 )) s"
if [ "$(tail -n 1 "$pfdlog")" == "seeds 1000 failures 0" ] && [ $rc -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
# The host protocol campaign (issue 5, FO-3..FO-6): 500 seeds whose hosts speak Duet's host protocol to
# unit N of both controllers (multicast, one-unit frames forwarded, lost copies), with the failover
# faults (takeover, hang, shelf-path loss, shelf restart) drawn swarm-style. Checked: no host-visible
# error, no stall of a multicast both controllers held beyond the time limit + 1 s (virtual time), each
# write tag run at most once, every acknowledged write read back. Seeds listed in
# tests/sim-multicast-known-failures.txt are reported, not counted (and must still fail).
t0=$(date +%s)
mclog="$results/sim-multicast-campaign.log"
duet_sim --seeds 500 --faults failover,multicast --ops 300 > "$mclog" 2>&1
rc=$?
known=$(grep -v '^#' tests/sim-multicast-known-failures.txt | awk 'NF {print $1}' | sort -n)
found=$(grep -o '^failure seed [0-9]*' "$mclog" | awk '{print $3}' | sort -n)
unexpected=$(comm -13 <(echo "$known") <(echo "$found") | grep . || true)
stale=$(comm -23 <(echo "$known") <(echo "$found") | grep . || true)
grep '^failure seed' "$mclog" | head -n 20
echo "campaign duet sim --seeds 500 --faults failover,multicast --ops 300: $(tail -n 2 "$mclog" | head -n 1); $(tail -n 1 "$mclog") in $(( $(date +%s) - t0 )) s; known: $(echo $known)"
if [[ "$(tail -n 1 "$mclog")" == "seeds 500 failures "* ]] && [ -z "$unexpected" ] && [ -z "$stale" ]; then
    passed=$((passed + 1))
else
    echo "multicast campaign: unexpected failures: ${unexpected:-none}; listed seeds that passed: ${stale:-none} (exit $rc)"
    failed=$((failed + 1))
fi
one=$(duet_sim --seed 4242 --ops 500 | grep -o 'trace [0-9a-f]*')
two=$(duet_sim --seed 4242 --ops 500 | grep -o 'trace [0-9a-f]*')
echo "replay duet sim --seed 4242 in two processes: $one / $two"
if [ -n "$one" ] && [ "$one" == "$two" ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
echo "test.sh: total $(( $(date +%s) - start )) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
