#!/usr/bin/env bash
# The kernel matrix's report (called by scripts/kernel-matrix.sh after the guest ran; can be
# re-run on a kept console.log): parses the serial console the guest's /init printed,
# writes <work>/report.md and exits 1 when a check fails.
#
#   tests/kernel-matrix/report.sh WORK PACKAGE RELEASE KCONFIG QEMU_STATUS ELAPSED MIN_RUNNING
set -euo pipefail
cd "$(dirname "$0")/../.."
work="$1" package="$2" release="$3" kconfig="$4" qemu_status="$5" elapsed="$6" min_running="$7"
console="$work/console.log"
report="$work/report.md"
parts="$work/parts"
rm -rf "$parts"
mkdir -p "$parts"

# Every section into parts/<name> (carriage returns of the serial line and the terminal
# escapes the firmware prints before the kernel removed).
tr -d '\r' <"$console" | sed -E 's/\x1b(\[[?0-9;]*[a-zA-Z]|c)//g' | awk -v dir="$parts" '
    /^@@KM BEGIN [a-z_]+@@$/ { name = $3; sub(/@@$/, "", name); file = dir "/" name; printf "" > file; next }
    /^@@KM END [a-z_]+@@$/ { close(file); file = ""; next }
    /^@@KM FACT / { fact = $0; sub(/^@@KM FACT /, "", fact); sub(/@@$/, "", fact); print fact > (dir "/facts"); next }
    file != "" { print > file }'
touch "$parts/facts"
for name in plugins metrics containers events_oom busy_cpu_stat bpftool_prog bpftool_perf bpftool_link agent_log dmesg readyz; do
    touch "$parts/$name"
done
fact() { sed -n "s/^$1=//p" "$parts/facts" | tail -n 1; }
kconfig_value() { sed -n "s/^CONFIG_$1=//p" "$kconfig" | head -n 1; }
# JSON from the guest, or a fallback when the section is missing or garbled.
json_or() {
    local value
    value="$(jq -c . "$1" 2>/dev/null)" || value=""
    echo "${value:-$2}"
}
json_or "$parts/plugins" '[]' >"$parts/plugins.json"
json_or "$parts/bpftool_perf" '[]' >"$parts/perf.json"
json_or "$parts/bpftool_link" '[]' >"$parts/link.json"
json_or "$parts/bpftool_prog" '[]' >"$parts/prog.json"
json_or "$parts/events_oom" '[]' >"$parts/oom.json"

# The programs each BPF plugin's embedded objects hold, from the plugin files (the same
# files the guest ran): `kpulse plugins inspect` gives each object's place in the file, and
# the object's own symbol table gives each program's section (its attach point, e.g.
# kprobe/tcp_send_loss_probe) and function name (the kernel's program name, cut to 15 bytes).
jq -r '.[] | select(.capabilities | index("bpf")) | .name' "$parts/plugins.json" >"$parts/bpf_plugins"
: >"$parts/programs.tsv"
while read -r name; do
    [ -f "target/plugins/$name.wasm" ] || continue
    target/release/kpulse plugins inspect "target/plugins/$name.wasm" 2>/dev/null |
        jq -r '.bpf_objects[]? | "\(.offset) \(.size)"' >"$parts/objects" || : >"$parts/objects"
    while read -r offset size; do
        dd if="target/plugins/$name.wasm" of="$parts/object.o" iflag=skip_bytes,count_bytes \
            skip="$offset" count="$size" status=none
        # Section index -> name, then each FUNC symbol's section.
        readelf -S -W "$parts/object.o" |
            sed -nE 's/^ *\[ *([0-9]+)\] ([^ ]+) .*/\1 \2/p' >"$parts/object.sections"
        readelf -s -W "$parts/object.o" | awk '$4 == "FUNC" && $7 ~ /^[0-9]+$/ { print $7, $8 }' |
            while read -r index function; do
                section="$(awk -v i="$index" '$1 == i { print $2 }' "$parts/object.sections")"
                case "$section" in .text | "") continue ;; esac
                printf '%s\t%s\t%s\n' "$name" "$section" "$function" >>"$parts/programs.tsv"
            done
    done <"$parts/objects"
