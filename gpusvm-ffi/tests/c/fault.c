/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The C ABI driven from C: the host facet (malloc with failure injection, pthread locks
 * allocated in place) and a fake platform (an array of page frames, identity DMA, a device
 * page-table array) implemented here; checks a fault, bind, invalidation, the GC, allocation
 * failure and bad input. Built and run by ../../run-c-test.
 */
#define _POSIX_C_SOURCE 200809L
#include "gpusvm.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int failures;
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

/* ---- host: allocator with counters and failure injection, pthread locks ---- */

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
static struct host_state H = { .lock = PTHREAD_MUTEX_INITIALIZER, .fail_at = -1 };

static int should_fail(void)
{
	int fail;

	pthread_mutex_lock(&H.lock);
	fail = H.attempts == H.fail_at;
	H.attempts++;
	if (fail)
		H.failed++;
	pthread_mutex_unlock(&H.lock);
	return fail;
}

static void *h_alloc(void *ctx, size_t size, size_t align, bool may_sleep)
{
	void *p = NULL;

	(void)ctx;
	if (should_fail())
		return NULL;
	if (align < sizeof(void *))
		align = sizeof(void *);
	if (posix_memalign(&p, align, size))
		return NULL;
	pthread_mutex_lock(&H.lock);
	H.allocs++;
	H.live++;
	if (!may_sleep)
		H.nosleep++;
	pthread_mutex_unlock(&H.lock);
	return p;
}

static void h_free(void *ctx, void *p, size_t size, size_t align)
{
	(void)ctx;
	(void)size;
	(void)align;
	free(p);
	pthread_mutex_lock(&H.lock);
	H.frees++;
	H.live--;
	pthread_mutex_unlock(&H.lock);
}

static void *h_mutex_create(void *ctx, const struct gpusvm_lock_class *cls)
{
	pthread_mutex_t *m;

	(void)ctx;
	if (should_fail())
		return NULL;
	m = malloc(sizeof(*m));
	if (!m)
		return NULL;
	pthread_mutex_init(m, NULL); /* initialised in place; never moves */
	pthread_mutex_lock(&H.lock);
	H.locks_created++;
	if (cls->index < GPUSVM_LOCK_CLASSES)
		H.by_class[cls->index]++;
	pthread_mutex_unlock(&H.lock);
	return m;
}

static void h_mutex_destroy(void *ctx, void *l)
{
	(void)ctx;
	pthread_mutex_destroy(l);
	free(l);
	pthread_mutex_lock(&H.lock);
	H.locks_destroyed++;
	pthread_mutex_unlock(&H.lock);
}

static void h_mutex_lock(void *ctx, void *l) { (void)ctx; pthread_mutex_lock(l); }
static bool h_mutex_try_lock(void *ctx, void *l) { (void)ctx; return pthread_mutex_trylock(l) == 0; }
static void h_mutex_unlock(void *ctx, void *l) { (void)ctx; pthread_mutex_unlock(l); }

static void *h_rwlock_create(void *ctx, const struct gpusvm_lock_class *cls)
{
	pthread_rwlock_t *l;

	(void)ctx;
	if (should_fail())
		return NULL;
	l = malloc(sizeof(*l));
	if (!l)
		return NULL;
	pthread_rwlock_init(l, NULL);
	pthread_mutex_lock(&H.lock);
	H.locks_created++;
	if (cls->index < GPUSVM_LOCK_CLASSES)
		H.by_class[cls->index]++;
	pthread_mutex_unlock(&H.lock);
	return l;
}

static void h_rwlock_destroy(void *ctx, void *l)
{
	(void)ctx;
	pthread_rwlock_destroy(l);
	free(l);
	pthread_mutex_lock(&H.lock);
	H.locks_destroyed++;
	pthread_mutex_unlock(&H.lock);
}

static void h_read(void *ctx, void *l) { (void)ctx; pthread_rwlock_rdlock(l); }
static bool h_try_read(void *ctx, void *l) { (void)ctx; return pthread_rwlock_tryrdlock(l) == 0; }
static void h_unlock(void *ctx, void *l) { (void)ctx; pthread_rwlock_unlock(l); }
static void h_write(void *ctx, void *l) { (void)ctx; pthread_rwlock_wrlock(l); }
static bool h_try_write(void *ctx, void *l) { (void)ctx; return pthread_rwlock_trywrlock(l) == 0; }

static const struct gpusvm_host_ops host_ops = {
	.ctx = NULL,
	.alloc = h_alloc,
	.free = h_free,
	.mutex_create = h_mutex_create,
	.mutex_destroy = h_mutex_destroy,
	.mutex_lock = h_mutex_lock,
	.mutex_try_lock = h_mutex_try_lock,
	.mutex_unlock = h_mutex_unlock,
	.rwlock_create = h_rwlock_create,
	.rwlock_destroy = h_rwlock_destroy,
	.rwlock_read = h_read,
	.rwlock_try_read = h_try_read,
	.rwlock_read_unlock = h_unlock,
	.rwlock_write = h_write,
	.rwlock_try_write = h_try_write,
	.rwlock_write_unlock = h_unlock,
};

/* ---- platform: one VMA of 4 MiB, frames in an array, identity DMA, a page-table array ---- */

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

static bool p_find_vma(void *ctx, uint64_t addr, struct gpusvm_vma *out)
{
	(void)ctx;
	if (addr < BASE || addr >= BASE + NPAGES * PAGE)
		return false;
	out->start = BASE;
	out->end = BASE + NPAGES * PAGE;
	out->flags = GPUSVM_VMA_READ | GPUSVM_VMA_WRITE;
	return true;
}

