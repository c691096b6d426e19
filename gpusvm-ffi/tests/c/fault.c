/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Faults, binds, invalidations and the GC in the C ABI test program: a write fault maps the 512
 * pages of a 2 MiB range and the bind callback sees them; a non-blockable invalidation refuses
 * with -EAGAIN while the notifier lock is held; an invalidation zaps and DMA-unmaps; an unmap
 * queues the range for the GC, which removes it and its notifier. And threads: two fault and
 * bind while a third invalidates (blocking and not), unmaps and runs the GC, on pthread locks.
 */
#include "harness.h"

void test_fault_bind_invalidate(void)
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

void test_threads(void)
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
