#!/bin/busybox sh
# shellcheck shell=dash
# /init of the kernel-matrix initramfs (scripts/kernel-matrix.sh): PID 1 under qemu. Mounts
# what kpulse needs on a pure cgroup v2 host, starts the agent with every built-in plugin,
# exercises a few of them, and prints everything the harness parses between
#   @@KM BEGIN <section>@@ ... @@KM END <section>@@
# lines on the serial console. It asserts nothing itself: the harness does, on the host,
# so that a run that dies half-way still leaves what it printed.
#
# Variables from the kernel command line (the kernel passes unknown `name=value` words to
# init's environment): km_settle_secs, the longest wait for the agent and its plugins.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

settle="${km_settle_secs:-480}"
api=http://127.0.0.1:19704

begin() { echo "@@KM BEGIN $1@@"; }
end() { echo "@@KM END $1@@"; }
# note KEY VALUE: one line of the `facts` section.
note() { echo "@@KM FACT $1=$2@@"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# Busybox 1.35's static wget segfaults with -T, hence timeout(1) for the bound.
get() { timeout 20 wget -q -O - "$api$1" 2>/dev/null; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/lib/kpulse /var/log
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpffs /sys/fs/bpf
# cgroup v2 only, at /sys/fs/cgroup, as a systemd host with unified hierarchy has it.
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
ip link set lo up

# The compile cache on the harness's disk image (/dev/vda), when its modules load; without
# it the agent compiles every plugin, which only takes longer.
mkdir -p /mnt/cache /var/lib/kpulse/cache
while read -r module; do insmod "$module" 2>/dev/null; done </etc/km-modules
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
if mount -t ext4 /dev/vda /mnt/cache 2>/dev/null; then
    mkdir -p /mnt/cache/cache
    chmod 0700 /mnt/cache/cache
    mount --bind /mnt/cache/cache /var/lib/kpulse/cache
    note cache_disk 1
else
    note cache_disk 0
fi
hostname kmguest

begin kernel
uname -a
echo "cmdline: $(cat /proc/cmdline)"
for pmu in /sys/bus/event_source/devices/*; do echo "pmu ${pmu##*/}"; done
[ -e /sys/kernel/btf/vmlinux ] && echo "btf present" || echo "btf absent"
end kernel

# The test workload's cgroup: where the kubelet's systemd cgroup driver puts a container
# on a cgroup v2 host (kpulse recognises the layout without a runtime to ask), with every
# controller the root offers enabled at each level above the leaf, as systemd does.
pod_uid=0c0ffee0_0000_4000_8000_000000000014
container_id=c0ffee14c0ffee14c0ffee14c0ffee14c0ffee14c0ffee14c0ffee14c0ffee14
oom_id=00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee
pod=kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$pod_uid.slice
leaf=/sys/fs/cgroup/$pod/cri-containerd-$container_id.scope
controllers="$(cat /sys/fs/cgroup/cgroup.controllers)"
enable=""
for c in $controllers; do enable="$enable +$c"; done
mkdir -p "$leaf"
dir=/sys/fs/cgroup
for part in kubepods.slice kubepods-burstable.slice "kubepods-burstable-pod$pod_uid.slice"; do
    # shellcheck disable=SC2086
    echo $enable >"$dir/cgroup.subtree_control"
    dir="$dir/$part"
done
# shellcheck disable=SC2086
echo $enable >"$dir/cgroup.subtree_control"
begin cgroup
echo "root.controllers: $controllers"
echo "root.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "pod.subtree_control: $(cat "$dir/cgroup.subtree_control")"
echo "leaf: ${leaf#/sys/fs/cgroup}"
echo "leaf.controllers: $(cat "$leaf/cgroup.controllers")"
end cgroup
note test_cgroup "${leaf#/sys/fs/cgroup}"
note test_container_id "$container_id"
note oom_container_id "$oom_id"

note boot_done_s "$(uptime_s)"
/kpulse run --config /etc/kpulse.toml >/var/log/kpulse.log 2>&1 &
agent=$!
note agent_pid "$agent"

# Ready when /readyz answers and no plugin is still starting (each compiles under emulation).
ready=""
deadline=$(( $(cut -d. -f1 /proc/uptime) + settle ))
while [ "$(cut -d. -f1 /proc/uptime)" -lt "$deadline" ]; do
    kill -0 "$agent" 2>/dev/null || break
    if get /readyz >/dev/null; then
        plugins="$(get /plugins)"
        if [ -n "$plugins" ] && ! echo "$plugins" | grep -q '"state":"starting"'; then
            ready=1
            break
        fi
    fi
    sleep 1
done
note agent_ready "${ready:-0}"
note agent_ready_s "$(uptime_s)"
begin readyz
timeout 20 wget -q -S -O - "$api/readyz" 2>&1
echo
end readyz

# Runs whether or not the agent settled: what it shows then is the report's evidence.
if kill -0 "$agent" 2>/dev/null; then
    # A first scrape: cpu_util computes a container's utilisation between two scrapes, so
    # the one below covers the busy loop only.
    get /metrics >/dev/null
    # The test workload: a busy loop in a leaf cgroup capped at 20 % of a CPU, so cpu_util
    # sees it use all of its allowance and cpu_stat counts throttling.
    echo "20000 100000" >"$leaf/cpu.max" 2>/dev/null
    leaf="$leaf" sh -c 'echo $$ >"$leaf/cgroup.procs"; exec sh -c "while :; do :; done"' &
    busy=$!
    note busy_pid "$busy"
    note busy_cgroup "$(cat "/proc/$busy/cgroup")"
    # Loopback TCP traffic for the network plugins (netstat, sockstat, tcp_retransmit).
    nc -l -p 5555 >/dev/null 2>&1 &
    listener=$!
    dd if=/dev/zero bs=64k count=64 2>/dev/null | nc 127.0.0.1 5555 >/dev/null 2>&1
    kill "$listener" 2>/dev/null
    # Two scrape intervals' worth of samples: wait until the busy cgroup's usage moved
    # and it was throttled at least once (bounded), then a little for the plugins' ticks.
    i=0
    while [ $i -lt 30 ]; do
        throttled="$(sed -n 's/^nr_throttled //p' "$leaf/cpu.stat")"
        [ "${throttled:-0}" -ge 3 ] && break
        sleep 1
        i=$((i + 1))
    done
    note busy_nr_throttled "${throttled:-0}"
    sleep 3
    # An OOM kill in a second container of the pod (memory.max 32 MiB): the oom plugin's
    # BPF program (oom/mark_victim) sees it, and the event names the container by its v2
    # cgroup.
    oom_leaf="/sys/fs/cgroup/$pod/cri-containerd-$oom_id.scope"
    mkdir -p "$oom_leaf"
    echo 33554432 >"$oom_leaf/memory.max"
    leaf="$oom_leaf" timeout -s KILL 60 sh -c 'echo $$ >"$leaf/cgroup.procs"; exec tail /dev/zero' &
    hog=$!
    wait "$hog"
    note oom_hog_exit "$?"
    note oom_kills "$(sed -n 's/^oom_kill //p' "$oom_leaf/memory.events")"
    i=0
    while [ $i -lt 30 ] && ! get "/events?tracer=oom&limit=10" | grep -q "$oom_id"; do
        sleep 1
        i=$((i + 1))
    done
    begin events_oom
    get "/events?tracer=oom&limit=10"
    echo
    end events_oom
    begin plugins
    get /plugins
    echo
    end plugins
    begin metrics
    get /metrics
    end metrics
    begin containers
    get /containers
    echo
    end containers
    begin busy_cpu_stat
    cat "$leaf/cpu.stat"
    end busy_cpu_stat
    kill "$busy" 2>/dev/null
fi

# The kernel's own view of the BPF programs and where they are attached.
begin bpftool_prog
bpftool -j prog show 2>&1
echo
end bpftool_prog
begin bpftool_perf
bpftool -j perf show 2>&1
echo
end bpftool_perf
begin bpftool_link
bpftool -j link show 2>&1
echo
end bpftool_link

if kill -0 "$agent" 2>/dev/null; then
    note agent_alive 1
    kill -TERM "$agent"
    i=0
    while kill -0 "$agent" 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
    if kill -0 "$agent" 2>/dev/null; then note agent_stopped 0; else note agent_stopped 1; fi
else
    note agent_alive 0
fi
wait "$agent" 2>/dev/null
note agent_exit "$?"

begin agent_log
cat /var/log/kpulse.log
end agent_log
begin dmesg
dmesg
end dmesg
umount /var/lib/kpulse/cache /mnt/cache 2>/dev/null
note done_s "$(uptime_s)"
echo "@@KM DONE@@"
sync
poweroff -f