static int p_collect(void *ctx, const struct gpusvm_collect_request *req, struct gpusvm_cpu_page *out,
		     size_t n)
{
	struct fake *f = ctx;
	size_t i;

	__atomic_add_fetch(&f->collects, 1, __ATOMIC_RELAXED);
	if (req->start < BASE || req->end > BASE + NPAGES * PAGE || (req->end - req->start) / PAGE != n)
		return -EFAULT;
	for (i = 0; i < n; i++) {
		size_t page = (size_t)((req->start - BASE) / PAGE) + i;

		memset(&out[i], 0, sizeof(out[i]));
		if (f->on_dev[page]) {
			/* This test's device pages all belong to pagemap 1 of owner 1. */
			if (!req->has_owner || req->owner != 1)
				return -EBUSY; /* would have to migrate them to RAM first */
			out[i].kind = GPUSVM_PAGE_DEVICE;
			out[i].pagemap = 1;
			out[i].owner = 1;
			out[i].pfn = f->dev[page];
			continue;
		}
		out[i].kind = GPUSVM_PAGE_SYSTEM;
		out[i].order = 0;
		out[i].writable = true;
		out[i].pfn = f->pfn[page];
	}
	return 0;
}

static int p_register(void *ctx, uint64_t id, uint64_t start, uint64_t end, void **handle)
{
	struct fake *f = ctx;

	(void)start;
	(void)end;
	f->notifiers_live++;
	f->notifier_id = id;
	*handle = &f->notifier_handle;
	return 0;
}

static void p_unregister(void *ctx, void *handle)
{
	struct fake *f = ctx;

	CHECK(handle == &f->notifier_handle);
	f->notifiers_live--;
}

static int p_map(void *ctx, uint64_t pfn, uint8_t order, uint32_t dir, uint64_t *addr)
{
	struct fake *f = ctx;

	(void)order;
	(void)dir;
	__atomic_add_fetch(&f->maps, 1, __ATOMIC_RELAXED); /* faults and invalidations race */
	*addr = pfn * PAGE; /* identity IOMMU */
	return 0;
}

static void p_unmap(void *ctx, uint64_t addr, uint8_t order, uint32_t dir)
{
	struct fake *f = ctx;

	(void)addr;
	(void)order;
	(void)dir;
	__atomic_add_fetch(&f->unmaps, 1, __ATOMIC_RELAXED);
}

static void p_zap(void *ctx, uint64_t start, uint64_t end)
{
	struct fake *f = ctx;
	uint64_t a;

	__atomic_add_fetch(&f->zaps, 1, __ATOMIC_RELAXED);
	for (a = start; a < end; a += PAGE)
		if (a >= BASE && a < BASE + NPAGES * PAGE)
			f->pte[(a - BASE) / PAGE] = 0;
}

static uint64_t p_now(void *ctx)
{
	struct timespec ts;

	(void)ctx;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int p_isolate(void *ctx, const struct gpusvm_migrate_request *req, struct gpusvm_migrate_src *src,
		     size_t n)
{
	struct fake *f = ctx;
	size_t i;

	if (req->start < BASE || req->end > BASE + NPAGES * PAGE || (req->end - req->start) / PAGE != n)
		return -EINVAL;
	/* As migrate_vma_setup: invalidate the interval (a migrate event) before unmapping. */
	CHECK_EQ(gpusvm_invalidate_begin(f->svm, f->notifier_id, req->start, req->end, GPUSVM_EVENT_MIGRATE,
					 req->has_owner, req->owner),
		 0);
	for (i = 0; i < n; i++) {
		size_t page = (size_t)((req->start - BASE) / PAGE) + i;

		memset(&src[i], 0, sizeof(src[i]));
		if (f->migrating[page]) {
			src[i].kind = GPUSVM_SRC_BUSY;
		} else if (!f->on_dev[page] && (req->select & GPUSVM_MIGRATE_SYSTEM)) {
			src[i].kind = GPUSVM_SRC_SYSTEM;
			src[i].pfn = f->pfn[page];
			f->migrating[page] = true;
		} else if (f->on_dev[page] && (req->select & GPUSVM_MIGRATE_DEVICE_PRIVATE) &&
			   (req->has_pagemap ? req->pagemap == 1 : (req->has_owner && req->owner == 1))) {
			src[i].kind = GPUSVM_SRC_DEVICE;
			src[i].pagemap = 1;
			src[i].pfn = f->dev[page];
			f->migrating[page] = true;
		}
	}
	CHECK_EQ(gpusvm_invalidate_end(f->svm, f->notifier_id, req->start, req->end), 0);
	return 0;
}

static void p_finalize(void *ctx, const struct gpusvm_migrate_request *req, const struct gpusvm_migrate_src *src,
		       const struct gpusvm_migrate_dst *dst, size_t n, size_t offset, size_t total)
{
	struct fake *f = ctx;
	size_t i;

	CHECK(offset + n <= total);
	CHECK_EQ(total, (req->end - req->start) / PAGE);
	for (i = 0; i < n; i++) {
		size_t page = (size_t)((req->start - BASE) / PAGE) + offset + i;

		if (src[i].kind != GPUSVM_SRC_SYSTEM && src[i].kind != GPUSVM_SRC_DEVICE &&
		    src[i].kind != GPUSVM_SRC_ABSENT)
			continue;
		f->migrating[page] = false;
		if (dst[i].kind == GPUSVM_DST_KEEP)
			continue; /* restored */
		if (src[i].kind == GPUSVM_SRC_SYSTEM)
			f->sys_frees++;
		else if (src[i].kind == GPUSVM_SRC_DEVICE)
			CHECK_EQ(gpusvm_pagemap_page_free(f->pm, src[i].pfn), 0); /* the source page is freed */
		if (dst[i].kind == GPUSVM_DST_DEVICE) {
			CHECK_EQ(dst[i].pagemap, 1);
			CHECK_EQ(dst[i].owner, 1);
			f->on_dev[page] = true;
			f->dev[page] = dst[i].pfn;
		} else if (dst[i].kind == GPUSVM_DST_SYSTEM) {
			f->on_dev[page] = false;
			f->pfn[page] = dst[i].pfn;
		}
	}
	if (offset + n == total)
		f->finalized++;
}

static int p_alloc_sys(void *ctx, uint64_t *out, size_t n)
{
	struct fake *f = ctx;
	size_t i;

	for (i = 0; i < n; i++)
		out[i] = f->next_pfn++;
	return 0;
}

static void p_free_sys(void *ctx, const uint64_t *pfns, size_t n)
{
	struct fake *f = ctx;

	(void)pfns;
	f->sys_frees += (long)n;
}

static int d_alloc(void *ctx, uint64_t *out, size_t n)
{
	struct fake *f = ctx;
	size_t i;

	f->dev_allocs++;
	for (i = 0; i < n; i++)
		out[i] = f->next_dpfn++;
	return 0;
}

static void d_release(void *ctx, const uint64_t *dpfns, size_t n)
{
	struct fake *f = ctx;

	(void)dpfns;
	(void)n;
	f->dev_releases++;
}

static int d_copy(void *ctx, const struct gpusvm_copy_run *runs, size_t n, size_t *completed)
{
	struct fake *f = ctx;
	size_t i;

	for (i = 0; i < n; i++) {
		CHECK(runs[i].kind <= GPUSVM_COPY_ZERO_DEVICE);
		f->copied_pages += (long)runs[i].npages;
	}
	f->copies++;
	*completed = n;
	return 0;
}

static struct gpusvm_devmem_ops devmem_ops(struct fake *f)
{
	struct gpusvm_devmem_ops o;

	memset(&o, 0, sizeof(o));
	o.ctx = f;
	o.alloc = d_alloc;
	o.release = d_release;
	o.copy = d_copy;
	o.now_ns = p_now;
	o.dma.map_page = p_map;
	o.dma.unmap_page = p_unmap;
	return o;
}

static struct gpusvm_platform_ops platform_ops(struct fake *f)
{
	struct gpusvm_platform_ops o;

	memset(&o, 0, sizeof(o));
	o.ctx = f;
	o.find_vma = p_find_vma;
	o.collect_pages = p_collect;
	o.register_notifier = p_register;
	o.unregister_notifier = p_unregister;
	o.dma.map_page = p_map;
	o.dma.unmap_page = p_unmap;
	o.zap = p_zap;
	o.now_ns = p_now;
	o.migrate_isolate = p_isolate;
	o.migrate_finalize = p_finalize;
	o.alloc_system_pages = p_alloc_sys;
	o.free_system_pages = p_free_sys;
	return o;
}

static void fake_init(struct fake *f)
{
	unsigned i;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < NPAGES; i++)
		f->pfn[i] = 0x80000 + i * 3; /* scattered frames */
	f->next_pfn = 0x200000;
	f->next_dpfn = 0x900000;
}

