#!/usr/bin/env python3
"""Writes kpulse's Grafana dashboards (deploy/grafana/*.json) from the panel lists below.

The panels are data, not hand-edited JSON: add or change a panel here and run
`python3 deploy/grafana/generate.py`; `--check` exits 1 when a committed file differs from
what this script writes (the integration test `dashboards` runs it, then asks a real
Prometheus scraping a real agent for every expression in the files).

Metric names are the default prefix's (`kpulse_`); see deploy/grafana/README.md for the
`huatuo_bamai` mode, in which HUATUO's own dashboards apply instead.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Every panel and variable queries the datasource chosen in this variable, so the files
# import into any Grafana without editing (and provision unchanged).
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
H = 'host=~"$host"'
C = 'host=~"$host", container_name=~"$container"'
# The agent's own families carry no `host` label (only what plugins report does): they are
# told apart by Prometheus' `instance`.
I = 'instance=~"$instance"'
P = 'instance=~"$instance", plugin=~"$plugin"'
R = "$__rate_interval"


def rate(selector):
    return f"rate({selector}[{R}])"


# ---------------------------------------------------------------------------------------
# Panels: (title, unit, [(expr, legend)], description) under (row title, [panels]).
# A panel's kind is "timeseries" unless given as a fifth element ("table", "stat").


def panel(title, unit, targets, description="", kind="timeseries"):
    return {
        "title": title,
        "unit": unit,
        "targets": targets,
        "description": description,
        "kind": kind,
    }


HOST = [
    (
        "CPU and load",
        [
            panel(
                "CPU utilisation",
                "percent",
                [
                    (f"kpulse_cpu_util_usr{{{H}}}", "{{host}} user"),
                    (f"kpulse_cpu_util_sys{{{H}}}", "{{host}} system"),
                    (f"kpulse_cpu_util_total{{{H}}}", "{{host}} total"),
                ],
                "Percent of all CPUs (cpu_util, /proc/stat).",
            ),
            panel(
                "I/O wait",
                "percent",
                [(f"kpulse_diskio_disk_iowait_percent{{{H}}}", "{{host}}")],
                "Percent of CPU time waiting for I/O (diskio, /proc/stat).",
            ),
            panel(
                "Load average",
                "short",
                [
                    (f"kpulse_loadavg_load1{{{H}}}", "{{host}} 1m"),
                    (f"kpulse_loadavg_load5{{{H}}}", "{{host}} 5m"),
                    (f"kpulse_loadavg_load15{{{H}}}", "{{host}} 15m"),
                ],
            ),
            panel(
                "Tasks",
                "short",
                [
                    (f"kpulse_loadavg_nr_running{{{H}}}", "{{host}} runnable"),
                    (f"kpulse_loadavg_nr_tasks{{{H}}}", "{{host}} tasks"),
                ],
            ),
            panel(
                "Run-queue latency",
                "short",
                [(f"sum by (host, zone) ({rate(f'kpulse_runqlat_latency_total{{{H}}}')})", "{{host}} {{zone}}")],
                "Wake-ups per second by run-queue latency zone (runqlat, sched tracepoints).",
            ),
            panel(
                "Softirq latency",
                "short",
                [
                    (
                        f"sum by (host, type, zone) ({rate(f'kpulse_softirq_latency_total{{{H}}}')})",
                        "{{host}} {{type}} {{zone}}",
                    )
                ],
                "Softirqs per second by vector and raise-to-run latency zone (softirq).",
            ),
        ],
    ),
    (
        "Memory",
        [
            panel(
                "Memory pages",
                "short",
                [
                    (f"kpulse_memory_vmstat_nr_free_pages{{{H}}}", "{{host}} free"),
                    (f"kpulse_memory_vmstat_nr_anon_pages{{{H}}}", "{{host}} anon"),
                    (f"kpulse_memory_vmstat_nr_file_pages{{{H}}}", "{{host}} file"),
                    (f"kpulse_memory_vmstat_nr_shmem{{{H}}}", "{{host}} shmem"),
                ],
                "Pages (usually 4 KiB) from /proc/vmstat (memory_vmstat).",
            ),
            panel(
                "Dirty and writeback pages",
                "short",
                [
                    (f"kpulse_memory_vmstat_nr_dirty{{{H}}}", "{{host}} dirty"),
                    (f"kpulse_memory_vmstat_nr_writeback{{{H}}}", "{{host}} writeback"),
                    (f"kpulse_memory_vmstat_nr_dirty_threshold{{{H}}}", "{{host}} dirty threshold"),
                ],
            ),
            panel(
                "Page faults and swap",
                "ops",
                [
                    (rate(f"kpulse_memory_vmstat_pgfault{{{H}}}"), "{{host}} faults"),
                    (rate(f"kpulse_memory_vmstat_pgmajfault{{{H}}}"), "{{host}} major faults"),
                    (rate(f"kpulse_memory_vmstat_pswpin{{{H}}}"), "{{host}} swap in"),
                    (rate(f"kpulse_memory_vmstat_pswpout{{{H}}}"), "{{host}} swap out"),
                ],
                "Per second; /proc/vmstat counters (exported as gauges, as HUATUO does).",
            ),
            panel(
                "Workingset refaults",
                "ops",
                [
                    (rate(f"kpulse_memory_vmstat_workingset_refault_anon{{{H}}}"), "{{host}} anon"),
                    (rate(f"kpulse_memory_vmstat_workingset_refault_file{{{H}}}"), "{{host}} file"),
                ],
            ),
            panel(
                "Free blocks by order",
                "short",
                [(f"sum by (host, order) (kpulse_memory_buddyinfo_blocks{{{H}}})", "{{host}} order {{order}}")],
                "Free buddy-allocator blocks over all nodes and zones (memory_buddyinfo): "
                "few high-order blocks mean fragmentation.",
            ),
            panel(
                "Reclaim and compaction stalls",
                "short",
                [
                    (f"kpulse_memory_free_allocpages_stall{{{H}}}", "{{host}} direct reclaim"),
                    (f"kpulse_memory_free_compaction_stall{{{H}}}", "{{host}} direct compaction"),
                ],
                "Stall time in direct reclaim and compaction (memory_free, vmscan/compaction tracepoints).",
            ),
            panel(
                "TCP memory",
                "percent",
                [(f"kpulse_tcp_memory_usage_percent{{{H}}}", "{{host}}")],
                "TCP socket memory against net.ipv4.tcp_mem (tcp_memory).",
            ),
        ],
    ),
    (
        "Pressure (PSI)",
        [
            panel(
                "CPU pressure",
                "percentunit",
                [
                    (rate(f"kpulse_pressure_cpu_waiting_seconds_total{{{H}}}"), "{{host}} some"),
                    (rate(f"kpulse_pressure_cpu_stalled_seconds_total{{{H}}}"), "{{host}} full"),
                ],
                "Share of time some / all tasks waited for a CPU (/proc/pressure/cpu).",
            ),
            panel(
                "Memory pressure",
                "percentunit",
                [
                    (rate(f"kpulse_pressure_memory_waiting_seconds_total{{{H}}}"), "{{host}} some"),
                    (rate(f"kpulse_pressure_memory_stalled_seconds_total{{{H}}}"), "{{host}} full"),
                ],
            ),
            panel(
                "I/O pressure",
                "percentunit",
                [
                    (rate(f"kpulse_pressure_io_waiting_seconds_total{{{H}}}"), "{{host}} some"),
                    (rate(f"kpulse_pressure_io_stalled_seconds_total{{{H}}}"), "{{host}} full"),
                ],
            ),
        ],
    ),
    (
        "Disk I/O",
        [
            panel(
                "Throughput",
                "Bps",
                [
                    (rate(f"kpulse_diskio_read_bytes_total{{{H}}}"), "{{host}} {{device}} read"),
                    (rate(f"kpulse_diskio_written_bytes_total{{{H}}}"), "{{host}} {{device}} write"),
                ],
            ),
            panel(
                "IOPS",
                "iops",
                [
                    (rate(f"kpulse_diskio_read_requests_total{{{H}}}"), "{{host}} {{device}} read"),
                    (rate(f"kpulse_diskio_write_requests_total{{{H}}}"), "{{host}} {{device}} write"),
                ],
            ),
            panel(
                "Utilisation",
                "percentunit",
                [(rate(f"kpulse_diskio_io_time_seconds_total{{{H}}}"), "{{host}} {{device}}")],
                "Share of time the device had I/O in flight.",
            ),
            panel(
                "Average queue size",
                "short",
                [
                    (rate(f"kpulse_diskio_io_time_weighted_seconds_total{{{H}}}"), "{{host}} {{device}} avg"),
                    (f"kpulse_diskio_io_in_progress{{{H}}}", "{{host}} {{device}} in flight"),
                ],
            ),
            panel(
                "Request latency",
                "s",
                [
                    (
                        f"{rate(f'kpulse_diskio_read_time_seconds_total{{{H}}}')} / "
                        f"{rate(f'kpulse_diskio_read_requests_total{{{H}}}')}",
                        "{{host}} {{device}} read",
                    ),
                    (
                        f"{rate(f'kpulse_diskio_write_time_seconds_total{{{H}}}')} / "
                        f"{rate(f'kpulse_diskio_write_requests_total{{{H}}}')}",
                        "{{host}} {{device}} write",
                    ),
                ],
                "Mean time per completed request (a gap while the device is idle).",
            ),
            panel(
                "Slow block requests (q2c)",
                "short",
                [(f"kpulse_iolatency_blkdisk_q2c{{{H}}}", "{{host}} {{disk}} {{zone}}")],
                "Requests of 20 ms or more by latency zone, queue to completion (iolatency): "
                "a disk shows once it had a slow request.",
            ),
            panel(
                "Slow block requests (d2c)",
                "short",
                [(f"kpulse_iolatency_blkdisk_d2c{{{H}}}", "{{host}} {{disk}} {{zone}}")],
                "As q2c, from dispatch to the driver to completion.",
            ),
        ],
    ),
    (
        "Network",
        [
            panel(
                "Throughput",
                "Bps",
                [
                    (rate(f"kpulse_netdev_receive_bytes_total{{{H}}}"), "{{host}} {{device}} rx"),
                    (rate(f"kpulse_netdev_transmit_bytes_total{{{H}}}"), "{{host}} {{device}} tx"),
                ],
            ),
            panel(
                "Packets",
                "pps",
                [
                    (rate(f"kpulse_netdev_receive_packets_total{{{H}}}"), "{{host}} {{device}} rx"),
                    (rate(f"kpulse_netdev_transmit_packets_total{{{H}}}"), "{{host}} {{device}} tx"),
                ],
            ),
            panel(
                "Errors and drops",
                "pps",
                [
                    (rate(f"kpulse_netdev_receive_errors_total{{{H}}}"), "{{host}} {{device}} rx errors"),
                    (rate(f"kpulse_netdev_receive_dropped_total{{{H}}}"), "{{host}} {{device}} rx dropped"),
                    (rate(f"kpulse_netdev_transmit_errors_total{{{H}}}"), "{{host}} {{device}} tx errors"),
                    (rate(f"kpulse_netdev_transmit_dropped_total{{{H}}}"), "{{host}} {{device}} tx dropped"),
                    (rate(f"kpulse_netdev_hw_rx_dropped_total{{{H}}}"), "{{host}} {{device}} hardware rx dropped"),
                ],
            ),
            panel(
                "Qdisc",
                "short",
                [
                    (rate(f"kpulse_netdev_qdisc_drops_total{{{H}}}"), "{{host}} {{device}} {{kind}} drops/s"),
                    (rate(f"kpulse_netdev_qdisc_requeues_total{{{H}}}"), "{{host}} {{device}} {{kind}} requeues/s"),
                    (f"kpulse_netdev_qdisc_backlog{{{H}}}", "{{host}} {{device}} {{kind}} backlog bytes"),
                ],
                "Root qdisc per device (netdev_qdisc, rtnetlink).",
            ),
            panel(
                "TCP",
                "short",
                [
                    (f"kpulse_netstat_Tcp_CurrEstab{{{H}}}", "{{host}} established"),
                    (rate(f"kpulse_netstat_Tcp_RetransSegs{{{H}}}"), "{{host}} retransmitted segments/s"),
                    (rate(f"kpulse_netstat_TcpExt_ListenDrops{{{H}}}"), "{{host}} listen drops/s"),
                    (rate(f"kpulse_netstat_TcpExt_ListenOverflows{{{H}}}"), "{{host}} listen overflows/s"),
                    (rate(f"kpulse_netstat_Tcp_OutRsts{{{H}}}"), "{{host}} resets sent/s"),
                ],
                "/proc/net/snmp and netstat (netstat; exported as gauges, as HUATUO does).",
            ),
            panel(
                "Sockets",
                "short",
                [
                    (f"kpulse_sockstat_sockets_used{{{H}}}", "{{host}} used"),
                    (f"kpulse_sockstat_TCP_inuse{{{H}}}", "{{host}} TCP in use"),
                    (f"kpulse_sockstat_TCP_tw{{{H}}}", "{{host}} TCP time-wait"),
                    (f"kpulse_sockstat_TCP_orphan{{{H}}}", "{{host}} TCP orphan"),
                    (f"kpulse_sockstat_UDP_inuse{{{H}}}", "{{host}} UDP in use"),
                ],
            ),
            panel(
                "ARP entries",
                "short",
                [
                    (f"kpulse_arp_total{{{H}}}", "{{host}} table"),
                    (f"kpulse_arp_entries{{{H}}}", "{{host}} {{device}}"),
                ],
            ),
        ],
    ),
    (
        "Filesystems",
        [
            panel(
                "Space used",
                "percentunit",
                [
                    (
                        f"1 - kpulse_filesystem_avail_bytes{{{H}}} / (kpulse_filesystem_size_bytes{{{H}}} > 0)",
                        "{{host}} {{mountpoint}}",
                    )
                ],
                "Share of the filesystem unavailable to unprivileged users (filesystem, statfs).",
            ),
            panel(
                "Inodes used",
                "percentunit",
                [
                    (
                        f"1 - kpulse_filesystem_files_free{{{H}}} / (kpulse_filesystem_files{{{H}}} > 0)",
                        "{{host}} {{mountpoint}}",
                    )
                ],
            ),
            panel(
                "Available",
                "bytes",
                [(f"kpulse_filesystem_avail_bytes{{{H}}} and kpulse_filesystem_size_bytes{{{H}}} > 0", "{{host}} {{mountpoint}}")],
            ),
            panel(
                "Read-only mounts",
                "short",
                [
                    (f"kpulse_filesystem_readonly{{{H}}}", "{{host}} {{mountpoint}}"),
                    (f"kpulse_mountpoint_perm_ro{{{H}}}", "{{host}} {{mountpoint}} (mountinfo)"),
                ],
                "1 for a filesystem mounted read-only.",
                "table",
            ),
        ],
    ),
]

CONTAINERS = [
    (
        "CPU",
        [
            panel(
                "CPU utilisation",
                "percent",
                [
                    (f"kpulse_cpu_util_container_usr{{{C}}}", "{{container_name}} user"),
                    (f"kpulse_cpu_util_container_sys{{{C}}}", "{{container_name}} system"),
                    (f"kpulse_cpu_util_container_total{{{C}}}", "{{container_name}} total"),
                ],
                "Percent of the host's CPUs (cpu_util, cpuacct).",
            ),
            panel(
                "CPU cores used",
                "short",
                [(f"kpulse_cpu_util_container_cores{{{C}}}", "{{container_name}}")],
            ),
            panel(
                "CFS throttling",
                "short",
                [
                    (rate(f"kpulse_cpu_stat_container_nr_throttled{{{C}}}"), "{{container_name}} throttled periods/s"),
                    (rate(f"kpulse_cpu_stat_container_nr_periods{{{C}}}"), "{{container_name}} periods/s"),
                ],
                "cpu.stat (cpu_stat).",
            ),
            panel(
                "Tasks",
                "short",
                [
                    (f"kpulse_loadavg_container_nr_running{{{C}}}", "{{container_name}} running"),
                    (f"kpulse_loadavg_container_nr_uninterruptible{{{C}}}", "{{container_name}} uninterruptible"),
                ],
                "Task states (loadavg, taskstats).",
            ),
            panel(
                "Run-queue latency",
                "short",
                [
                    (
                        f"sum by (container_name, zone) ({rate(f'kpulse_runqlat_container_latency_total{{{C}}}')})",
                        "{{container_name}} {{zone}}",
                    )
                ],
            ),
            panel(
                "CPU pressure",
                "percentunit",
                [
                    (rate(f"kpulse_pressure_container_cpu_waiting_seconds_total{{{C}}}"), "{{container_name}} some"),
                    (rate(f"kpulse_pressure_container_cpu_stalled_seconds_total{{{C}}}"), "{{container_name}} full"),
                ],
            ),
        ],
    ),
    (
        "Memory",
        [
            panel(
                "Memory",
                "bytes",
                [
                    (f"kpulse_memory_vmstat_container_usage_bytes{{{C}}}", "{{container_name}} usage"),
                    (f"kpulse_memory_vmstat_container_working_set_bytes{{{C}}}", "{{container_name}} working set"),
                    (f"kpulse_memory_vmstat_container_rss{{{C}}}", "{{container_name}} rss"),
                    (f"kpulse_memory_vmstat_container_cache{{{C}}}", "{{container_name}} cache"),
                ],
                "memory.usage_in_bytes and memory.stat (memory_vmstat).",
            ),
            panel(
                "Memory limit",
                "bytes",
                [(f"kpulse_memory_vmstat_container_limit_bytes{{{C}}}", "{{container_name}}")],
            ),
            panel(
                "Page faults",
                "ops",
                [
                    (rate(f"kpulse_memory_vmstat_container_pgfault{{{C}}}"), "{{container_name}} faults"),
                    (rate(f"kpulse_memory_vmstat_container_pgmajfault{{{C}}}"), "{{container_name}} major"),
                ],
            ),
            panel(
                "Direct reclaim",
                "short",
                [(f"kpulse_memory_reclaim_container_directstall{{{C}}}", "{{container_name}}")],
                "Memory cgroup direct reclaims (memory_reclaim): a container shows with its first reclaim.",
            ),
            panel(
                "Memory pressure",
                "percentunit",
                [
                    (rate(f"kpulse_pressure_container_memory_waiting_seconds_total{{{C}}}"), "{{container_name}} some"),
                    (rate(f"kpulse_pressure_container_memory_stalled_seconds_total{{{C}}}"), "{{container_name}} full"),
                ],
            ),
        ],
    ),
    (
        "I/O",
        [
            panel(
                "I/O pressure",
                "percentunit",
                [
                    (rate(f"kpulse_pressure_container_io_waiting_seconds_total{{{C}}}"), "{{container_name}} some"),
                    (rate(f"kpulse_pressure_container_io_stalled_seconds_total{{{C}}}"), "{{container_name}} full"),
                ],
            ),
            panel(
                "Dirty and writeback",
                "bytes",
                [
                    (f"kpulse_memory_vmstat_container_dirty{{{C}}}", "{{container_name}} dirty"),
                    (f"kpulse_memory_vmstat_container_writeback{{{C}}}", "{{container_name}} writeback"),
                ],
            ),
            panel(
                "Page-ins and page-outs",
                "ops",
                [
                    (rate(f"kpulse_memory_vmstat_container_pgpgin{{{C}}}"), "{{container_name}} in"),
                    (rate(f"kpulse_memory_vmstat_container_pgpgout{{{C}}}"), "{{container_name}} out"),
                ],
            ),
            panel(
                "Slow block requests (q2c)",
                "short",
                [(f"kpulse_iolatency_container_blkdisk_q2c{{{C}}}", "{{container_name}} {{disk}} {{zone}}")],
                "The container's block requests of 20 ms or more (iolatency).",
            ),
        ],
    ),
    (
        "Network",
        [
            panel(
                "Throughput",
                "Bps",
                [
                    (rate(f"kpulse_netdev_container_receive_bytes_total{{{C}}}"), "{{container_name}} {{device}} rx"),
                    (rate(f"kpulse_netdev_container_transmit_bytes_total{{{C}}}"), "{{container_name}} {{device}} tx"),
                ],
            ),
            panel(
                "Packets and drops",
                "pps",
                [
                    (rate(f"kpulse_netdev_container_receive_packets_total{{{C}}}"), "{{container_name}} {{device}} rx"),
                    (rate(f"kpulse_netdev_container_transmit_packets_total{{{C}}}"), "{{container_name}} {{device}} tx"),
                    (rate(f"kpulse_netdev_container_receive_dropped_total{{{C}}}"), "{{container_name}} {{device}} rx dropped"),
                    (rate(f"kpulse_netdev_container_transmit_dropped_total{{{C}}}"), "{{container_name}} {{device}} tx dropped"),
                ],
            ),
            panel(
                "TCP",
                "short",
                [
                    (f"kpulse_netstat_container_Tcp_CurrEstab{{{C}}}", "{{container_name}} established"),
                    (rate(f"kpulse_netstat_container_Tcp_RetransSegs{{{C}}}"), "{{container_name}} retransmitted/s"),
                    (rate(f"kpulse_netstat_container_TcpExt_ListenDrops{{{C}}}"), "{{container_name}} listen drops/s"),
                ],
            ),
            panel(
                "Sockets",
                "short",
                [
                    (f"kpulse_sockstat_container_sockets_used{{{C}}}", "{{container_name}} used"),
                    (f"kpulse_sockstat_container_TCP_inuse{{{C}}}", "{{container_name}} TCP in use"),
                    (f"kpulse_sockstat_container_TCP_tw{{{C}}}", "{{container_name}} TCP time-wait"),
                ],
            ),
            panel(
                "ARP entries",
                "short",
                [(f"kpulse_arp_container_entries{{{C}}}", "{{container_name}}")],
            ),
        ],
    ),
]


def events_per_second(metric, legend, by="", target="host"):
    """Per second, summed by `target` (`host`, or `instance` for the agent's own families)."""
    labels = f"{target}{', ' + by if by else ''}"
    selector = H if target == "host" else I
    return (f"sum by ({labels}) ({rate(f'{metric}{{{selector}}}')})", legend)


EVENTS = [
    (
        "Kernel events",
        [
            panel(
                "OOM kills",
                "short",
                [
                    events_per_second("kpulse_oom_events_total", "{{host}} all"),
                    events_per_second("kpulse_oom_host_total", "{{host}} host-wide (not a cgroup limit)"),
                ],
                "Per second (oom, oom/mark_victim).",
            ),
            panel(
                "Hung tasks",
                "short",
                [events_per_second("kpulse_hungtask_events_total", "{{host}}")],
            ),
            panel(
                "Soft lockups",
                "short",
                [events_per_second("kpulse_softlockup_total", "{{host}}")],
            ),
            panel(
                "Packet drops",
                "short",
                [events_per_second("kpulse_dropwatch_drops_total", "{{host}} {{reason}}", "reason")],
                "Kernel packet drops by reason (dropwatch, skb/kfree_skb).",
            ),
            panel(
                "TCP retransmissions",
                "short",
                [events_per_second("kpulse_tcp_retransmit_retransmits_total", "{{host}} {{event_type}}", "event_type")],
            ),
            panel(
                "Slow packet receive",
                "short",
                [events_per_second("kpulse_net_rx_latency_events_total", "{{host}} {{stage}}", "stage")],
                "Packets slow from RX timestamp to netif, TCP or user copy (net_rx_latency).",
            ),
            panel(
                "Memory reclaim stalls",
                "short",
                [events_per_second("kpulse_memreclaim_events_total", "{{host}} {{source}}", "source")],
            ),
            panel(
                "TX queue timeouts",
                "short",
                [events_per_second("kpulse_netdev_txqueue_timeout_events_total", "{{host}}")],
            ),
            panel(
                "Hardware errors",
                "short",
                [events_per_second("kpulse_ras_hw_err_total", "{{host}} {{type}}", "type")],
                "MCE, EDAC, GHES, AER, ... (ras).",
            ),
            panel(
                "Slow softirqs",
                "short",
                [events_per_second("kpulse_softirq_events_total", "{{host}}")],
            ),
        ],
    ),
    (
        "Autotracing",
        [
            panel(
                "Autotracing triggers",
                "short",
                [
                    events_per_second("kpulse_cpusys_fired_total", "{{host}} cpusys"),
                    events_per_second("kpulse_cpuidle_fired_total", "{{host}} cpuidle"),
                    events_per_second("kpulse_dload_fired_total", "{{host}} dload"),
                    events_per_second("kpulse_memburst_fired_total", "{{host}} memburst"),
                    events_per_second("kpulse_iotracing_documents_total", "{{host}} iotracing"),
                ],
                "Captures started per second by the autotracing plugins.",
            ),
            panel(
                "Events lost in the kernel",
                "short",
                [
                    events_per_second("kpulse_oom_lost_total", "{{host}} oom"),
                    events_per_second("kpulse_hungtask_lost_total", "{{host}} hungtask"),
                    events_per_second("kpulse_softlockup_lost_total", "{{host}} softlockup"),
                    events_per_second("kpulse_tcp_retransmit_lost_total", "{{host}} tcp_retransmit"),
                    events_per_second("kpulse_memreclaim_lost_total", "{{host}} memreclaim"),
                    events_per_second("kpulse_softirq_lost_total", "{{host}} softirq"),
                ],
                "Records the BPF ring buffer had no room for, per second.",
            ),
        ],
    ),
    (
        "Documents",
        [
            panel(
                "Documents saved per plugin",
                "short",
                [events_per_second(
                        "kpulse_plugin_documents_saved_total", "{{instance}} {{plugin}}", "plugin", "instance"
                    )],
                "Per second; every event plugin's documents (local store, OpenSearch).",
            ),
            panel(
                "Documents written per tracer",
                "short",
                [events_per_second(
                        "kpulse_storage_documents_written_total", "{{instance}} {{tracer}}", "tracer", "instance"
                    )],
            ),
            panel(
                "Documents in the last range",
                "short",
                [
                    (
                        f"sum by (plugin) (increase(kpulse_plugin_documents_saved_total{{{I}}}[$__range]))",
                        "{{plugin}}",
                    )
                ],
                "",
                "table",
            ),
        ],
    ),
]

AGENT = [
    (
        "Plugins",
        [
            panel(
                "Plugin states",
                "short",
                [(f"kpulse_plugin_state{{{P}}} == 1", "{{plugin}} {{state}}")],
                "One row per plugin: its current state (running, inactive, quarantined, ...).",
                "table",
            ),
            panel(
                "Calls",
                "ops",
                [(rate(f"kpulse_plugin_calls_total{{{P}}}"), "{{instance}} {{plugin}}")],
            ),
            panel(
                "Call errors, timeouts and traps",
                "ops",
                [
                    (rate(f"kpulse_plugin_call_errors_total{{{P}}}"), "{{instance}} {{plugin}} errors"),
                    (rate(f"kpulse_plugin_timeouts_total{{{P}}}"), "{{instance}} {{plugin}} timeouts"),
                    (rate(f"kpulse_plugin_traps_total{{{P}}}"), "{{instance}} {{plugin}} traps"),
                ],
            ),
            panel(
                "Restarts",
                "short",
                [(f"increase(kpulse_plugin_restarts_total{{{P}}}[$__range])", "{{instance}} {{plugin}}")],
            ),
            panel(
                "Plugin memory",
                "bytes",
                [(f"kpulse_plugin_memory_bytes{{{P}}}", "{{instance}} {{plugin}}")],
            ),
            panel(
                "Scrape duration",
                "s",
                [(f'kpulse_scrape_collector_duration_seconds{{instance=~"$instance", collector=~"$plugin"}}', "{{instance}} {{collector}}")],
            ),
            panel(
                "Scrape success",
                "short",
                [(f'kpulse_scrape_collector_success{{instance=~"$instance", collector=~"$plugin"}}', "{{instance}} {{collector}}")],
                "0 when the plugin's last scrape failed.",
            ),
            panel(
                "Denied reads and dropped samples",
                "ops",
                [
                    (rate(f"kpulse_plugin_denied_reads_total{{{P}}}"), "{{instance}} {{plugin}} denied reads"),
                    (rate(f"kpulse_plugin_metrics_dropped_total{{{P}}}"), "{{instance}} {{plugin}} samples dropped"),
                    (rate(f"kpulse_plugin_documents_dropped_total{{{P}}}"), "{{instance}} {{plugin}} documents dropped"),
                    (rate(f"kpulse_plugin_documents_rejected_total{{{P}}}"), "{{instance}} {{plugin}} documents rejected"),
                ],
            ),
            panel(
                "BPF records",
                "ops",
                [
                    (rate(f"kpulse_plugin_bpf_records_total{{{P}}}"), "{{instance}} {{plugin}} records"),
                    (rate(f"kpulse_plugin_bpf_ring_full_drops_total{{{P}}}"), "{{instance}} {{plugin}} ring full"),
                    (rate(f"kpulse_plugin_bpf_perf_lost_total{{{P}}}"), "{{instance}} {{plugin}} perf lost"),
                    (rate(f"kpulse_plugin_bpf_rate_limited_total{{{P}}}"), "{{instance}} {{plugin}} rate limited"),
                ],
            ),
            panel(
                "BPF objects",
                "short",
                [(f"kpulse_plugin_bpf_objects{{{P}}}", "{{instance}} {{plugin}}")],
            ),
        ],
    ),
    (
        "Agent process",
        [
            panel(
                "Resident memory",
                "bytes",
                [(f"kpulse_process_resident_memory_bytes{{{I}}}", "{{instance}}")],
            ),
            panel(
                "CPU",
                "percentunit",
                [(rate(f"kpulse_process_cpu_seconds_total{{{I}}}"), "{{instance}}")],
                "CPU seconds per second of the agent process.",
            ),
            panel(
                "Open file descriptors",
                "short",
                [(f"kpulse_process_open_fds{{{I}}}", "{{instance}}")],
            ),
            panel(
                "Versions",
                "short",
                [(f"kpulse_build_info{{{I}}}", "{{instance}} {{version}}")],
                "",
                "table",
            ),
            panel(
                "Containers",
                "short",
                [
                    (f"kpulse_containers{{{I}}}", "{{instance}} {{runtime}}"),
                    (rate(f"kpulse_container_resolve_misses_total{{{I}}}"), "{{instance}} resolve misses/s"),
                ],
            ),
            panel(
                "Profiler",
                "short",
                [
                    (f"kpulse_profiler_sessions_running{{{I}}}", "{{instance}} sessions running"),
                    (rate(f"kpulse_profiler_samples_total{{{I}}}"), "{{instance}} samples/s"),
                    (rate(f"kpulse_profiler_lost_samples_total{{{I}}}"), "{{instance}} lost samples/s"),
                ],
            ),
        ],
    ),
    (
        "Local store",
        [
            panel(
                "Queue length",
                "short",
                [(f"kpulse_storage_queue_length{{{I}}}", "{{instance}}")],
                "Documents waiting for the local writer.",
            ),
            panel(
                "Documents written",
                "ops",
                [(f"sum by (instance) ({rate(f'kpulse_storage_documents_written_total{{{I}}}')})", "{{instance}}")],
            ),
            panel(
                "Drops and errors",
                "ops",
                [
                    (rate(f"kpulse_storage_documents_dropped_total{{{I}}}"), "{{instance}} dropped: {{cause}}"),
                    (rate(f"kpulse_storage_documents_rejected_total{{{I}}}"), "{{instance}} rejected"),
                    (rate(f"kpulse_storage_write_errors_total{{{I}}}"), "{{instance}} write errors"),
                    (rate(f"kpulse_storage_corrupt_lines_total{{{I}}}"), "{{instance}} corrupt lines"),
                    (rate(f"kpulse_events_watch_dropped_total{{{I}}}"), "{{instance}} SSE watchers dropped"),
                ],
                "Every document that does not reach the store is counted by cause.",
            ),
        ],
    ),
    (
        "OpenSearch sink",
        [
            panel(
                "Documents",
                "ops",
                [
                    (rate(f"kpulse_opensearch_documents_indexed_total{{{I}}}"), "{{instance}} indexed"),
                    (rate(f"kpulse_opensearch_documents_duplicate_total{{{I}}}"), "{{instance}} duplicate"),
                    (rate(f"kpulse_opensearch_documents_retried_total{{{I}}}"), "{{instance}} retried"),
                    (rate(f"kpulse_opensearch_documents_rejected_total{{{I}}}"), "{{instance}} rejected (dead letter)"),
                    (rate(f"kpulse_opensearch_documents_dropped_total{{{I}}}"), "{{instance}} dropped: {{reason}}"),
                ],
                "Shown when the agent has a [storage.opensearch] table.",
            ),
            panel(
                "Spool",
                "short",
                [
                    (f"kpulse_opensearch_spooled{{{I}}}", "{{instance}} documents"),
                    (f"kpulse_opensearch_spooled_bytes{{{I}}}", "{{instance}} bytes"),
                ],
                "Documents waiting for the cluster on disk.",
            ),
            panel(
                "Bulk requests",
                "ops",
                [
                    (rate(f"kpulse_opensearch_bulk_requests_total{{{I}}}"), "{{instance}} requests"),
                    (rate(f"kpulse_opensearch_bulk_failures_total{{{I}}}"), "{{instance}} failures"),
                ],
            ),
            panel(
                "Bulk latency",
                "s",
                [
                    (f"kpulse_opensearch_bulk_duration_seconds{{{I}}}", "{{instance}} last"),
                    (
                        f"{rate(f'kpulse_opensearch_bulk_seconds_total{{{I}}}')} / "
                        f"{rate(f'kpulse_opensearch_bulk_requests_total{{{I}}}')}",
                        "{{instance}} mean",
                    ),
                ],
            ),
            panel(
                "Bulk throughput",
                "Bps",
                [(rate(f"kpulse_opensearch_bulk_bytes_total{{{I}}}"), "{{instance}}")],
            ),
        ],
    ),
    (
        "HTTP API",
        [
            panel(
                "Requests",
                "reqps",
                [
                    (
                        f"sum by (instance, route, status) ({rate(f'kpulse_http_server_requests_total{{{I}}}')})",
                        "{{instance}} {{route}} {{status}}",
                    )
                ],
            ),
            panel(
                "Latency p99",
                "s",
                [
                    (
                        "histogram_quantile(0.99, sum by (instance, route, le) "
                        f"({rate(f'kpulse_http_server_request_duration_seconds_bucket{{{I}}}')}))",
                        "{{instance}} {{route}}",
                    )
                ],
            ),
        ],
    ),
]


# ---------------------------------------------------------------------------------------
# Variables


def datasource_variable():
    return {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_variable(name, label, query, multi=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "options": [],
        "sort": 1,
        "hide": 0,
        "regex": "",
    }


HOST_VAR = query_variable("host", "Host", "label_values(kpulse_loadavg_load1, host)")
INSTANCE_VAR = query_variable("instance", "Agent", "label_values(kpulse_build_info, instance)")
CONTAINER_VAR = query_variable(
    "container",
    "Container",
    'label_values(kpulse_cpu_util_container_total{host=~"$host"}, container_name)',
)
PLUGIN_VAR = query_variable(
    "plugin", "Plugin", 'label_values(kpulse_plugin_state{instance=~"$instance"}, plugin)'
)


# ---------------------------------------------------------------------------------------
# Rendering


def render_panel(spec, panel_id, x, y, width):
    targets = [
        {
            "refId": chr(ord("A") + i),
            "datasource": DS,
            "expr": expr,
            "legendFormat": legend,
            "range": spec["kind"] == "timeseries",
            "instant": spec["kind"] != "timeseries",
            **({"format": "table"} if spec["kind"] == "table" else {}),
        }
        for i, (expr, legend) in enumerate(spec["targets"])
    ]
    out = {
        "id": panel_id,
        "type": spec["kind"],
        "title": spec["title"],
        "description": spec["description"],
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": width, "h": 8},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": spec["unit"]}, "overrides": []},
    }
    if spec["kind"] == "timeseries":
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return out


