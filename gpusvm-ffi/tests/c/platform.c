/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The fake platform of the C ABI test program: one VMA of 4 MiB (an array of page frames),
 * notifiers, identity DMA with counters, a device page-table array, migration over the page
 * array, and device memory (frames, copies, releases counted) — the platform and device-memory
 * tables; the SVM configuration; and the bind callback that checks each entry and writes the
 * page table. Declared in harness.h.
 */
#include "harness.h"

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

struct gpusvm_devmem_ops devmem_ops(struct fake *f)
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

struct gpusvm_platform_ops platform_ops(struct fake *f)
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

void fake_init(struct fake *f)
{
	unsigned i;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < NPAGES; i++)
		f->pfn[i] = 0x80000 + i * 3; /* scattered frames */
	f->next_pfn = 0x200000;
	f->next_dpfn = 0x900000;
}

struct gpusvm_config config(void)
{
	struct gpusvm_config c;

	memset(&c, 0, sizeof(c));
	c.mm_start = 0;
	c.mm_range = 1ull << 47;
	return c;
}

/* ---- bind callback: writes the page table, counts entries ---- */

int bind_cb(void *ctx, const struct gpusvm_range *range, const struct gpusvm_page_entry *e, size_t n,
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

long mapped_ptes(const struct fake *f)
{
	long n = 0;
	unsigned i;

	for (i = 0; i < NPAGES; i++)
		n += f->pte[i] != 0;
	return n;
}