static struct gpusvm_config config(void)
{
	struct gpusvm_config c;

	memset(&c, 0, sizeof(c));
	c.mm_start = 0;
	c.mm_range = 1ull << 47;
	return c;
}

/* ---- bind callback: writes the page table, counts entries ---- */

struct bind_seen {
	struct fake *f;
	size_t entries, calls, next_first, devmem;
	uint64_t next_va;
	int try_nonblock; /* call gpusvm_invalidate_begin_nonblock from inside (lock held) */
	int nonblock_rc;
};

static int bind_cb(void *ctx, const struct gpusvm_range *range, const struct gpusvm_page_entry *e, size_t n,
		   size_t first)
{
	struct bind_seen *s = ctx;
	size_t i;

	(void)range;
	s->calls++;
	CHECK_EQ(first, s->next_first);
	for (i = 0; i < n; i++) {
		CHECK(s->next_va == 0 || e[i].va == s->next_va);
		CHECK(e[i].va >= BASE && e[i].va < BASE + NPAGES * PAGE);
		if (s->f->on_dev[(e[i].va - BASE) / PAGE]) {
			CHECK_EQ(e[i].protocol, 1); /* the device's own memory */
			CHECK_EQ(e[i].addr, s->f->dev[(e[i].va - BASE) / PAGE] * PAGE);
			s->devmem++;
		} else {
			CHECK_EQ(e[i].protocol, 0);
			CHECK_EQ(e[i].addr, s->f->pfn[(e[i].va - BASE) / PAGE] * PAGE);
			CHECK(e[i].writable);
		}
		CHECK_EQ(e[i].size, PAGE);
		s->f->pte[(e[i].va - BASE) / PAGE] = e[i].addr | 1;
		s->next_va = e[i].va + e[i].size;
	}
	s->entries += n;
	s->next_first = first + n;
	if (s->try_nonblock) {
		/* The notifier lock is held shared right now: a non-blockable invalidation must
		 * refuse with -EAGAIN and change nothing. */
		s->nonblock_rc = gpusvm_invalidate_begin_nonblock(s->f->svm, s->f->notifier_id, BASE,
								  BASE + PAGE, GPUSVM_EVENT_CLEAR, false, 0);
		s->try_nonblock = 0;
	}
	return 0;
}

static long mapped_ptes(const struct fake *f)
{
	long n = 0;
	unsigned i;

	for (i = 0; i < NPAGES; i++)
		n += f->pte[i] != 0;
	return n;
}

/* ---- the scenarios ---- */

static void test_before_init(void)
{
	struct fake f;
	struct gpusvm_platform_ops o;
	struct gpusvm_config c = config();
	struct gpusvm *svm = (struct gpusvm *)0x1;

	fake_init(&f);
	o = platform_ops(&f);
	CHECK(!gpusvm_host_ready());
	/* No host yet: every allocation fails, nothing panics. */
	CHECK_EQ(gpusvm_create(&o, &c, &svm), -ENOMEM);
	CHECK(svm == (struct gpusvm *)0x1);
}

