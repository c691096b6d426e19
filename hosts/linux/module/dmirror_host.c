// SPDX-License-Identifier: GPL-2.0
/*
 * gpusvm_dmirror, the host facet (struct gpusvm_host_ops, registered once at module load):
 * allocation (kvmalloc/kmalloc, or GFP_NOWAIT under a spinning lock) and the crate's locks,
 * allocated and initialised in place with one lockdep class per crate lock class.
 */
#include "dmirror.h"

/* ---------------------------------------------------------------------------------------- */
/* Host facet: allocation and locks                                                           */
/* ---------------------------------------------------------------------------------------- */

static struct lock_class_key dm_lock_keys[GPUSVM_LOCK_CLASSES];

static void *dm_alloc(void *ctx, size_t size, size_t align, bool may_sleep)
{
	gfp_t gfp = may_sleep ? GFP_KERNEL : (GFP_NOWAIT | __GFP_NOWARN);

	/* kmalloc aligns power-of-two sizes naturally; round up when more than the minimum is asked. */
	if (align > ARCH_KMALLOC_MINALIGN)
		size = roundup_pow_of_two(max(size, align));
	if (align > PAGE_SIZE)
		return NULL;
	if (may_sleep)
		return kvmalloc(size, gfp);
	return kmalloc(size, gfp);
}

static void dm_free(void *ctx, void *ptr, size_t size, size_t align)
{
	kvfree(ptr);
}

struct dm_lock {
	bool sleeps;
	union {
		struct mutex mutex;
		spinlock_t spin;
		struct rw_semaphore rwsem;
		rwlock_t rw;
	};
};

static struct lock_class_key *dm_key(const struct gpusvm_lock_class *cls)
{
	return &dm_lock_keys[cls->index < GPUSVM_LOCK_CLASSES ? cls->index : 0];
}

static void *dm_mutex_create(void *ctx, const struct gpusvm_lock_class *cls)
{
	struct dm_lock *l = kzalloc(sizeof(*l), GFP_KERNEL);

	if (!l)
		return NULL;
	l->sleeps = cls->may_sleep;
	if (l->sleeps) {
		mutex_init(&l->mutex);
		lockdep_set_class_and_name(&l->mutex, dm_key(cls), cls->name);
	} else {
		spin_lock_init(&l->spin);
		lockdep_set_class_and_name(&l->spin, dm_key(cls), cls->name);
	}
	return l;
}

static void dm_mutex_destroy(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	if (l->sleeps)
		mutex_destroy(&l->mutex);
	kfree(l);
}

static void dm_mutex_lock(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	if (l->sleeps)
		mutex_lock(&l->mutex);
	else
		spin_lock(&l->spin);
}

static bool dm_mutex_try_lock(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	return l->sleeps ? mutex_trylock(&l->mutex) : spin_trylock(&l->spin);
}

static void dm_mutex_unlock(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	if (l->sleeps)
		mutex_unlock(&l->mutex);
	else
		spin_unlock(&l->spin);
}

static void *dm_rwlock_create(void *ctx, const struct gpusvm_lock_class *cls)
{
	struct dm_lock *l = kzalloc(sizeof(*l), GFP_KERNEL);

	if (!l)
		return NULL;
	l->sleeps = cls->may_sleep;
	if (l->sleeps) {
		init_rwsem(&l->rwsem);
		lockdep_set_class_and_name(&l->rwsem, dm_key(cls), cls->name);
	} else {
		rwlock_init(&l->rw);
		lockdep_set_class_and_name(&l->rw, dm_key(cls), cls->name);
	}
	return l;
}

static void dm_rwlock_destroy(void *ctx, void *lock)
{
	kfree(lock);
}

static void dm_read(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	if (l->sleeps)
		down_read(&l->rwsem);
	else
		read_lock(&l->rw);
}

static bool dm_try_read(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	return l->sleeps ? down_read_trylock(&l->rwsem) : read_trylock(&l->rw);
}

static void dm_read_unlock(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	if (l->sleeps)
		up_read(&l->rwsem);
	else
		read_unlock(&l->rw);
}

static void dm_write(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	if (l->sleeps)
		down_write(&l->rwsem);
	else
		write_lock(&l->rw);
}

static bool dm_try_write(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	return l->sleeps ? down_write_trylock(&l->rwsem) : write_trylock(&l->rw);
}

static void dm_write_unlock(void *ctx, void *lock)
{
	struct dm_lock *l = lock;

	if (l->sleeps)
		up_write(&l->rwsem);
	else
		write_unlock(&l->rw);
}

const struct gpusvm_host_ops dm_host_ops = {
	.alloc = dm_alloc,
	.free = dm_free,
	.mutex_create = dm_mutex_create,
	.mutex_destroy = dm_mutex_destroy,
	.mutex_lock = dm_mutex_lock,
	.mutex_try_lock = dm_mutex_try_lock,
	.mutex_unlock = dm_mutex_unlock,
	.rwlock_create = dm_rwlock_create,
	.rwlock_destroy = dm_rwlock_destroy,
	.rwlock_read = dm_read,
	.rwlock_try_read = dm_try_read,
	.rwlock_read_unlock = dm_read_unlock,
	.rwlock_write = dm_write,
	.rwlock_try_write = dm_try_write,
	.rwlock_write_unlock = dm_write_unlock,
};
