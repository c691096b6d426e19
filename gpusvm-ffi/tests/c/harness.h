/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The C ABI test program (tests/c/, every *.c file linked into one program by ../../run-c-test):
 * what its files share. The CHECK macros and the failure count; the host facet (host.c: malloc
 * with failure injection and counters, pthread locks allocated in place); the fake platform
 * (platform.c: one VMA of 4 MiB, an array of page frames, identity DMA, a device page-table
 * array, device memory) and the bind callback that writes the page table; the scenarios, one
 * family per file (errors.c, fault.c, migration.c, attrs_prefetch_userptr.c), run by main.c.
 * Every file includes this header first.
 */
#ifndef GPUSVM_C_TEST_HARNESS_H
#define GPUSVM_C_TEST_HARNESS_H

#define _POSIX_C_SOURCE 200809L
#include "gpusvm.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The number of failed checks (main.c); the program fails if it is not 0. */
extern int failures;

#define CHECK(cond)                                                                  \
	do {                                                                         \
		if (!(cond)) {                                                       \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
				#cond);                                              \
			failures++;                                                  \
		}                                                                    \
	} while (0)
#define CHECK_EQ(a, b)                                                               \
	do {                                                                         \
		long long a_ = (long long)(a), b_ = (long long)(b);                  \
		if (a_ != b_) {                                                      \
			fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld\n", \
				__FILE__, __LINE__, #a, a_, #b, b_);                 \
			failures++;                                                  \
		}                                                                    \
	} while (0)

/* ---- host (host.c): allocator with counters and failure injection, pthread locks ---- */

struct host_state {
	pthread_mutex_t lock;
	long allocs, frees, live;
	long locks_created, locks_destroyed;
	long attempts;   /* allocation + lock-creation attempts */
	long fail_at;    /* the attempt with this number fails (-1: none) */
	long failed;
	long nosleep;    /* allocations with may_sleep false */
	long by_class[GPUSVM_LOCK_CLASSES];
};
extern struct host_state H;
extern const struct gpusvm_host_ops host_ops;

/* ---- platform (platform.c): one VMA of 4 MiB, page frames, identity DMA, a page-table array ---- */

#define PAGE 4096ull
#define BASE 0x40000000ull
#define NPAGES 1024u /* 4 MiB */
#define SZ_2M (2ull << 20)

struct fake {
	uint64_t pfn[NPAGES];
	uint64_t pte[NPAGES];        /* device page table: bus address | 1, or 0 */
	long maps, unmaps, zaps, collects;
	long notifiers_live;
	uint64_t notifier_id;
	int notifier_handle;        /* what the handle points at */
	struct gpusvm *svm;         /* for the reentrancy test, and the migrate invalidation */
	/* device memory (the migration test): page i lives in device frame dev[i] when set */
	bool on_dev[NPAGES];
	uint64_t dev[NPAGES];
	bool migrating[NPAGES];
	uint64_t next_pfn, next_dpfn;
	long dev_allocs, dev_releases, copies, copied_pages, sys_frees, finalized;
	struct gpusvm_pagemap *pm;  /* for page_free */
};

struct gpusvm_devmem_ops devmem_ops(struct fake *f);
struct gpusvm_platform_ops platform_ops(struct fake *f);
void fake_init(struct fake *f);
struct gpusvm_config config(void);

/* ---- bind callback (platform.c): writes the page table, counts entries ---- */

struct bind_seen {
	struct fake *f;
	size_t entries, calls, next_first, devmem;
	uint64_t next_va;
	int try_nonblock; /* call gpusvm_invalidate_begin_nonblock from inside (lock held) */
	int nonblock_rc;
};

int bind_cb(void *ctx, const struct gpusvm_range *range, const struct gpusvm_page_entry *e, size_t n,
	    size_t first);
long mapped_ptes(const struct fake *f);

/* ---- the scenarios, in the order main.c runs them ---- */

/* errors.c */
void test_before_init(void);
void test_bad_input(void);
void test_alloc_failure(void);
/* fault.c */
void test_fault_bind_invalidate(void);
void test_threads(void);
/* migration.c */
void test_migration(void);
/* attrs_prefetch_userptr.c */
void test_attrs_prefetch_userptr(void);

#endif