done <"$parts/bpf_plugins"
rm -f "$parts/object.o" "$parts/object.sections" "$parts/objects"

# Each program matched against the kernel's lists: loaded (`bpftool prog`, by name) and
# attached (its id on a BPF link, `bpftool link`, or on a perf/raw-tracepoint fd,
# `bpftool perf`). On 6.1 the kernel does not name the tracepoint behind a perf_event link
# (that link info came in 6.6), so the attach point is the section's and the kind is the
# kernel's program type (tracepoint, kprobe, tracing = fentry/fexit/tp_btf, raw_tracepoint).
jq -R -s --slurpfile perf "$parts/perf.json" --slurpfile link "$parts/link.json" \
    --slurpfile prog "$parts/prog.json" '
    ($perf[0] // []) as $perf | ($link[0] // []) as $link | ($prog[0] // []) as $prog
    | [split("\n")[] | select(length > 0) | split("\t")
       | {plugin: .[0], section: .[1], function: .[2]} as $p
       | [$prog[] | select(.name == $p.function or .name == ($p.function | .[0:15]))] as $loaded
       | ([$loaded[].id] ) as $ids
       | $p + {
           requested: ($p.section | split("/")[0]),
           loaded: ($loaded | length > 0),
           kernel_type: (($loaded | map(.type) | unique | join(",")) // ""),
           attached: any($link[], $perf[]; .prog_id as $id | $ids | index($id)),
           via: ([($link[] | select(.prog_id as $id | $ids | index($id)) | "link \(.type)"),
                  ($perf[] | select(.prog_id as $id | $ids | index($id)) | "fd \(.fd_type)")]
                 | unique | join(", "))}]' "$parts/programs.tsv" >"$parts/attach.json"

# Counts and figures.
count_state() { jq --arg s "$1" '[.[] | select(.state == $s)] | length' "$parts/plugins.json"; }
plugins_total=$(jq length "$parts/plugins.json")
running=$(count_state running)
inactive=$(count_state inactive)
failed=$(( $(count_state failed) + $(count_state quarantined) ))
starting=$(count_state starting)
samples=$(grep -cv '^#' "$parts/metrics" || true)
test_cgroup="$(fact test_cgroup)"
container_id="$(fact test_container_id)"
attributed="$parts/attributed"
if [ -n "$container_id" ]; then
    grep -v '^#' "$parts/metrics" | grep -F "$container_id" >"$attributed" || true
else
    : >"$attributed"
fi
prefix_of_plugin() { sed -E 's/^kpulse_([a-z0-9]+(_[a-z0-9]+)*)_container.*/\1/'; }

# The checks: name, result, detail.
checks=()
failures=0
check() {
    local name="$1" ok="$2" detail="$3"
    if [ "$ok" = 1 ]; then
        checks+=("| $name | pass | $detail |")
    else
        checks+=("| $name | **FAIL** | $detail |")
        failures=$((failures + 1))
    fi
}
is() { if "$@"; then echo 1; else echo 0; fi; }

check "guest booted and finished" "$(is grep -q '^@@KM DONE@@' <(tr -d '\r' <"$console"))" \
    "qemu exit status $qemu_status after ${elapsed} s; init done at $(fact done_s) s guest uptime"
check "agent up" "$(is [ "$(fact agent_ready)" = 1 ])" \
    "/readyz answered and no plugin was starting $(fact agent_ready_s) s after boot (agent started at $(fact boot_done_s) s)"
metrics_ok=0
metrics_detail="$samples samples"
if [ "$samples" -gt 0 ]; then
    if command -v promtool >/dev/null; then
        # promtool's lint findings (e.g. counters without _total) are not parse errors.
        if out="$(promtool check metrics <"$parts/metrics" 2>&1)" || ! grep -qi 'error parsing' <<<"$out"; then
            metrics_ok=1
            metrics_detail="$metrics_detail, parsed by promtool check metrics"
        else
            metrics_detail="$metrics_detail; promtool: $(head -n 1 <<<"$out")"
        fi
    elif ! grep -v '^#' "$parts/metrics" | grep -vqE '^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [^ ]+( [0-9]+)?$'; then
        metrics_ok=1
        metrics_detail="$metrics_detail, every line in the text format (no promtool here)"
    fi
fi
check "/metrics parses" "$metrics_ok" "$metrics_detail"
check "at least $min_running plugins running" "$(is [ "$running" -ge "$min_running" ])" \
    "$running running, $inactive inactive, $failed failed or quarantined, $starting starting, of $plugins_total"
bad_bpf=$(jq -r '[.[] | select(.capabilities | index("bpf"))
    | select(.state != "running" and (.state != "inactive" or .last_error == null))
    | "\(.name) (\(.state): \(.last_error // "no reason"))"] | join(", ")' "$parts/plugins.json")
ok=0; [ -z "$bad_bpf" ] && [ -s "$parts/bpf_plugins" ] && ok=1
check "every BPF plugin running or typed not-supported" "$ok" \
    "${bad_bpf:-$(wc -l <"$parts/bpf_plugins") BPF plugins, none failed}"
bad_any=$(jq -r '[.[] | select(.state == "failed" or .state == "quarantined") | .name] | join(", ")' "$parts/plugins.json")
check "no plugin failed or quarantined" "$(is [ -z "$bad_any" ])" "${bad_any:-none}"
panics="$( (grep -aE 'Kernel panic|Oops:|BUG:|WARNING: CPU|general protection fault' <(tr -d '\r' <"$console") || true;
    grep -E 'panicked at' "$parts/agent_log" || true) | head -n 3 | tr '\n|' ' /')"
