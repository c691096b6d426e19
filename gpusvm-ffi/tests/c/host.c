/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The host facet of the C ABI test program: an allocator over posix_memalign with counters and
 * failure injection (the attempt numbered H.fail_at fails), and pthread mutexes and
 * reader-writer locks allocated and initialised in place, handed to the library as pointers,
 * counted per lock class. Declared in harness.h.
 */
#include "harness.h"

struct host_state H = { .lock = PTHREAD_MUTEX_INITIALIZER, .fail_at = -1 };

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

const struct gpusvm_host_ops host_ops = {
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