static void test_bad_input(void)
{
	struct fake f;
	struct gpusvm_platform_ops o;
	struct gpusvm_config c = config();
	struct gpusvm *svm = NULL;
	struct gpusvm_range *r = NULL;
	struct gpusvm_stats st;
	uint64_t chunks[9] = { 0 };

	fake_init(&f);
	o = platform_ops(&f);
	CHECK_EQ(gpusvm_host_init(NULL), -EINVAL);
	CHECK_EQ(gpusvm_create(NULL, &c, &svm), -EINVAL);
	CHECK_EQ(gpusvm_create(&o, NULL, &svm), -EINVAL);
	CHECK_EQ(gpusvm_create(&o, &c, NULL), -EINVAL);
	c.mm_start = 123; /* misaligned */
	CHECK_EQ(gpusvm_create(&o, &c, &svm), -EINVAL);
	c = config();
	c.chunk_sizes = chunks;
	c.n_chunk_sizes = 9; /* more than 8 */
	CHECK_EQ(gpusvm_create(&o, &c, &svm), -EINVAL);
	c = config();
	o.zap = NULL; /* a required function missing */
	CHECK_EQ(gpusvm_create(&o, &c, &svm), -EINVAL);
	CHECK(svm == NULL);
	o = platform_ops(&f);

	CHECK_EQ(gpusvm_create(&o, &c, &svm), 0);
	CHECK_EQ(gpusvm_handle_fault(NULL, BASE, GPUSVM_ACCESS_READ, 0, UINT64_MAX, &r), -EINVAL);
	CHECK_EQ(gpusvm_handle_fault(svm, BASE, 7 /* no such access */, 0, UINT64_MAX, &r), -EINVAL);
	CHECK_EQ(gpusvm_handle_fault(svm, BASE, GPUSVM_ACCESS_READ, 5, 5 /* empty window */, &r), -EINVAL);
	CHECK_EQ(gpusvm_handle_fault(svm, BASE, GPUSVM_ACCESS_READ, 0, UINT64_MAX, NULL), -EINVAL);
	CHECK_EQ(gpusvm_handle_fault(svm, (uint64_t)1 << 48, GPUSVM_ACCESS_READ, 0, UINT64_MAX, &r),
		 -EINVAL); /* outside the mirrored interval */
	CHECK_EQ(gpusvm_handle_fault(svm, 0x1000, GPUSVM_ACCESS_READ, 0, UINT64_MAX, &r), -EFAULT); /* no VMA */
	CHECK(r == NULL);
	CHECK_EQ(gpusvm_invalidate_begin(svm, 0, BASE, BASE + PAGE, 99 /* no such event */, false, 0), -EINVAL);
	CHECK_EQ(gpusvm_bind(svm, NULL, bind_cb, NULL), -EINVAL);
	CHECK_EQ(gpusvm_get_pages(svm, NULL, NULL), -EINVAL);
	CHECK_EQ(gpusvm_range_put(NULL), -EINVAL);
	CHECK_EQ(gpusvm_stats(svm, NULL), -EINVAL);
	CHECK_EQ(gpusvm_stats((struct gpusvm *)((char *)svm + 1), &st), -EINVAL); /* misaligned */
	CHECK_EQ(gpusvm_stats(svm, &st), 0);
	CHECK_EQ(st.faults, 1); /* only the fault without a VMA counted: bad input is refused first */
	CHECK_EQ(f.maps, 0);
	CHECK_EQ(gpusvm_destroy(svm), 0);
	CHECK_EQ(gpusvm_destroy(NULL), -EINVAL);
}

static void test_fault_bind_invalidate(void)
{
	struct fake f;
	struct gpusvm_platform_ops o;
	struct gpusvm_config c = config();
	struct gpusvm *svm = NULL;
	struct gpusvm_range *r = NULL, *r2 = NULL;
	struct bind_seen seen;
	struct gpusvm_stats st;
	uint64_t start = 0, end = 0;
	size_t removed = 99;
	bool valid = false;

	fake_init(&f);
	o = platform_ops(&f);
	CHECK_EQ(gpusvm_create(&o, &c, &svm), 0);
	f.svm = svm;

	/* A write fault inside the first 2 MiB: one 2 MiB range, 512 base pages mapped. */
	memset(&seen, 0, sizeof(seen));
	seen.f = &f;
	CHECK_EQ(gpusvm_handle_fault_and_bind(svm, BASE + 0x5000, GPUSVM_ACCESS_WRITE, 0, UINT64_MAX, bind_cb, &seen,
					      &r),
		 0);
	CHECK(r != NULL);
	CHECK_EQ(gpusvm_range_bounds(r, &start, &end), 0);
	CHECK_EQ(start, BASE);
	CHECK_EQ(end, BASE + SZ_2M);
	CHECK_EQ(seen.entries, 512);
	CHECK_EQ(seen.calls, 512 / 64);
	CHECK_EQ(f.maps, 512);
	CHECK_EQ(mapped_ptes(&f), 512);
	CHECK_EQ(f.notifiers_live, 1);
	CHECK_EQ(gpusvm_pages_valid(svm, r, &valid), 0);
	CHECK(valid);

	/* bind again, and a non-blockable invalidation while the notifier lock is held. */
	memset(&seen, 0, sizeof(seen));
	seen.f = &f;
	seen.try_nonblock = 1;
	CHECK_EQ(gpusvm_bind(svm, r, bind_cb, &seen), 0);
	CHECK_EQ(seen.entries, 512);
	CHECK_EQ(seen.nonblock_rc, -EAGAIN);
	CHECK_EQ(f.zaps, 0);
	CHECK_EQ(f.unmaps, 0);

	/* The same range is found again. */
	CHECK_EQ(gpusvm_find(svm, BASE + SZ_2M - 1, &r2), 0);
	CHECK(r2 == r);
	CHECK_EQ(gpusvm_range_put(r2), 0);
	CHECK_EQ(gpusvm_find(svm, BASE + SZ_2M, &r2), 0);
	CHECK(r2 == NULL);

	/* An invalidation of one page: the device mappings are zapped, the range's DMA unmapped. */
	CHECK_EQ(gpusvm_invalidate_begin(svm, f.notifier_id, BASE, BASE + PAGE, GPUSVM_EVENT_CLEAR, false, 0), 0);
	CHECK_EQ(gpusvm_invalidate_end(svm, f.notifier_id, BASE, BASE + PAGE), 0);
	CHECK(f.zaps >= 1);
	CHECK_EQ(f.unmaps, 512);
	CHECK_EQ(mapped_ptes(&f), 0); /* the zap covers every range the invalidation hits */
	CHECK_EQ(gpusvm_pages_valid(svm, r, &valid), 0);
	CHECK(!valid);
	CHECK_EQ(gpusvm_bind(svm, r, bind_cb, &seen), -EAGAIN);

	/* The non-blockable form with the lock free succeeds. */
	CHECK_EQ(gpusvm_invalidate_begin_nonblock(svm, f.notifier_id, BASE, BASE + PAGE, GPUSVM_EVENT_CLEAR, false, 0),
		 0);
	CHECK_EQ(gpusvm_invalidate_end(svm, f.notifier_id, BASE, BASE + PAGE), 0);

	/* Fault again: mapped again. */
	memset(&seen, 0, sizeof(seen));
	seen.f = &f;
	CHECK_EQ(gpusvm_get_pages(svm, r, NULL), 0);
	CHECK_EQ(gpusvm_bind(svm, r, bind_cb, &seen), 0);
	CHECK_EQ(seen.entries, 512);
	CHECK_EQ(f.maps, 1024);

	/* munmap: the range is queued for the GC, which removes it (and its notifier). */
	CHECK_EQ(gpusvm_invalidate_begin(svm, f.notifier_id, BASE, BASE + SZ_2M, GPUSVM_EVENT_UNMAP, false, 0), 0);
	CHECK_EQ(gpusvm_invalidate_end(svm, f.notifier_id, BASE, BASE + SZ_2M), 0);
	CHECK_EQ(f.unmaps, 1024);
	CHECK_EQ(gpusvm_gc_run(svm, &removed), 0);
	CHECK_EQ(removed, 1);
	CHECK_EQ(f.notifiers_live, 0);
	CHECK_EQ(gpusvm_get_pages(svm, r, NULL), -EAGAIN); /* removed: fault again */

	CHECK_EQ(gpusvm_stats(svm, &st), 0);
	CHECK_EQ(st.faults, 1);
	CHECK_EQ(st.faults_write, 1);
	CHECK_EQ(st.ranges_created, 1);
	CHECK_EQ(st.ranges_removed, 1);
	CHECK(st.invalidations >= 3);

	CHECK_EQ(gpusvm_range_put(r), 0);
	CHECK_EQ(gpusvm_destroy(svm), 0);
	CHECK_EQ(f.maps, f.unmaps);
}

