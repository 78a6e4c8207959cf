/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Evidence that a token is being used: outbound TCP connections (to watched
 * destinations, or by tainted processes) and tokens passed in argv.
 * Emitted by token_use.bpf.c.
 */
#ifndef TOKENWATCH_TOKEN_USE_H
#define TOKENWATCH_TOKEN_USE_H

#include "tokenwatch/common.h"
#include "tokenwatch/process.h"

#define TW_EVENT_CONNECT 2
#define TW_EVENT_ARGV_TOKEN 3

#define TW_RECENT_CONNS 4
#define TW_ARGV_SCAN_LEN 4096

/* what a watched destination is */
enum tw_dest_kind {
	TW_DEST_APISERVER = 1,
	TW_DEST_METADATA = 2,
};

/* an IPv4 or IPv6 TCP endpoint; IPv4 (also v4-mapped IPv6) uses addr[0..3] */
struct tw_endpoint {
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 port; /* host byte order */
	__u32 _pad0;
	__u8 addr[16]; /* network byte order */
};
TW_STATIC_ASSERT(sizeof(struct tw_endpoint) == 24, "tw_endpoint size");

/*
 * value of the taint map, keyed by struct tw_proc_key; written by the agent.
 * A taint holds only inside the cgroup of the process that read the token:
 * a tainted process's child that a runtime moved into a container (runc exec,
 * a shim), or a container process's parent on the host, carries the entry
 * (it is inherited at fork) but a connection made there is not joined.
 */
struct tw_taint {
	__u64 read_id; /* the agent's id of the token read that tainted it */
	__u64 expires_ns; /* boot clock; taint ends here */
	__u64 cgroup_id; /* cgroup v2 id of the reader at the read; 0 matches none */
};
TW_STATIC_ASSERT(sizeof(struct tw_taint) == 24, "tw_taint size");

/* recent connections of one process, for joins that look back in time */
struct tw_recent_conn {
	__u64 ts_ns; /* boot clock */
	struct tw_endpoint dest;
};

struct tw_recent_conns {
	struct tw_proc_key parent; /* the connector's parent, to find siblings */
	__u32 next; /* slot the next connection goes to (ring of TW_RECENT_CONNS) */
	__u32 _pad0;
	struct tw_recent_conn conns[TW_RECENT_CONNS];
};
TW_STATIC_ASSERT(sizeof(struct tw_recent_conns) == 24 + TW_RECENT_CONNS * 32,
		 "tw_recent_conns size");

/* variable size: ancestors holds n_ancestors entries */
struct tw_connect {
	struct tw_event_header hdr; /* type TW_EVENT_CONNECT */
	__u32 tgid;
	__u32 pid;
	__u64 cgroup_id;
	struct tw_endpoint dest;
	__u32 dest_kind; /* enum tw_dest_kind, 0 when not watched */
	__u32 tainted; /* 1: the connector or an ancestor was tainted */
	__u64 taint_read_id; /* tw_taint.read_id when tainted */
	__u32 n_ancestors;
	__u32 truncated;
	__u32 actor_known;
	__u32 _pad0;
	struct tw_proc actor;
	struct tw_proc ancestors[TW_MAX_ANCESTORS];
};
TW_STATIC_ASSERT(sizeof(struct tw_connect) == 88 + 17 * sizeof(struct tw_proc), "tw_connect size");
#define TW_CONNECT_FIXED_SIZE (sizeof(struct tw_connect) - TW_MAX_ANCESTORS * sizeof(struct tw_proc))

/* a process started with something JWT-shaped in its argv */
struct tw_argv_token {
	struct tw_event_header hdr; /* type TW_EVENT_ARGV_TOKEN */
	struct tw_proc_key key; /* the process */
	__u32 argv_len; /* bytes used in argv */
	__u32 _pad0;
	char argv[TW_ARGV_SCAN_LEN]; /* NUL-separated; the agent redacts it at once */
};
TW_STATIC_ASSERT(sizeof(struct tw_argv_token) == 40 + TW_ARGV_SCAN_LEN, "tw_argv_token size");

#endif /* TOKENWATCH_TOKEN_USE_H */
