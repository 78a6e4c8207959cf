// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * token_use: what a stolen token is used for. Outbound TCP connections to
 * the API server or the metadata service, or by a process that read a token
 * (or descends from one), and tokens passed on a command line.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "tokenwatch/token_use.h"
#include "lineage.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

/* set by the agent before load */
const volatile __u32 self_tgid = 0;
const volatile __u32 taint_ancestors = 8; /* ancestors checked for taint at connect */

/* destinations always reported: API servers and the metadata service */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct tw_endpoint);
	__type(value, __u32);
} watched_dests SEC(".maps");

/* every process's last few connections, for joins that look back */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tw_proc_key);
	__type(value, struct tw_recent_conns);
} recent_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} use_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} use_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_connect);
} connect_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_argv_token);
} argv_scratch SEC(".maps");

static __always_inline void stats__inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&use_stats, &idx);

	if (v)
		*v += 1;
}

/*
 * the current process or one of its recorded ancestors is tainted, by a read
 * made in the cgroup the current process is in now (the taint boundary: see
 * struct tw_taint)
 */
static __always_inline struct tw_taint *taint__find(struct tw_proc_key key)
{
	struct tw_taint *t;
	struct tw_proc *p;
	__u64 now = bpf_ktime_get_boot_ns();
	__u32 i;

	for (i = 0; i < 9; i++) {
		if (i > taint_ancestors || key.tgid == 0)
			break;
		t = bpf_map_lookup_elem(&taint, &key);
		/* the cgroup is read only on a hit: most connections have none */
		if (t && t->expires_ns > now && t->cgroup_id == bpf_get_current_cgroup_id())
			return t;
		p = proc__lookup(&key);
		if (!p)
			break;
		key = p->parent;
	}
	return NULL;
}

/*
 * sock:inet_sock_set_state is where the kernel moves a TCP socket to
 * SYN_SENT, in the connecting task's context, however the connect was
 * asked for (connect(2), io_uring, sendto with MSG_FASTOPEN).
 */
SEC("tracepoint/sock/inet_sock_set_state")
int handle_inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct tw_endpoint dest = {};
	struct tw_recent_conns *rc, fresh = {};
	struct tw_connect *e;
	struct task_struct *task;
	struct tw_proc_key key;
	struct tw_taint *t;
	__u32 zero = 0, *kind, slot;
	__u64 id_tgid, size, now;
	__u8 d6[16];
	int mapped;

	if (ctx->newstate != TCP_SYN_SENT || ctx->protocol != IPPROTO_TCP)
		return 0;
	id_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(id_tgid >> 32) == self_tgid)
		return 0;

	/* the destination; a v4-mapped IPv6 address is the IPv4 one */
	dest.port = ctx->dport;
	if (ctx->family == AF_INET) {
		dest.family = AF_INET;
		bpf_probe_read_kernel(dest.addr, 4, ctx->daddr);
	} else if (ctx->family == AF_INET6) {
		/* copied out: the verifier refuses offset reads of the context */
		bpf_probe_read_kernel(d6, sizeof(d6), ctx->daddr_v6);
		mapped = d6[10] == 0xff && d6[11] == 0xff;
		for (int i = 0; i < 10; i++)
			mapped = mapped && d6[i] == 0;
		if (mapped) {
			dest.family = AF_INET;
			__builtin_memcpy(dest.addr, &d6[12], 4);
		} else {
			dest.family = AF_INET6;
			__builtin_memcpy(dest.addr, d6, 16);
		}
	} else {
		return 0;
	}

	/* remember it for joins with a token read that comes later */
	task = bpf_get_current_task_btf();
	proc__key(task, &key);
	now = bpf_ktime_get_boot_ns();
	rc = bpf_map_lookup_elem(&recent_conns, &key);
	if (!rc) {
		proc__key(BPF_CORE_READ(task, real_parent), &fresh.parent);
		bpf_map_update_elem(&recent_conns, &key, &fresh, BPF_NOEXIST);
		rc = bpf_map_lookup_elem(&recent_conns, &key);
	}
	if (rc) {
		slot = rc->next % TW_RECENT_CONNS;
		rc->conns[slot & (TW_RECENT_CONNS - 1)].ts_ns = now;
		rc->conns[slot & (TW_RECENT_CONNS - 1)].dest = dest;
		rc->next = slot + 1;
	}

	/* report watched destinations, and anything a tainted process does */
	kind = bpf_map_lookup_elem(&watched_dests, &dest);
	t = taint__find(key);
	if (!kind && !t)
		return 0;

	e = bpf_map_lookup_elem(&connect_scratch, &zero);
	if (!e)
		return 0;
	e->hdr.type = TW_EVENT_CONNECT;
	e->hdr.ts_ns = now;
	e->tgid = id_tgid >> 32;
	e->pid = (__u32)id_tgid;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->dest = dest;
	e->dest_kind = kind ? *kind : 0;
	e->tainted = t ? 1 : 0;
	e->taint_read_id = t ? t->read_id : 0;
	e->n_ancestors = lineage__fill(task, &e->actor, e->ancestors, &e->truncated,
				       &e->actor_known);
	size = TW_CONNECT_FIXED_SIZE + (__u64)e->n_ancestors * sizeof(struct tw_proc);
	if (size > sizeof(*e))
		size = sizeof(*e);
	e->hdr.size = size;
	if (bpf_ringbuf_output(&use_events, e, size, 0))
		stats__inc(TW_STAT_RING_FULL);
	return 0;
}

