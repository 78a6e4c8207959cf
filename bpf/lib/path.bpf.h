/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * A file's path as its process sees it, built in the kernel: d_path() is not
 * callable from tracepoints, so walk the dentries up to the task's root,
 * crossing mount points on the way.
 */
#ifndef TOKENWATCH_PATH_BPF_H
#define TOKENWATCH_PATH_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "tokenwatch/process.h"

#define TW_PATH_MAX_COMPONENTS 24
#define TW_PATH_MASK (TW_EXE_LEN - 1)

/* twice the path size, so that masked offsets plus masked lengths stay inside */
struct tw_path_scratch {
	char buf[TW_EXE_LEN * 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_path_scratch);
} path_scratch SEC(".maps");

struct tw_path_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u32 pos; /* start of the path built so far in the scratch buffer */
	__u32 complete; /* 0 once a component did not fit */
};

/* one step up: a component, or a mount crossing; 1 stops the walk */
static long path__step(__u32 index, struct tw_path_walk *w)
{
	/* locals: CO-RE relocates the kernel structs, not our walk state */
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	struct tw_path_scratch *s;
	struct dentry *parent, *mnt_root;
	struct mount *mnt_parent;
	const unsigned char *name;
	__u32 zero = 0, len, pos = w->pos;

	if (dentry == w->root_dentry && vfsmnt == w->root_mnt)
		return 1;
	parent = BPF_CORE_READ(dentry, d_parent);
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	if (dentry == mnt_root || dentry == parent) {
		/* the top of this mount: continue in the parent mount */
		mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (mnt == mnt_parent)
			return 1;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = (struct vfsmount *)((char *)mnt_parent +
						bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	s = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!s)
		return 1;
	len = BPF_CORE_READ(dentry, d_name.len);
	name = BPF_CORE_READ(dentry, d_name.name);
	if (len + 1 > pos || pos > TW_EXE_LEN - 1) {
		w->complete = 0;
		return 1;
	}
	pos -= len;
	bpf_probe_read_kernel(&s->buf[pos & TW_PATH_MASK], len & TW_PATH_MASK, name);
	pos -= 1;
	s->buf[pos & TW_PATH_MASK] = '/';
	w->pos = pos;
	w->dentry = parent;
	return 0;
}

/*
 * Writes the path of (dentry, vfsmnt) relative to `task`'s root into out
 * (TW_EXE_LEN bytes, NUL-terminated). Returns its length, or -1 when it did
 * not fit or was deeper than TW_PATH_MAX_COMPONENTS (out then holds the
 * tail that fit, still starting with '/'). bpf_loop keeps the verifier's
 * work to one pass over the step, whatever the depth.
 */
static __always_inline long path__resolve(struct task_struct *task, struct dentry *dentry,
					  struct vfsmount *vfsmnt, char *out)
{
	struct tw_path_walk w = {
		.dentry = dentry,
		.vfsmnt = vfsmnt,
		.mnt = (struct mount *)((char *)vfsmnt - bpf_core_field_offset(struct mount, mnt)),
		.root_dentry = BPF_CORE_READ(task, fs, root.dentry),
		.root_mnt = BPF_CORE_READ(task, fs, root.mnt),
		.pos = TW_EXE_LEN - 1,
		.complete = 1,
	};
	struct tw_path_scratch *s;
	__u32 zero = 0;
	long len, steps;

	s = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!s)
		return -1;
	s->buf[TW_EXE_LEN - 1] = '\0';
	steps = bpf_loop(TW_PATH_MAX_COMPONENTS, path__step, &w, 0);
	if (steps >= TW_PATH_MAX_COMPONENTS)
		w.complete = 0;
	if (w.pos >= TW_EXE_LEN - 1) {
		/*
		 * nothing above the file: the root itself, or a file on an
		 * internal mount (memfd, as runc re-executes itself from one),
		 * which d_path() also names by its dentry alone
		 */
		if (dentry != w.root_dentry) {
			len = bpf_probe_read_kernel_str(out, TW_EXE_LEN,
							BPF_CORE_READ(dentry, d_name.name));
			return len > 0 ? len - 1 : 0;
		}
		w.pos = TW_EXE_LEN - 2;
		s->buf[w.pos & TW_PATH_MASK] = '/';
	}
	len = bpf_probe_read_kernel_str(out, TW_EXE_LEN, &s->buf[w.pos & TW_PATH_MASK]);
	if (!w.complete)
		return -1;
	return len > 0 ? len - 1 : 0;
}

/* the path of the file behind f */
static __always_inline long path__of_file(struct task_struct *task, struct file *f, char *out)
{
	return path__resolve(task, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt),
			     out);
}

#endif /* TOKENWATCH_PATH_BPF_H */