def dashboard(uid, title, description, rows, variables):
    panels = []
    panel_id = 1
    y = 0
    for row_title, specs in rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        for i, spec in enumerate(specs):
            x = (i % 3) * 8
            if i and i % 3 == 0:
                y += 8
            panels.append(render_panel(spec, panel_id, x, y, 8))
            panel_id += 1
        y += 8
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kpulse"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["kpulse"],
                "asDropdown": True,
                "title": "kpulse",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": panels,
    }


DASHBOARDS = {
    "kpulse-host.json": dashboard(
        "kpulse-host",
        "kpulse / Host",
        "CPU, load, memory, pressure, disk I/O, network and filesystems of the hosts kpulse runs on.",
        HOST,
        [HOST_VAR],
    ),
    "kpulse-containers.json": dashboard(
        "kpulse-containers",
        "kpulse / Containers",
        "Per-container CPU, memory, I/O and network (container labels from containerd, Docker, CRI).",
        CONTAINERS,
        [HOST_VAR, CONTAINER_VAR],
    ),
    "kpulse-events.json": dashboard(
        "kpulse-events",
        "kpulse / Events",
        "Counters of the event and autotracing plugins; the documents themselves are in the local "
        "store, GET /events and OpenSearch.",
        EVENTS,
        [HOST_VAR, INSTANCE_VAR],
    ),
    "kpulse-agent.json": dashboard(
        "kpulse-agent",
        "kpulse / Agent health",
        "The agent and its plugins: states, calls, errors, restarts, memory, the local store, "
        "the OpenSearch sink and the HTTP API.",
        AGENT,
        [INSTANCE_VAR, PLUGIN_VAR],
    ),
}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, board in DASHBOARDS.items():
        text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(
            "out of date (run python3 deploy/grafana/generate.py): " + ", ".join(stale),
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
