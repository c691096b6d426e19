/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Device memory in the C ABI test program: with a pagemap over the fake device memory, a range
 * migrates to device memory (copies counted, device-local entries in bind), is evicted (the
 * allocation released once through page_free), its live allocations are walked, it migrates
 * again and comes back through the CPU-fault path (in the SVM's address space and in one given
 * by a platform table).
 */
#include "harness.h"

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

void test_migration(void)
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
