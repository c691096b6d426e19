/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Attributes, prefetch and userptr in the C ABI test program: attributes are set (one bad entry
 * changes nothing) and read back; a prefetch moves 2 MiB to device memory and back; a userptr
 * collects, binds (a non-blockable invalidation from inside bind is -EAGAIN), is invalidated
 * (its 16 DMA mappings unmapped) and collected again.
 */
#include "harness.h"

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

void test_attrs_prefetch_userptr(void)
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