struct alloc_walk {
	long n;
	uint64_t start, end, live;
};

static int alloc_cb(void *ctx, uint64_t va_start, uint64_t va_end, uint64_t live, uint64_t first_dpfn)
{
	struct alloc_walk *w = ctx;

	(void)first_dpfn;
	w->n++;
	w->start = va_start;
	w->end = va_end;
	w->live = live;
	return 0;
}

static void test_migration(void)
{
	struct alloc_walk walk;
	struct fake f;
	struct gpusvm_platform_ops o;
	struct gpusvm_devmem_ops d;
	struct gpusvm_config c = config();
	struct gpusvm_pages_ctx pctx;
	struct gpusvm *svm = NULL;
	struct gpusvm_range *r = NULL;
	struct gpusvm_migrate_report rep;
	struct bind_seen seen;
	uint64_t live = 9, released = 9;
	size_t page0;

	fake_init(&f);
	o = platform_ops(&f);
	d = devmem_ops(&f);
	c.has_owner = true;
	c.owner = 1;
	CHECK_EQ(gpusvm_create(&o, &c, &svm), 0);
	f.svm = svm;
	CHECK_EQ(gpusvm_migrate_to_devmem(svm, NULL, NULL), -EINVAL);
	d.copy = NULL; /* required */
	CHECK_EQ(gpusvm_pagemap_create(&d, 1, 1, &f.pm), -EINVAL);
	d = devmem_ops(&f);
	CHECK_EQ(gpusvm_pagemap_create(&d, 1, 1, &f.pm), 0);
	CHECK_EQ(gpusvm_set_pagemap(svm, f.pm), 0);

	/* A read fault in system memory, then the range moves to device memory. */
	memset(&seen, 0, sizeof(seen));
	seen.f = &f;
	CHECK_EQ(gpusvm_handle_fault_and_bind(svm, BASE, GPUSVM_ACCESS_READ, 0, UINT64_MAX, bind_cb, &seen, &r), 0);
	CHECK_EQ(seen.entries, 512);
	CHECK_EQ(seen.devmem, 0);
	memset(&rep, 0, sizeof(rep));
	CHECK_EQ(gpusvm_migrate_to_devmem(svm, r, &rep), 0);
	CHECK_EQ(rep.pages, 512);
	CHECK(rep.copy_runs >= 1);
	CHECK_EQ(f.copied_pages, 512);
	CHECK_EQ(f.dev_allocs, 1);
	CHECK_EQ(f.sys_frees, 512);
	CHECK(f.finalized >= 1);
	CHECK(f.on_dev[0] && f.on_dev[511] && !f.on_dev[512]);

	/* Collected again: device-local entries. */
	memset(&pctx, 0, sizeof(pctx));
	pctx.has_owner = true;
	pctx.owner = 1;
	CHECK_EQ(gpusvm_get_pages(svm, r, &pctx), 0);
	memset(&seen, 0, sizeof(seen));
	seen.f = &f;
	CHECK_EQ(gpusvm_bind(svm, r, bind_cb, &seen), 0);
	CHECK_EQ(seen.devmem, seen.entries);
	CHECK(seen.entries >= 1);
	CHECK_EQ(gpusvm_pagemap_counts(f.pm, &live, &released), 0);
	CHECK_EQ(live, 1);
	CHECK_EQ(released, 0);

	/* Eviction: back to system memory; the device allocation is released once. */
	memset(&rep, 0, sizeof(rep));
	CHECK_EQ(gpusvm_evict(svm, r, &rep), 0);
	CHECK_EQ(rep.pages, 512);
	CHECK(!f.on_dev[0] && !f.on_dev[511]);
	CHECK_EQ(f.dev_releases, 1);
	CHECK_EQ(gpusvm_pagemap_counts(f.pm, &live, &released), 0);
	CHECK_EQ(live, 0);
	CHECK_EQ(released, 1);

	/* Into device memory again: one live allocation, for the whole range. */
	CHECK_EQ(gpusvm_migrate_to_devmem(svm, r, NULL), 0);
	memset(&walk, 0, sizeof(walk));
	CHECK_EQ(gpusvm_pagemap_allocations(f.pm, alloc_cb, &walk), 0);
	CHECK_EQ(walk.n, 1);
	CHECK_EQ(walk.start, BASE);
	CHECK_EQ(walk.end, BASE + SZ_2M);
	CHECK_EQ(walk.live, 512);
	CHECK_EQ(gpusvm_pagemap_allocations(f.pm, NULL, NULL), -EINVAL);
	CHECK_EQ(gpusvm_evict(svm, r, NULL), 0);

	/* Into device memory again, then a CPU fault on one of its pages (migrate_to_ram). */
	CHECK_EQ(gpusvm_migrate_to_devmem(svm, r, NULL), 0);
	CHECK(f.on_dev[7]);
	page0 = 7;
	memset(&rep, 0, sizeof(rep));
	CHECK_EQ(gpusvm_pagemap_migrate_to_ram(f.pm, svm, BASE + page0 * PAGE, f.dev[page0], &rep), 0);
	CHECK(rep.pages >= 1);
	CHECK(!f.on_dev[page0]);
	CHECK_EQ(gpusvm_pagemap_migrate_to_ram(NULL, svm, BASE, 0, NULL), -EINVAL);
	/* The same CPU fault served in an address space given by a platform table (no SVM). */
	CHECK_EQ(gpusvm_migrate_to_devmem(svm, r, NULL), 0);
	CHECK(f.on_dev[9]);
	memset(&rep, 0, sizeof(rep));
	CHECK_EQ(gpusvm_pagemap_migrate_to_ram_in(f.pm, &o, BASE + 9 * PAGE, f.dev[9], &rep), 0);
	CHECK(rep.pages >= 1);
	CHECK(!f.on_dev[9]);
	CHECK_EQ(gpusvm_pagemap_migrate_to_ram_in(f.pm, NULL, BASE, 0, NULL), -EINVAL);
	o.find_vma = NULL; /* required */
	CHECK_EQ(gpusvm_pagemap_migrate_to_ram_in(f.pm, &o, BASE, 0, NULL), -EINVAL);
	o = platform_ops(&f);
	CHECK_EQ(gpusvm_pagemap_page_free(NULL, 0), -EINVAL);

	/* Teardown: destroy the SVM, then the last pagemap reference. */
	CHECK_EQ(gpusvm_range_put(r), 0);
	CHECK_EQ(gpusvm_destroy(svm), 0);
	CHECK_EQ(gpusvm_pagemap_put(f.pm), 0);
	CHECK_EQ(f.maps, f.unmaps);
	printf("migration: %ld device allocations, %ld released, %ld copy calls, %ld pages copied\n", f.dev_allocs,
	       f.dev_releases, f.copies, f.copied_pages);
}