check "no kernel or agent panic" "$(is [ -z "$panics" ])" "${panics:-none in the console, dmesg or agent log}"
ok=0; [ "$(fact agent_alive)" = 1 ] && [ "$(fact agent_stopped)" = 1 ] && [ "$(fact agent_exit)" = 0 ] && ok=1
check "agent alive at the end, clean SIGTERM exit" "$ok" \
    "alive=$(fact agent_alive) stopped=$(fact agent_stopped) exit=$(fact agent_exit)"
running_bpf=$(jq -c '[.[] | select(.state == "running") | .name]' "$parts/plugins.json")
# Plugins that attach only on demand say so on /metrics: `kpulse_<plugin>_attached 0`
# (softirq between trigger windows, net_rx_latency while no container network namespace
# exists) or `kpulse_<plugin>_capturing 0` (iotracing between captures). Those pass with
# nothing attached; a plugin that claims 1 there, or exports neither, must have a program on.
idle_on_purpose=$(sed -nE 's/^kpulse_([a-z0-9_]+)_(attached|capturing)(\{[^}]*\})? 0(\.0)?$/\1/p' "$parts/metrics" \
    | sort -u | jq -R . | jq -sc .)
unattached=$(jq -r --argjson idle "$idle_on_purpose" --argjson running "$running_bpf" '
    group_by(.plugin) | map(select(.[0].plugin as $p | ($idle | index($p) | not) and ($running | index($p)))
        | select(all(.[]; .attached | not)) | .[0].plugin) | join(", ")' "$parts/attach.json")
idle_list=$(jq -r 'join(", ")' <<<"$idle_on_purpose")
check "every running BPF plugin has an attached program" "$(is [ -z "$unattached" ])" \
    "${unattached:-yes (idle by design, their attached or capturing gauge at 0: ${idle_list:-none})}"
dangling=$(jq -r '[.[] | select(.loaded and (.attached | not)) | "\(.plugin) \(.function)"] | join(", ")' "$parts/attach.json")
check "no program loaded but left unattached" "$(is [ -z "$dangling" ])" \
    "${dangling:-$(jq '[.[] | select(.attached)] | length' "$parts/attach.json") of $(jq length "$parts/attach.json") programs attached}"
if [ "$(kconfig_value KPROBES)" = y ]; then
    tlp_kprobe=$(jq '[.[] | select(.plugin == "tcp_retransmit" and .section == "kprobe/tcp_send_loss_probe"
        and .kernel_type == "kprobe" and .attached)] | length' "$parts/attach.json")
    tlp_metric=$(sed -nE 's/^kpulse_tcp_retransmit_tlp_attached(\{[^}]*\})? ([0-9.]+)$/\2/p' "$parts/metrics" | head -n 1)
    ok=0; [ "$tlp_kprobe" -ge 1 ] && [ "${tlp_metric:-0}" = 1.0 ] && ok=1
    check "kprobe path (CONFIG_KPROBES=y)" "$ok" \
        "tcp_retransmit's kprobe/tcp_send_loss_probe loaded as a kprobe program and on a link: $tlp_kprobe; kpulse_tcp_retransmit_tlp_attached=${tlp_metric:-absent}"
