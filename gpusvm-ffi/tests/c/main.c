/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The C ABI test program driven from C (tests/c/; built and run by ../../run-c-test): main runs
 * the scenarios in order — before the host is registered, then registration (once; a second is
 * -EBUSY), then every scenario family (harness.h lists them) — and checks at the end that every
 * allocation and lock was released. It fails if any CHECK failed.
 */
#include "harness.h"

int failures;

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