struct argv_scan {
	struct tw_argv_token *rec;
	__u32 found;
};

static long argv__step(__u32 i, struct argv_scan *s)
{
	struct tw_argv_token *r = s->rec;
	__u32 j = i & (TW_ARGV_SCAN_LEN - 1);

	if (j + 2 >= r->argv_len)
		return 1;
	if (r->argv[j] == 'e' && r->argv[(j + 1) & (TW_ARGV_SCAN_LEN - 1)] == 'y' &&
	    r->argv[(j + 2) & (TW_ARGV_SCAN_LEN - 1)] == 'J') {
		s->found = 1;
		return 1;
	}
	return 0;
}

/*
 * At exec the new argv is in place: a JWT on a command line
 * (curl -H "Authorization: Bearer eyJ...", kubectl --token=eyJ...) is
 * itself evidence of use. Only command lines holding "eyJ" cross the ring,
 * and the agent redacts them on arrival.
 */
SEC("raw_tracepoint/sched_process_exec")
int handle_exec_argv(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct argv_scan scan = {};
	struct tw_argv_token *r;
	struct mm_struct *mm;
	unsigned long arg_start, arg_end, len;
	__u32 zero = 0;

	r = bpf_map_lookup_elem(&argv_scratch, &zero);
	if (!r)
		return 0;
	mm = BPF_CORE_READ(task, mm);
	arg_start = BPF_CORE_READ(mm, arg_start);
	arg_end = BPF_CORE_READ(mm, arg_end);
	len = arg_end - arg_start;
	if (len > TW_ARGV_SCAN_LEN)
		len = TW_ARGV_SCAN_LEN;
	if (len < 16 || bpf_probe_read_user(r->argv, len & (TW_ARGV_SCAN_LEN * 2 - 1) &
					    (TW_ARGV_SCAN_LEN | (TW_ARGV_SCAN_LEN - 1)),
					    (void *)arg_start))
		return 0;
	r->argv_len = len;
	scan.rec = r;
	bpf_loop(TW_ARGV_SCAN_LEN, argv__step, &scan, 0);
	if (!scan.found)
		return 0;
	r->hdr.type = TW_EVENT_ARGV_TOKEN;
	r->hdr.size = sizeof(*r);
	r->hdr.ts_ns = bpf_ktime_get_boot_ns();
	proc__key(task, &r->key);
	if (bpf_ringbuf_output(&use_events, r, sizeof(*r), 0))
		stats__inc(TW_STAT_RING_FULL);
	return 0;
}