fi
attributed_plugins=$(grep -oE '^kpulse_[a-z0-9_]+' "$attributed" | prefix_of_plugin | sort -u | tr '\n' ' ' || true)
# The busy loop uses all of its 0.2-CPU allowance between the guest's two scrapes (cpu_util
# reports percent of the allowance, clamped at 100) and is throttled (cpu_stat).
series() { { grep -E "^kpulse_$1\\{" "$attributed" || true; } | sed -nE 's/.* ([0-9.eE+-]+)$/\1/p' | head -n 1; }
util_total="$(series cpu_util_container_total)"
util_cores="$(series cpu_util_container_cores)"
throttled="$(series cpu_stat_container_nr_throttled)"
ok=0
awk -v t="${util_total:-0}" -v c="${util_cores:-0}" -v n="${throttled:-0}" \
    'BEGIN { exit !(t >= 50 && c > 0.19 && c < 0.21 && n >= 1) }' && ok=1
check "cgroup v2 container attribution" "$ok" \
    "$(wc -l <"$attributed") series carry the test container's id (from: ${attributed_plugins:-none}); cpu_util_container_total=${util_total:-absent} (>= 50 % of its cores), cores=${util_cores:-absent} (cpu.max 0.2), cpu_stat_container_nr_throttled=${throttled:-absent} (>= 1)"
oom_id="$(fact oom_container_id)"
oom_event=$(jq -c --arg id "$oom_id" '[.[]? | select(.container_id == $id)] | first // empty' "$parts/oom.json")
ok=0; [ -n "$oom_id" ] && [ -n "$oom_event" ] && ok=1
check "OOM event attributed to its container (BPF + cgroup v2)" "$ok" \
    "memory.events oom_kill=$(fact oom_kills), hog exit $(fact oom_hog_exit); oom events naming the container: $(jq --arg id "$oom_id" '[.[]? | select(.container_id == $id)] | length' "$parts/oom.json") of $(jq 'length' "$parts/oom.json")"

