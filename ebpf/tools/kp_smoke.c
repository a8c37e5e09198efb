// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * kp-smoke: development smoke test for kpulse BPF objects (libbpf, not part
 * of the agent).  Loads one object, optionally overrides `volatile const`
 * globals, attaches every program by its section name, drains the `events`
 * ring buffer the way the host does (epoll + 10 ms timer drain) for N
 * seconds, prints each record, then dumps `stats` and `drop_reasons`.
 *
 *   kp-smoke <obj.bpf.o> [-d seconds] [-s name=value]... [-q]
 *
 * Build: make smoke   (gcc + libbpf-dev)
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "kpulse_events.h"

static volatile sig_atomic_t stop;
static int quiet;
static unsigned long nrec, nbytes;

static void on_sig(int s) { (void)s; stop = 1; }

static int set_rodata(struct bpf_object *obj, const char *name, unsigned long long val)
{
	struct btf *btf = bpf_object__btf(obj);
	struct bpf_map *map;
	const struct btf_type *sec;
	const struct btf_var_secinfo *vs;
	size_t sz;
	char *data;
	int id, i;

	bpf_object__for_each_map(map, obj) {
		if (!strstr(bpf_map__name(map), ".rodata"))
			continue;
		id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
		if (id < 0)
			return -ENOENT;
		sec = btf__type_by_id(btf, id);
		data = (char *)bpf_map__initial_value(map, &sz);
		vs = btf_var_secinfos(sec);
		for (i = 0; i < btf_vlen(sec); i++, vs++) {
			const struct btf_type *v = btf__type_by_id(btf, vs->type);
			if (strcmp(btf__name_by_offset(btf, v->name_off), name))
				continue;
			if (vs->offset + vs->size > sz)
				return -EINVAL;
			memcpy(data + vs->offset, &val, vs->size); /* little endian */
			return 0;
		}
	}
	return -ENOENT;
}

static void print_hdr(const struct kp_event_header *h)
{
	printf("kind=%u cpu=%u ts=%llu pid=%u tgid=%u comm=%.16s cgid=%llu",
	       h->kind, h->cpu, (unsigned long long)h->ts_ns, h->pid, h->tgid,
	       h->comm, (unsigned long long)h->cgroup_id);
}

static int on_event(void *ctx, void *data, size_t len)
{
	const struct kp_event_header *h = data;
	char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];

	(void)ctx;
	nrec++;
	nbytes += len;
	if (quiet || len < sizeof(*h))
		return 0;
	print_hdr(h);
	switch (h->kind) {
	case KP_EV_SOFTIRQ: {
		const struct kp_softirq_event *e = data;
		printf(" | vec=%u zone=%u lat=%lluns", e->vec, e->zone,
		       (unsigned long long)e->latency_ns);
		break;
	}
	case KP_EV_OOM: {
		const struct kp_oom_event *e = data;
		printf(" | trigger_memcg=%llu victim=%u/%.16s uid=%u anon=%llukB adj=%d valid=%#x",
		       (unsigned long long)e->trigger_memcg_id, e->victim_pid, e->victim_comm,
		       e->victim_uid, (unsigned long long)e->victim_anon_rss_kb,
		       e->victim_oom_score_adj, e->valid);
		break;
	}
	case KP_EV_HUNGTASK: {
		const struct kp_hungtask_event *e = data;
		printf(" | hung=%u/%.16s", e->hung_pid, e->hung_comm);
		break;
	}
	case KP_EV_MEMRECLAIM: {
		const struct kp_memreclaim_event *e = data;
		printf(" | dur=%lluns src=%u order=%d nr=%llu memcg=%llu",
		       (unsigned long long)e->duration_ns, e->source, e->order,
		       (unsigned long long)e->nr_reclaimed, (unsigned long long)e->memcg_id);
		break;
	}
	case KP_EV_DROP: {
		const struct kp_drop_event *e = data;
		printf(" | reason=%u proto=%#x len=%u if=%u/%.16s netns=%u loc=%#llx depth=%u top=%#llx",
		       e->reason, e->protocol, e->len, e->ifindex, e->ifname, e->netns_inum,
		       (unsigned long long)e->location, e->stack_depth,
		       (unsigned long long)e->stack[0]);
		break;
	}
	case KP_EV_NET_RX_LATENCY: {
		const struct kp_net_rx_latency_event *e = data;
		inet_ntop(AF_INET, &e->saddr, a, sizeof(a));
		inet_ntop(AF_INET, &e->daddr, b, sizeof(b));
		printf(" | stage=%u lat=%lluns len=%u if=%u/%.16s netns=%u %s:%u->%s:%u seq=%u flags=%#x state=%u",
		       e->stage, (unsigned long long)e->latency_ns, e->len, e->ifindex, e->ifname,
		       e->netns_inum, a, e->sport, b, e->dport, e->seq, e->flags, e->tcp_state);
		break;
	}
	case KP_EV_SOFTLOCKUP: {
		const struct kp_softlockup_event *e = data;
		printf(" | msg_len=%u depth=%u msg=\"%.128s\"", e->msg_len, e->stack_depth, e->msg);
		break;
	}
	case KP_EV_SCHED_SWITCH: {
		const struct kp_sched_switch_event *e = data;
		printf(" | next=%u prev_state=%u", e->next_pid, e->prev_state);
		break;
	}
	}
	printf(" (%zu B)\n", len);
	return 0;
}