struct up_bind {
	struct bind_seen seen;
	struct gpusvm_userptr *up;
	struct gpusvm *svm;
	int nonblock_rc;
};

static int up_bind_cb(void *ctx, const struct gpusvm_range *range, const struct gpusvm_page_entry *e, size_t n,
		      size_t first)
{
	struct up_bind *b = ctx;

	CHECK(range == NULL);
	if (first == 0) /* the userptr's lock is held shared: a non-blockable invalidation refuses */
		b->nonblock_rc = gpusvm_userptr_invalidate_begin(b->up, b->svm, 0, UINT64_MAX, true);
	return bind_cb(&b->seen, range, e, n, first);
}

static void test_attrs_prefetch_userptr(void)
{
	struct fake f;
	struct gpusvm_platform_ops o = platform_ops(&f);
	struct gpusvm_devmem_ops d;
	struct gpusvm_config c = config();
	struct gpusvm *svm = NULL;
	struct gpusvm_attr a[2];
	struct gpusvm_attrs at;
	struct gpusvm_userptr *up = NULL;
	struct up_bind b;
	long unmaps;
	bool valid = true;

	fake_init(&f);
	d = devmem_ops(&f);
	c.has_owner = true;
	c.owner = 1;
	CHECK_EQ(gpusvm_create(&o, &c, &svm), 0);
	f.svm = svm;
	CHECK_EQ(gpusvm_pagemap_create(&d, 1, 1, &f.pm), 0);
	CHECK_EQ(gpusvm_set_pagemap(svm, f.pm), 0);

	/* Attributes: the second 2 MiB prefer system memory and global atomics. */
	memset(a, 0, sizeof(a));
	a[0].kind = GPUSVM_ATTR_PREFERRED_LOC;
	a[0].value = 1;
	a[1].kind = GPUSVM_ATTR_ATOMIC;
	a[1].value = 2;
	CHECK_EQ(gpusvm_set_attrs(svm, BASE + SZ_2M, SZ_2M, a, 2), 0);
	CHECK_EQ(gpusvm_attrs_at(svm, BASE + SZ_2M + PAGE, &at), 0);
	CHECK_EQ(at.preferred_loc, 1);
	CHECK_EQ(at.atomic, 2);
	CHECK_EQ(at.migration, 0);
	CHECK_EQ(gpusvm_attrs_at(svm, BASE, &at), 0);
	CHECK_EQ(at.preferred_loc, 0);
	a[1].reserved = 1; /* one bad entry: nothing changes */
	a[0].value = 0;
	CHECK_EQ(gpusvm_set_attrs(svm, BASE + SZ_2M, SZ_2M, a, 2), -EINVAL);
	CHECK_EQ(gpusvm_attrs_at(svm, BASE + SZ_2M, &at), 0);
	CHECK_EQ(at.preferred_loc, 1);
	CHECK_EQ(gpusvm_set_attrs(svm, BASE + SZ_2M, SZ_2M, a, 0), -EINVAL);
	CHECK_EQ(gpusvm_set_attrs(svm, BASE + SZ_2M, SZ_2M, NULL, 1), -EINVAL);
	CHECK_EQ(gpusvm_set_attrs(svm, BASE + 1, SZ_2M, a, 1), -EINVAL); /* misaligned */

	/* Prefetch the first 2 MiB into device memory and back. */
	CHECK_EQ(gpusvm_prefetch(svm, BASE, SZ_2M, GPUSVM_PREFETCH_DEVICE, 0), 0);
	CHECK(f.on_dev[0] && f.on_dev[511]);
	CHECK_EQ(gpusvm_prefetch(svm, BASE, SZ_2M, GPUSVM_PREFETCH_SYSTEM, 0), 0);
	CHECK(!f.on_dev[0] && !f.on_dev[511]);
	CHECK_EQ(gpusvm_prefetch(svm, BASE, SZ_2M, 9, 0), -EINVAL);
	CHECK_EQ(gpusvm_prefetch(svm, BASE, SZ_2M, GPUSVM_PREFETCH_PAGEMAP, 77), -EINVAL); /* unknown pagemap */

	/* A userptr of 64 KiB in system memory. */
	CHECK_EQ(gpusvm_userptr_create(BASE + 3 * SZ_2M / 2, BASE + 3 * SZ_2M / 2 + 1, &up), -EINVAL);
	CHECK_EQ(gpusvm_userptr_create(BASE + SZ_2M + SZ_2M / 2, BASE + SZ_2M + SZ_2M / 2 + 16 * PAGE, &up), 0);
	CHECK_EQ(gpusvm_userptr_bind(up, bind_cb, &b.seen), -EAGAIN); /* nothing collected yet */
	CHECK_EQ(gpusvm_userptr_get_pages(up, svm, NULL), 0);
	memset(&b, 0, sizeof(b));
	b.seen.f = &f;
	b.up = up;
	b.svm = svm;
	CHECK_EQ(gpusvm_userptr_bind(up, up_bind_cb, &b), 0);
	CHECK_EQ(b.seen.entries, 16);
	CHECK_EQ(b.nonblock_rc, -EAGAIN);
	CHECK_EQ(gpusvm_userptr_pages_valid(up, &valid), 0);
	CHECK(valid); /* the refused invalidation changed nothing */
	unmaps = f.unmaps;
	CHECK_EQ(gpusvm_userptr_invalidate_begin(up, svm, BASE + SZ_2M + SZ_2M / 2, BASE + SZ_2M + SZ_2M / 2 + PAGE,
						 false),
		 0);
	CHECK_EQ(f.unmaps - unmaps, 16);
	CHECK_EQ(gpusvm_userptr_invalidate_end(up), 0);
	CHECK_EQ(gpusvm_userptr_pages_valid(up, &valid), 0);
	CHECK(!valid);
	CHECK_EQ(gpusvm_userptr_get_pages(up, svm, NULL), 0);
	CHECK_EQ(gpusvm_userptr_destroy(up, svm), 0);
	CHECK_EQ(gpusvm_userptr_destroy(NULL, svm), -EINVAL);

	CHECK_EQ(gpusvm_destroy(svm), 0);
	CHECK_EQ(gpusvm_pagemap_put(f.pm), 0);
	CHECK_EQ(f.maps, f.unmaps);
}