# The report.
{
    echo "# Kernel matrix: $release"
    echo
    echo "Package \`$package\`, booted by \`scripts/kernel-matrix.sh\` under qemu TCG on $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "(host $(uname -r)); qemu run ${elapsed} s. Kernel config: CONFIG_KPROBES=$(kconfig_value KPROBES),"
    echo "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=$(kconfig_value DYNAMIC_FTRACE_WITH_DIRECT_CALLS) (fentry),"
    echo "CONFIG_DEBUG_INFO_BTF=$(kconfig_value DEBUG_INFO_BTF), CONFIG_UPROBES=$(kconfig_value UPROBES)."
    compiled=$(grep -c 'source=Compiled' "$parts/agent_log" || true)
    compile_secs=$(grep -o 'compile_ms=[0-9]*' "$parts/agent_log" | awk -F= '{ t += $2 } END { printf "%.0f", t / 1000 }')
    echo "Agent ready $(fact agent_ready_s) s after boot; plugins compiled in the guest: $compiled"
    echo "(${compile_secs} s of compilation), loaded from the compile cache: $(grep -c 'source=Cached' "$parts/agent_log" || true)"
    echo "(cache disk mounted: $(fact cache_disk))."
    echo "cgroup: v2 only; $(sed -n 's/^root.subtree_control: /root subtree_control: /p' "$parts/cgroup" 2>/dev/null)."
    echo
    echo "## Checks"
    echo
    echo "| check | result | detail |"
    echo "|---|---|---|"
    printf '%s\n' "${checks[@]}"
    echo
    echo "## Plugins"
    echo
    echo "| plugin | state | kinds | BPF | reason (last_error) |"
    echo "|---|---|---|---|---|"
    jq -r '.[] | "| \(.name) | \(.state) | \(.kinds | join(",")) | \(if (.capabilities | index("bpf")) then "yes" else "" end) | \(.last_error // "" | gsub("\\|"; "/") | gsub("\n"; " ")) |"' \
        "$parts/plugins.json"
    echo
    echo "## BPF attach paths"
    echo
    echo "Every program of each BPF plugin's objects (section = requested attach point, from the"
    echo "plugin file), and what the guest kernel lists once the plugins settled: the program"
    echo "loaded (\`bpftool prog\`, its kernel type) and attached (on a BPF link or a perf /"
    echo "raw-tracepoint fd: \`bpftool link\`, \`bpftool perf\`). The host does not report the"
    echo "chosen path itself: only failed attaches are logged (\"BPF attach failed\"), and"
    echo "tcp_retransmit exports \`tlp_attached\`. Programs of objects a plugin loads only on a"
    echo "trigger (iotracing) are not loaded at the sample."
    echo
    echo "A program's section is its default point: a plugin may attach it elsewhere, e.g."
    echo "iolatency's iol_freeze at the older name blk_mq_freeze_queue where the newer one is"
    echo "missing (its log says which)."
    echo
    echo "| plugin | program section | function | kernel type | attached | via |"
    echo "|---|---|---|---|---|---|"
    jq -r '.[] | "| \(.plugin) | \(.section) | \(.function) | \(if .loaded then .kernel_type else "not loaded" end) | \(if .attached then "yes" else "no" end) | \(.via) |"' "$parts/attach.json"
    echo
    echo "Kernel totals: links by type: $(jq -r 'group_by(.type) | map("\(.[0].type) \(length)") | join(", ")' "$parts/link.json");"
    echo "programs by type: $(jq -r 'group_by(.type) | map("\(.[0].type) \(length)") | join(", ")' "$parts/prog.json")."
    echo
    echo "Attach failures, fallbacks and not-supported notes in the agent log:"
    echo
    echo '```'
    grep -E 'BPF attach failed|not supported|not-supported|traced at|not traced' "$parts/agent_log" | cut -c1-400 || echo "(none)"
    echo '```'
    echo
    echo "## cgroup v2 attribution of the test container"
    echo
    echo "Busy loop (capped by cpu.max at 20 % of a CPU) in \`$test_cgroup\`"
    echo "(the kubelet's systemd-driver layout; no runtime in the guest). Its cpu.stat:"
    echo "$(tr '\n' ' ' <"$parts/busy_cpu_stat")."
    echo "Registry entry (GET /containers):"
    echo
    echo '```'
    jq -c --arg id "$container_id" '.data.containers[]? | select(.id == $id)' "$parts/containers" 2>/dev/null | head -c 1500 || true
    echo
    echo '```'
    echo
    echo "Series that carry its id ($(wc -l <"$attributed")), the first of each plugin:"
    echo
    echo '```'
    awk '{ split($0, a, "{"); name = a[1]; sub(/_container.*/, "", name); if (!(name in seen)) { seen[name] = 1; print } }' "$attributed" | cut -c1-400
    echo '```'
    echo
    echo "The OOM kill in the pod's second container (\`cri-containerd-$oom_id.scope\`,"
    echo "memory.max 32 MiB), as the oom plugin saved it (GET /events?tracer=oom):"
    echo
    echo '```'
    if [ -n "$oom_event" ]; then
        jq '{time, tracer_name, container_id, container_hostname, cgroup_path,
            victim: .tracer_data.victim | {pid, comm, container_id, memory_cgroup_id, anon_rss_kb},
            trigger: .tracer_data.trigger | {pid, comm, cgroup}}' <<<"$oom_event" 2>/dev/null || echo "$oom_event"
    else
        echo "(none)"
    fi
    echo '```'
    echo
    echo "## Warnings and errors in the agent log"
    echo
    echo '```'
    grep -E ' (WARN|ERROR) ' "$parts/agent_log" | cut -c1-400 | head -n 40 || echo "(none)"
    echo '```'
} >"$report"

echo "report: $report"
printf '%s\n' "${checks[@]}"
if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
