/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Error paths of the C ABI test program: before the host is registered every allocation fails
 * (-ENOMEM, nothing panics); bad input is -EINVAL (or -EFAULT without a VMA) and changes
 * nothing; failing each allocation or lock creation of a whole scenario in turn returns -ENOMEM
 * (or is absorbed) with every allocation and lock released.
 */
#include "harness.h"

void test_before_init(void)
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

void test_bad_input(void)
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

void test_alloc_failure(void)
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