/* ---- threads: faults against invalidations and the GC, on pthread locks ---- */

struct racer {
	struct fake *f;
	struct gpusvm *svm;
	unsigned seed;
	long ok, again, nonblock_again, errors;
};

static unsigned rnd(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return (*s >> 8) & 0xffffff;
}

/* Writes the page table under the notifier lock (shared), as a driver would. */
static int race_bind(void *ctx, const struct gpusvm_range *range, const struct gpusvm_page_entry *e, size_t n,
		     size_t first)
{
	struct fake *f = ctx;
	size_t i;

	(void)range;
	(void)first;
	for (i = 0; i < n; i++)
		f->pte[(e[i].va - BASE) / PAGE] = e[i].addr | 1;
	return 0;
}

static long race_invalidations;

static void *faulter(void *arg)
{
	struct racer *r = arg;
	long i;

	/* At least 2000 faults, and on until the invalidator has run 20000 times alongside. */
	for (i = 0; i < 2000 || (__atomic_load_n(&race_invalidations, __ATOMIC_RELAXED) < 20000 && i < 2000000);
	     i++) {
		uint64_t addr = BASE + (uint64_t)(rnd(&r->seed) % NPAGES) * PAGE;
		int rc = gpusvm_handle_fault_and_bind(r->svm, addr, GPUSVM_ACCESS_WRITE, 0, UINT64_MAX, race_bind, r->f,
						      NULL);

		if (rc == 0)
			r->ok++;
		else if (rc == -EAGAIN || rc == -EBUSY)
			r->again++;
		else if (r->errors++ == 0)
			fprintf(stderr, "faulter: unexpected %d at %#llx\n", rc, (unsigned long long)addr);
	}
	return NULL;
}

static int race_stop;

static void *invalidator(void *arg)
{
	struct racer *r = arg;

	while (!__atomic_load_n(&race_stop, __ATOMIC_ACQUIRE)) {
		r->ok++;
		__atomic_add_fetch(&race_invalidations, 1, __ATOMIC_RELAXED);
		uint64_t start = BASE + (uint64_t)(rnd(&r->seed) % NPAGES) * PAGE;
		uint64_t end = start + (1 + rnd(&r->seed) % 64) * PAGE;
		unsigned what = rnd(&r->seed) % 8;
		size_t removed;

		if (what == 0) {
			/* munmap of part of the area, then the GC (the VMA stays: faults re-create). */
			CHECK_EQ(gpusvm_invalidate_begin(r->svm, r->f->notifier_id, start, end, GPUSVM_EVENT_UNMAP, false, 0),
				 0);
			CHECK_EQ(gpusvm_invalidate_end(r->svm, r->f->notifier_id, start, end), 0);
			CHECK_EQ(gpusvm_gc_run(r->svm, &removed), 0);
		} else if (what < 3) {
			int rc = gpusvm_invalidate_begin_nonblock(r->svm, r->f->notifier_id, start, end,
								  GPUSVM_EVENT_CLEAR, false, 0);

			if (rc == 0)
				CHECK_EQ(gpusvm_invalidate_end(r->svm, r->f->notifier_id, start, end), 0);
			else if (rc == -EAGAIN)
				r->nonblock_again++;
			else
				r->errors++;
		} else {
			CHECK_EQ(gpusvm_invalidate_begin(r->svm, r->f->notifier_id, start, end, GPUSVM_EVENT_CLEAR, false, 0),
				 0);
			CHECK_EQ(gpusvm_invalidate_end(r->svm, r->f->notifier_id, start, end), 0);
		}
	}
	return NULL;
}