static void dump_percpu_u64(struct bpf_object *obj, const char *name, int is_hash)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, name);
	int ncpu = libbpf_num_possible_cpus(), fd, i;
	__u32 key, next, *prev = NULL;
	__u64 vals[512], v;

	if (!map || ncpu > 512)
		return;
	fd = bpf_map__fd(map);
	printf("%s:", name);
	if (!is_hash) {
		for (key = 0; key < bpf_map__max_entries(map); key++) {
			if (bpf_map_lookup_elem(fd, &key, vals))
				continue;
			for (v = 0, i = 0; i < ncpu; i++)
				v += vals[i];
			printf(" [%u]=%llu", key, (unsigned long long)v);
		}
	} else {
		while (!bpf_map_get_next_key(fd, prev, &next)) {
			if (!bpf_map_lookup_elem(fd, &next, &v))
				printf(" [%u]=%llu", next, (unsigned long long)v);
			key = next;
			prev = &key;
		}
	}
	printf("\n");
}

int main(int argc, char **argv)
{
	struct ring_buffer *rb = NULL;
	struct bpf_program *prog;
	struct bpf_object *obj;
	struct bpf_map *events;
	int duration = 5, opt, err, nattached = 0;
	char *sets[32];
	int nsets = 0;
	time_t end;

	if (argc < 2) {
		fprintf(stderr, "usage: %s <obj.bpf.o> [-d secs] [-s name=value]... [-q]\n", argv[0]);
		return 2;
	}
	optind = 2;
	while ((opt = getopt(argc, argv, "d:s:q")) != -1) {
		if (opt == 'd')
			duration = atoi(optarg);
		else if (opt == 's' && nsets < 32)
			sets[nsets++] = optarg;
		else if (opt == 'q')
			quiet = 1;
	}

	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		fprintf(stderr, "open %s failed\n", argv[1]);
		return 1;
	}
	for (int i = 0; i < nsets; i++) {
		char *eq = strchr(sets[i], '=');
		if (!eq)
			continue;
		*eq = 0;
		err = set_rodata(obj, sets[i], strtoull(eq + 1, NULL, 0));
		if (err) {
			fprintf(stderr, "cannot set %s: %d\n", sets[i], err);
			return 1;
		}
		printf("set %s=%s\n", sets[i], eq + 1);
	}
	err = bpf_object__load(obj);
	if (err) {
		fprintf(stderr, "load failed: %d\n", err);
		return 1;
	}
	bpf_object__for_each_program(prog, obj) {
		struct bpf_link *l = bpf_program__attach(prog);
		if (!l) {
			fprintf(stderr, "attach %s (%s) failed: %d\n", bpf_program__name(prog),
				bpf_program__section_name(prog), -errno);
			return 1;
		}
		printf("attached %s -> %s\n", bpf_program__name(prog), bpf_program__section_name(prog));
		nattached++;
	}
	events = bpf_object__find_map_by_name(obj, "events");
	if (events)
		rb = ring_buffer__new(bpf_map__fd(events), on_event, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "no events ring buffer\n");
		return 1;
	}
	signal(SIGINT, on_sig);
	signal(SIGTERM, on_sig);
	end = time(NULL) + duration;
	while (!stop && time(NULL) < end) {
		ring_buffer__poll(rb, 10); /* woken at >= 64 KiB pending ... */
		ring_buffer__consume(rb);  /* ... plus the 10 ms timer drain */
	}
	ring_buffer__consume(rb);
	printf("records=%lu bytes=%lu\n", nrec, nbytes);
	dump_percpu_u64(obj, "stats", 0);
	dump_percpu_u64(obj, "drop_reasons", 1);
	dump_percpu_u64(obj, "softirq_zones", 0);
	ring_buffer__free(rb);
	bpf_object__close(obj);
	return 0;
}