static void test_threads(void)
{
	struct fake *f = calloc(1, sizeof(*f));
	struct gpusvm_platform_ops o;
	struct gpusvm_config c = config();
	struct gpusvm *svm = NULL;
	struct racer a, a2, b;
	pthread_t ta, ta2, tb;
	struct bind_seen seen;

	if (!f) {
		failures++;
		return;
	}
	fake_init(f);
	o = platform_ops(f);
	CHECK_EQ(gpusvm_create(&o, &c, &svm), 0);
	f->svm = svm;
	memset(&seen, 0, sizeof(seen));
	seen.f = f;
	/* The first fault registers the notifier the invalidator targets. */
	CHECK_EQ(gpusvm_handle_fault_and_bind(svm, BASE, GPUSVM_ACCESS_WRITE, 0, UINT64_MAX, bind_cb, &seen, NULL), 0);
	memset(&a, 0, sizeof(a));
	a.f = f;
	a.svm = svm;
	a.seed = 1;
	a2 = a;
	a2.seed = 3;
	b = a;
	b.seed = 2;
	race_stop = 0;
	/* Two faulting threads (commits of different ranges run in parallel), one invalidating. */
	CHECK_EQ(pthread_create(&tb, NULL, invalidator, &b), 0);
	CHECK_EQ(pthread_create(&ta, NULL, faulter, &a), 0);
	CHECK_EQ(pthread_create(&ta2, NULL, faulter, &a2), 0);
	pthread_join(ta, NULL);
	pthread_join(ta2, NULL);
	__atomic_store_n(&race_stop, 1, __ATOMIC_RELEASE);
	pthread_join(tb, NULL);
	CHECK_EQ(a.errors + a2.errors, 0);
	CHECK_EQ(b.errors, 0);
	CHECK(a.ok + a2.ok > 0);

	/* Everything invalidated: no device mapping is left, and every DMA mapping is unmapped. */
	CHECK_EQ(gpusvm_invalidate_begin(svm, f->notifier_id, BASE, BASE + NPAGES * PAGE, GPUSVM_EVENT_CLEAR, false, 0),
		 0);
	CHECK_EQ(mapped_ptes(f), 0);
	CHECK_EQ(f->maps, f->unmaps);
	CHECK_EQ(gpusvm_invalidate_end(svm, f->notifier_id, BASE, BASE + NPAGES * PAGE), 0);
	CHECK_EQ(gpusvm_destroy(svm), 0);
	CHECK_EQ(f->maps, f->unmaps);
	CHECK_EQ(f->notifiers_live, 0);
	printf("threads: %ld faults bound, %ld raced (EAGAIN/EBUSY), %ld invalidations, %ld nonblock refusals, "
	       "%ld maps\n",
	       a.ok + a2.ok, a.again + a2.again, b.ok, b.nonblock_again, f->maps);
	free(f);
}

/* One scenario: create, fault a 2 MiB range, bind, close, destroy. 0 or the first error. */
static int scenario(struct fake *f)
{
	struct gpusvm_platform_ops o = platform_ops(f);
	struct gpusvm_config c = config();
	struct gpusvm *svm = NULL;
	struct gpusvm_range *r = NULL;
	struct bind_seen seen;
	int rc;

	rc = gpusvm_create(&o, &c, &svm);
	if (rc)
		return rc;
	memset(&seen, 0, sizeof(seen));
	seen.f = f;
	rc = gpusvm_handle_fault_and_bind(svm, BASE + SZ_2M + 0x3000, GPUSVM_ACCESS_READ, 0, UINT64_MAX, bind_cb,
					  &seen, &r);
	if (rc == 0) {
		CHECK_EQ(seen.entries, 512);
		CHECK_EQ(gpusvm_range_put(r), 0);
	} else {
		CHECK(r == NULL);
		CHECK_EQ(seen.entries, 0);
	}
	CHECK_EQ(gpusvm_destroy(svm), 0);
	return rc;
}

static void test_alloc_failure(void)
{
	struct fake f;
	long k, attempts_ok, nomem = 0;

	/* The dry run: how many allocation and lock-creation attempts the scenario makes. */
	fake_init(&f);
	H.attempts = 0;
	H.fail_at = -1;
	CHECK_EQ(scenario(&f), 0);
	attempts_ok = H.attempts;
	CHECK(attempts_ok > 5);
	CHECK_EQ(H.live, 0);
	CHECK_EQ(H.locks_created, H.locks_destroyed);

	/* Fail the k-th attempt, for every k: -ENOMEM (or absorbed), nothing leaked. */
	for (k = 0; k < attempts_ok; k++) {
		int rc;

		fake_init(&f);
		H.attempts = 0;
		H.fail_at = k;
		rc = scenario(&f);
		H.fail_at = -1;
		CHECK(rc == 0 || rc == -ENOMEM);
		nomem += rc == -ENOMEM;
		CHECK_EQ(H.live, 0);
		CHECK_EQ(H.locks_created, H.locks_destroyed);
		CHECK_EQ(f.maps, f.unmaps);
		CHECK_EQ(f.notifiers_live, 0);
	}
	CHECK(nomem > 0);
	printf("alloc failure: %ld attempts in the scenario, %ld of the injected failures returned -ENOMEM\n",
	       attempts_ok, nomem);
}

int main(void)
{
	unsigned i;

	test_before_init();
	CHECK_EQ(gpusvm_host_init(&host_ops), 0);
	CHECK_EQ(gpusvm_host_init(&host_ops), -EBUSY);
	CHECK(gpusvm_host_ready());
	test_bad_input();
	test_fault_bind_invalidate();
	test_migration();
	test_attrs_prefetch_userptr();
	test_threads();
	test_alloc_failure();

	CHECK_EQ(H.live, 0);
	CHECK_EQ(H.allocs, H.frees);
	CHECK_EQ(H.locks_created, H.locks_destroyed);
	for (i = 0; i < GPUSVM_LOCK_CLASSES; i++)
		if (H.by_class[i])
			printf("lock class %u: %ld created\n", i, H.by_class[i]);
	printf("allocations %ld (NoSleep %ld), locks %ld\n", H.allocs, H.nosleep, H.locks_created);
	if (failures) {
		printf("C ABI test: %d check(s) FAILED\n", failures);
		return 1;
	}
	printf("C ABI test: all checks passed\n");
	return 0;
}
