// SPDX-License-Identifier: GPL-2.0
/*
 * gpusvm_dmirror: the test_hmm ioctl interface (lib/test_hmm_uapi.h) served by the gpusvm
 * crate through its C ABI (gpusvm-ffi, include/gpusvm.h), so the kernel's own hmm-tests can
 * judge the crate. Written for issue 15 from the behaviour described in hosts/linux/DMIRROR.md.
 *
 * The "device" is the CPU: DMA is the identity (bus address = physical address), the device
 * page table is an xarray indexed by virtual page number, and the device "accesses" memory by
 * copying pages. The module only implements the crate's facets with kernel facilities:
 *   host      kmalloc/kfree (GFP_KERNEL, or GFP_NOWAIT under a spinning lock), locks
 *             allocated in place with one lockdep class per crate lock class
 *   platform  vma_lookup, hmm_range_fault, interval notifiers, identity DMA, xarray zap
 */
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/kref.h>
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/xarray.h>

#include <test_hmm_uapi.h>

#include "gpusvm.h"

#define DM_NDEVICES 2

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

static const struct gpusvm_host_ops dm_host_ops = {
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

/* ---------------------------------------------------------------------------------------- */
/* Devices and mirrors                                                                        */
/* ---------------------------------------------------------------------------------------- */

/* A piece of device memory: device-private struct pages over an unused physical range. */
struct dm_chunk {
	struct dev_pagemap pgmap;
	struct resource *res;
	struct dm_device *dev;
};

#define DM_CHUNK_SIZE (256UL << 20)
#define DM_MAX_CHUNKS 8

struct dm_device {
	struct cdev cdev;
	unsigned int minor;
	u32 owner_id; /* the crate's owner id (minor + 1); the kernel's owner is this struct */
	struct gpusvm_pagemap *pm;
	struct mutex chunk_lock; /* adding chunks */
	struct dm_chunk *chunks[DM_MAX_CHUNKS];
	unsigned int nchunks;
	spinlock_t free_lock;
	struct page *free_pages; /* linked through zone_device_data */
	unsigned long nfree;
};

/* One per open file: an SVM over the opener's address space and its device page table. */
struct dm_mirror {
	struct dm_device *dev;
	struct mm_struct *mm;
	struct gpusvm *svm;
	/*
	 * The device page table: virtual page number -> value entry
	 * (frame << 2) | DM_PTE_DEVICE | DM_PTE_WRITE. Written by the bind callback, erased by zap.
	 */
	struct xarray pt;
	/* Whole address space, sequence only: the retry loop of collect_pages. */
	struct mmu_interval_notifier seq_notifier;
	/* The task that holds this mm's mmap lock while it calls into the crate (CPU fault path). */
	struct task_struct *mmap_holder;
	/* With mmap_holder: the device page a CPU fault is migrating (migrate_vma fault_page). */
	struct page *fault_page;
	/* Migrations between migrate_isolate and the last migrate_finalize slice. */
	spinlock_t mig_lock;
	struct list_head migrations;
	/*
	 * References: the open file, and each device page migrated for this mirror (its backing
	 * page points back here, for the CPU-fault path). The SVM goes with the file (svm_lock,
	 * svm NULL afterwards); the structure with the last reference.
	 */
	struct kref ref;
	struct rw_semaphore svm_lock;
	/* A stand-in for one CPU fault in an address space no open mirror serves (no SVM). */
	bool temp;
};

/* One migrate_vma in flight. */
struct dm_migration {
	struct list_head link;
	struct migrate_vma args;
	struct task_struct *task;
	struct task_struct *prev_holder;
	bool locked; /* took the mmap lock in migrate_isolate */
};

#define DM_PTE_WRITE 1UL
#define DM_PTE_DEVICE 2UL
#define DM_PTE_SHIFT 2

struct dm_notifier {
	struct mmu_interval_notifier n;
	struct dm_mirror *m;
	u64 id, start, end;
};

static dev_t dm_devt;
static struct class *dm_class;
static struct dm_device dm_devices[DM_NDEVICES];

static struct dm_device *dm_device_of_owner(const void *owner)
{
	int i;

	for (i = 0; i < DM_NDEVICES; i++)
		if (owner == &dm_devices[i])
			return &dm_devices[i];
	return NULL;
}

static void *dm_owner_ptr(u32 owner_id)
{
	if (owner_id == 0 || owner_id > DM_NDEVICES)
		return NULL;
	return &dm_devices[owner_id - 1];
}

static bool dm_mmap_held(struct dm_mirror *m)
{
	return READ_ONCE(m->mmap_holder) == current;
}

/* ---------------------------------------------------------------------------------------- */
/* Platform facet                                                                             */
/* ---------------------------------------------------------------------------------------- */

static bool p_find_vma(void *ctx, uint64_t addr, struct gpusvm_vma *out)
{
	struct dm_mirror *m = ctx;
	struct vm_area_struct *vma;
	bool lock = !dm_mmap_held(m), found = false;

	if (!mmget_not_zero(m->mm))
		return false;
	if (lock)
		mmap_read_lock(m->mm);
	vma = vma_lookup(m->mm, addr);
	if (vma) {
		out->start = vma->vm_start;
		out->end = vma->vm_end;
		out->flags = ((vma->vm_flags & VM_READ) ? GPUSVM_VMA_READ : 0) |
			     ((vma->vm_flags & VM_WRITE) ? GPUSVM_VMA_WRITE : 0);
		found = true;
	}
	if (lock)
		mmap_read_unlock(m->mm);
	mmput(m->mm);
	return found;
}

static void dm_fill_cpu_page(struct gpusvm_cpu_page *out, unsigned long hpfn)
{
	struct page *page;
	struct dm_device *d;

	memset(out, 0, sizeof(*out));
	if (!(hpfn & HMM_PFN_VALID) || (hpfn & HMM_PFN_ERROR)) {
		out->kind = GPUSVM_PAGE_ABSENT;
		return;
	}
	page = hmm_pfn_to_page(hpfn);
	out->order = hmm_pfn_to_map_order(hpfn);
	out->pfn = page_to_pfn(page);
	if (is_device_private_page(page)) {
		d = dm_device_of_owner(page->pgmap->owner);
		out->kind = GPUSVM_PAGE_DEVICE;
		out->pagemap = d ? d->owner_id : 0;
		out->owner = d ? d->owner_id : 0;
		return;
	}
	out->kind = GPUSVM_PAGE_SYSTEM;
	out->writable = !!(hpfn & HMM_PFN_WRITE);
}

/* hmm_range_fault over [start, end) with the sequence retry loop; the mm is held by the caller. */
static int dm_hmm_walk(struct dm_mirror *m, u64 start, u64 end, unsigned long flags,
		       void *owner, unsigned long *pfns)
{
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	bool lock = !dm_mmap_held(m);
	struct hmm_range range = {
		.notifier = &m->seq_notifier,
		.start = start,
		.end = end,
		.hmm_pfns = pfns,
		.default_flags = flags,
		.dev_private_owner = owner,
	};
	int ret;

	for (;;) {
		if (time_after(jiffies, timeout))
			return -EBUSY;
		range.notifier_seq = mmu_interval_read_begin(&m->seq_notifier);
		if (lock)
			mmap_read_lock(m->mm);
		ret = hmm_range_fault(&range);
		if (lock)
			mmap_read_unlock(m->mm);
		if (ret == -EBUSY)
			continue;
		if (ret)
			return ret;
		if (!mmu_interval_check_retry(&m->seq_notifier, range.notifier_seq))
			return 0;
	}
}

static int p_collect(void *ctx, const struct gpusvm_collect_request *req,
		     struct gpusvm_cpu_page *out, size_t n)
{
	struct dm_mirror *m = ctx;
	unsigned long flags = req->fault ?
		(HMM_PFN_REQ_FAULT | (req->write ? HMM_PFN_REQ_WRITE : 0)) : 0;
	unsigned long *pfns;
	size_t i;
	int ret;

	if (req->end <= req->start || (req->end - req->start) >> PAGE_SHIFT != n || m->temp)
		return -EINVAL;
	pfns = kvcalloc(n, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return -ENOMEM;
	if (!mmget_not_zero(m->mm)) {
		kvfree(pfns);
		return -EFAULT;
	}
	ret = dm_hmm_walk(m, req->start, req->end, flags,
			  req->has_owner ? dm_owner_ptr(req->owner) : NULL, pfns);
	mmput(m->mm);
	if (!ret)
		for (i = 0; i < n; i++)
			dm_fill_cpu_page(&out[i], pfns[i]);
	kvfree(pfns);
	return ret;
}

static bool dm_seq_invalidate(struct mmu_interval_notifier *mni,
			      const struct mmu_notifier_range *range, unsigned long cur_seq)
{
	mmu_interval_set_seq(mni, cur_seq);
	return true;
}

static const struct mmu_interval_notifier_ops dm_seq_ops = {
	.invalidate = dm_seq_invalidate,
};

static uint32_t dm_event(const struct mmu_notifier_range *range)
{
	switch (range->event) {
	case MMU_NOTIFY_UNMAP:
		return GPUSVM_EVENT_UNMAP;
	case MMU_NOTIFY_PROTECTION_VMA:
	case MMU_NOTIFY_PROTECTION_PAGE:
		return GPUSVM_EVENT_PROTECTION;
	case MMU_NOTIFY_MIGRATE:
		return GPUSVM_EVENT_MIGRATE;
	case MMU_NOTIFY_RELEASE:
		return GPUSVM_EVENT_RELEASE;
	default:
		return GPUSVM_EVENT_CLEAR;
	}
}

static bool dm_crate_invalidate(struct mmu_interval_notifier *mni,
				const struct mmu_notifier_range *range, unsigned long cur_seq)
{
	struct dm_notifier *dn = container_of(mni, struct dm_notifier, n);
	u64 start = max_t(u64, range->start, dn->start);
	u64 end = min_t(u64, range->end, dn->end);
	uint32_t event = dm_event(range);
	struct dm_device *owner = NULL;

	if (event == GPUSVM_EVENT_MIGRATE)
		owner = dm_device_of_owner(range->owner);
	if (start >= end)
		return true;
	if (mmu_notifier_range_blockable(range)) {
		gpusvm_invalidate_begin(dn->m->svm, dn->id, start, end, event, owner != NULL,
					owner ? owner->owner_id : 0);
	} else if (gpusvm_invalidate_begin_nonblock(dn->m->svm, dn->id, start, end, event,
						    owner != NULL,
						    owner ? owner->owner_id : 0) == -EAGAIN) {
		return false;
	}
	mmu_interval_set_seq(mni, cur_seq);
	gpusvm_invalidate_end(dn->m->svm, dn->id, start, end);
	return true;
}

static const struct mmu_interval_notifier_ops dm_crate_ops = {
	.invalidate = dm_crate_invalidate,
};

static int p_register(void *ctx, uint64_t id, uint64_t start, uint64_t end, void **handle)
{
	struct dm_mirror *m = ctx;
	struct dm_notifier *dn;
	int ret;

	if (end <= start || m->temp)
		return -EINVAL;
	dn = kzalloc(sizeof(*dn), GFP_KERNEL);
	if (!dn)
		return -ENOMEM;
	dn->m = m;
	dn->id = id;
	dn->start = start;
	dn->end = end;
	ret = mmu_interval_notifier_insert(&dn->n, m->mm, start, end - start, &dm_crate_ops);
	if (ret) {
		kfree(dn);
		return ret;
	}
	*handle = dn;
	return 0;
}

static void p_unregister(void *ctx, void *handle)
{
	struct dm_notifier *dn = handle;

	mmu_interval_notifier_remove(&dn->n);
	kfree(dn);
}

/* The device is the CPU: a bus address is the physical address. */
static int p_map_page(void *ctx, uint64_t pfn, uint8_t order, uint32_t dir, uint64_t *addr)
{
	*addr = pfn << PAGE_SHIFT;
	return 0;
}

static void p_unmap_page(void *ctx, uint64_t addr, uint8_t order, uint32_t dir)
{
}

static void p_zap(void *ctx, uint64_t start, uint64_t end)
{
	struct dm_mirror *m = ctx;
	unsigned long idx;
	void *entry;

	if (end <= start)
		return;
	xa_lock(&m->pt);
	xa_for_each_range(&m->pt, idx, entry, start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT)
		__xa_erase(&m->pt, idx);
	xa_unlock(&m->pt);
}

static uint64_t p_now(void *ctx)
{
	return ktime_get_ns();
}

/* ---- migration: migrate_vma_setup in isolate, migrate_vma_pages/finalize in the last slice ---- */

static void dm_mirror_put(struct dm_mirror *m);

static struct dm_device *dm_device_of_page(struct page *page)
{
	return container_of(page->pgmap, struct dm_chunk, pgmap)->dev;
}

static int p_isolate(void *ctx, const struct gpusvm_migrate_request *req,
		     struct gpusvm_migrate_src *src, size_t n)
{
	struct dm_mirror *m = ctx;
	struct dm_migration *mig;
	struct vm_area_struct *vma;
	unsigned long mpfn;
	struct page *page;
	size_t i;
	int ret;

	if (req->end <= req->start || (req->end - req->start) >> PAGE_SHIFT != n)
		return -EINVAL;
	mig = kzalloc(sizeof(*mig), GFP_KERNEL);
	if (!mig)
		return -ENOMEM;
	mig->args.src = kvcalloc(n, sizeof(unsigned long), GFP_KERNEL);
	mig->args.dst = kvcalloc(n, sizeof(unsigned long), GFP_KERNEL);
	if (!mig->args.src || !mig->args.dst) {
		ret = -ENOMEM;
		goto err_free;
	}
	mig->task = current;
	mig->prev_holder = m->mmap_holder;
	if (!dm_mmap_held(m)) {
		if (!mmget_not_zero(m->mm)) {
			ret = -EFAULT;
			goto err_free;
		}
		mmap_read_lock(m->mm);
		mig->locked = true;
		WRITE_ONCE(m->mmap_holder, current);
	}
	vma = vma_lookup(m->mm, req->start);
	if (!vma || req->end > vma->vm_end) {
		ret = -EFAULT;
		goto err_unlock;
	}
	mig->args.vma = vma;
	mig->args.start = req->start;
	mig->args.end = req->end;
	mig->args.pgmap_owner = req->has_owner ? dm_owner_ptr(req->owner) : NULL;
	mig->args.flags = ((req->select & GPUSVM_MIGRATE_SYSTEM) ? MIGRATE_VMA_SELECT_SYSTEM : 0) |
		((req->select & GPUSVM_MIGRATE_DEVICE_PRIVATE) ? MIGRATE_VMA_SELECT_DEVICE_PRIVATE : 0);
	if (!mig->locked)
		mig->args.fault_page = m->fault_page;
	ret = migrate_vma_setup(&mig->args);
	if (ret)
		goto err_unlock;
	for (i = 0; i < n; i++) {
		mpfn = mig->args.src[i];
		memset(&src[i], 0, sizeof(src[i]));
		if (!(mpfn & MIGRATE_PFN_MIGRATE)) {
			src[i].kind = (mpfn & MIGRATE_PFN_VALID) ? GPUSVM_SRC_BUSY : GPUSVM_SRC_SKIP;
			continue;
		}
		page = migrate_pfn_to_page(mpfn);
		if (!page) {
			src[i].kind = GPUSVM_SRC_ABSENT;
		} else if (is_device_private_page(page)) {
			src[i].kind = GPUSVM_SRC_DEVICE;
			src[i].pagemap = dm_device_of_page(page)->owner_id;
			src[i].pfn = page_to_pfn(page);
		} else {
			src[i].kind = GPUSVM_SRC_SYSTEM;
			src[i].pfn = page_to_pfn(page);
		}
	}
	spin_lock(&m->mig_lock);
	list_add(&mig->link, &m->migrations);
	spin_unlock(&m->mig_lock);
	return 0;

err_unlock:
	if (mig->locked) {
		WRITE_ONCE(m->mmap_holder, mig->prev_holder);
		mmap_read_unlock(m->mm);
		mmput(m->mm);
	}
err_free:
	kvfree(mig->args.src);
	kvfree(mig->args.dst);
	kfree(mig);
	return ret;
}

static void p_finalize(void *ctx, const struct gpusvm_migrate_request *req,
		       const struct gpusvm_migrate_src *src, const struct gpusvm_migrate_dst *dst,
		       size_t n, size_t offset, size_t total)
{
	struct dm_mirror *m = ctx;
	struct dm_migration *mig = NULL, *it;
	struct page *page;
	size_t i;

	spin_lock(&m->mig_lock);
	list_for_each_entry(it, &m->migrations, link) {
		if (it->task == current && it->args.start == req->start && it->args.end == req->end) {
			mig = it;
			break;
		}
	}
	spin_unlock(&m->mig_lock);
	if (WARN_ON_ONCE(!mig))
		return;
	for (i = 0; i < n && offset + i < total; i++) {
		unsigned long *d = &mig->args.dst[offset + i];
		unsigned long s = mig->args.src[offset + i];

		*d = 0;
		if (!(s & MIGRATE_PFN_MIGRATE))
			continue;
		switch (dst[i].kind) {
		case GPUSVM_DST_SYSTEM:
			page = pfn_to_page(dst[i].pfn);
			lock_page(page);
			*d = migrate_pfn(dst[i].pfn);
			break;
		case GPUSVM_DST_DEVICE:
			page = pfn_to_page(dst[i].pfn);
			zone_device_page_init(page);
			/* The backing page remembers the mirror, for the CPU fault path. */
			kref_get(&m->ref);
			set_page_private((struct page *)page->zone_device_data, (unsigned long)m);
			*d = migrate_pfn(dst[i].pfn) | (s & MIGRATE_PFN_WRITE);
			break;
		default:
			break;
		}
	}
	if (offset + n < total)
		return;
	migrate_vma_pages(&mig->args);
	migrate_vma_finalize(&mig->args);
	spin_lock(&m->mig_lock);
	list_del(&mig->link);
	spin_unlock(&m->mig_lock);
	if (mig->locked) {
		WRITE_ONCE(m->mmap_holder, mig->prev_holder);
		mmap_read_unlock(m->mm);
		mmput(m->mm);
	}
	kvfree(mig->args.src);
	kvfree(mig->args.dst);
	kfree(mig);
}

static int p_alloc_sys(void *ctx, uint64_t *out, size_t n)
{
	struct page *page;
	size_t i;

	for (i = 0; i < n; i++) {
		page = alloc_page(GFP_HIGHUSER);
		if (!page) {
			while (i--)
				__free_page(pfn_to_page(out[i]));
			return -ENOMEM;
		}
		out[i] = page_to_pfn(page);
	}
	return 0;
}

static void p_free_sys(void *ctx, const uint64_t *pfns, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		__free_page(pfn_to_page(pfns[i]));
}

/* ---- device memory: memremap_pages chunks, each device page paired with a backing page ---- */

static void dm_devmem_page_free(struct page *page)
{
	struct dm_device *d = dm_device_of_page(page);

	gpusvm_pagemap_page_free(d->pm, page_to_pfn(page));
}

static const struct gpusvm_platform_ops dm_platform_ops;

/*
 * The CPU fault in an address space that no open mirror of this device serves: a forked child
 * touching a device page it inherited, or a page that outlived its file. The crate migrates
 * through a platform table over the faulting mm (gpusvm_pagemap_migrate_to_ram_in).
 */
static int dm_migrate_to_ram_in(struct dm_device *d, struct vm_fault *vmf)
{
	struct gpusvm_platform_ops ops = dm_platform_ops;
	struct dm_mirror *t;
	int ret;

	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t)
		return -ENOMEM;
	t->temp = true;
	t->dev = d;
	t->mm = vmf->vma->vm_mm;
	xa_init(&t->pt);
	spin_lock_init(&t->mig_lock);
	INIT_LIST_HEAD(&t->migrations);
	t->mmap_holder = current;
	t->fault_page = vmf->page;
	ops.ctx = t;
	ret = gpusvm_pagemap_migrate_to_ram_in(d->pm, &ops, vmf->address,
					       page_to_pfn(vmf->page), NULL);
	xa_destroy(&t->pt);
	kfree(t);
	return ret;
}

static vm_fault_t dm_devmem_migrate_to_ram(struct vm_fault *vmf)
{
	struct page *page = vmf->page, *backing = page->zone_device_data;
	struct dm_device *d = dm_device_of_page(page);
	struct dm_mirror *m = backing ? (struct dm_mirror *)page_private(backing) : NULL;
	struct task_struct *prev_holder;
	struct page *prev_fault_page;
	int ret;

	/*
	 * The mirror the page was migrated for, if the fault is in its address space and its file
	 * is open (the faulting page holds a reference to the mirror; its SVM goes with the file);
	 * otherwise a stand-in platform over the faulting mm.
	 */
	if (m && m->mm == vmf->vma->vm_mm) {
		down_read(&m->svm_lock);
		if (m->svm) {
			prev_holder = m->mmap_holder;
			prev_fault_page = m->fault_page;
			m->fault_page = page;
			WRITE_ONCE(m->mmap_holder, current);
			ret = gpusvm_pagemap_migrate_to_ram(d->pm, m->svm, vmf->address,
							    page_to_pfn(page), NULL);
			WRITE_ONCE(m->mmap_holder, prev_holder);
			m->fault_page = prev_fault_page;
			up_read(&m->svm_lock);
			goto out;
		}
		up_read(&m->svm_lock);
	}
	ret = dm_migrate_to_ram_in(d, vmf);
out:
	if (ret == -EAGAIN)
		return 0; /* the CPU faults again */
	return ret ? VM_FAULT_SIGBUS : 0;
}

static const struct dev_pagemap_ops dm_devmem_pgops = {
	.page_free = dm_devmem_page_free,
	.migrate_to_ram = dm_devmem_migrate_to_ram,
};

static int dm_add_chunk(struct dm_device *d)
{
	struct dm_chunk *c;
	unsigned long pfn, first, last;
	struct page *head = NULL, *tail = NULL, *page;
	void *ptr;
	int ret;

	if (d->nchunks >= DM_MAX_CHUNKS)
		return -ENOMEM;
	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return -ENOMEM;
	c->dev = d;
	c->res = request_free_mem_region(&iomem_resource, DM_CHUNK_SIZE, "gpusvm_dmirror");
	if (IS_ERR(c->res)) {
		ret = PTR_ERR(c->res);
		goto err_free;
	}
	c->pgmap.type = MEMORY_DEVICE_PRIVATE;
	c->pgmap.range.start = c->res->start;
	c->pgmap.range.end = c->res->end;
	c->pgmap.nr_range = 1;
	c->pgmap.ops = &dm_devmem_pgops;
	c->pgmap.owner = d;
	ptr = memremap_pages(&c->pgmap, numa_node_id());
	if (IS_ERR(ptr)) {
		ret = PTR_ERR(ptr);
		goto err_region;
	}
	first = c->res->start >> PAGE_SHIFT;
	last = first + (DM_CHUNK_SIZE >> PAGE_SHIFT);
	for (pfn = first; pfn < last; pfn++) {
		page = pfn_to_page(pfn);
		page->zone_device_data = NULL;
		if (tail)
			tail->zone_device_data = page;
		else
			head = page;
		tail = page;
	}
	spin_lock(&d->free_lock);
	tail->zone_device_data = d->free_pages;
	d->free_pages = head;
	d->nfree += last - first;
	spin_unlock(&d->free_lock);
	d->chunks[d->nchunks++] = c;
	return 0;

err_region:
	release_mem_region(c->res->start, resource_size(c->res));
err_free:
	kfree(c);
	return ret;
}

static void dm_remove_chunks(struct dm_device *d)
{
	while (d->nchunks) {
		struct dm_chunk *c = d->chunks[--d->nchunks];

		memunmap_pages(&c->pgmap);
		release_mem_region(c->res->start, resource_size(c->res));
		kfree(c);
	}
	d->free_pages = NULL;
	d->nfree = 0;
}

/* Give device pages back to the free list, with their backing pages. */
static void dm_devmem_release(void *ctx, const uint64_t *dpfns, size_t n)
{
	struct dm_device *d = ctx;
	struct page *page, *backing;
	size_t i;

	for (i = 0; i < n; i++) {
		page = pfn_to_page(dpfns[i]);
		backing = page->zone_device_data;
		if (backing) {
			struct dm_mirror *m = (struct dm_mirror *)page_private(backing);

			set_page_private(backing, 0);
			__free_page(backing);
			if (m)
				dm_mirror_put(m);
		}
		spin_lock(&d->free_lock);
		page->zone_device_data = d->free_pages;
		d->free_pages = page;
		d->nfree++;
		spin_unlock(&d->free_lock);
	}
}

static int dm_devmem_alloc(void *ctx, uint64_t *out, size_t n)
{
	struct dm_device *d = ctx;
	struct page *page, *backing;
	size_t i;
	int ret;

	for (;;) {
		spin_lock(&d->free_lock);
		if (d->nfree >= n)
			break;
		spin_unlock(&d->free_lock);
		mutex_lock(&d->chunk_lock);
		ret = d->nfree >= n ? 0 : dm_add_chunk(d);
		mutex_unlock(&d->chunk_lock);
		if (ret)
			return ret;
	}
	for (i = 0; i < n; i++) {
		page = d->free_pages;
		d->free_pages = page->zone_device_data;
		page->zone_device_data = NULL;
		d->nfree--;
		out[i] = page_to_pfn(page);
	}
	spin_unlock(&d->free_lock);
	for (i = 0; i < n; i++) {
		backing = alloc_page(GFP_HIGHUSER);
		if (!backing) {
			dm_devmem_release(d, out, n);
			return -ENOMEM;
		}
		set_page_private(backing, 0);
		pfn_to_page(out[i])->zone_device_data = backing;
	}
	return 0;
}

static struct page *dm_data_page(u64 addr, bool device)
{
	struct page *page = pfn_to_page(addr >> PAGE_SHIFT);

	return device ? page->zone_device_data : page;
}

static int dm_devmem_copy(void *ctx, const struct gpusvm_copy_run *runs, size_t n, size_t *completed)
{
	struct page *s, *t;
	size_t i;
	u64 j;

	for (i = 0; i < n; i++) {
		const struct gpusvm_copy_run *r = &runs[i];

		for (j = 0; j < r->npages; j++) {
			u64 off = j << PAGE_SHIFT;

			switch (r->kind) {
			case GPUSVM_COPY_RAM_TO_DEVICE:
				s = dm_data_page(r->src + off, false);
				t = dm_data_page(r->dst + off, true);
				break;
			case GPUSVM_COPY_DEVICE_TO_RAM:
				s = dm_data_page(r->src + off, true);
				t = dm_data_page(r->dst + off, false);
				break;
			case GPUSVM_COPY_DEVICE_TO_DEVICE:
				s = dm_data_page(r->src + off, true);
				t = dm_data_page(r->dst + off, true);
				break;
			case GPUSVM_COPY_ZERO_DEVICE:
				s = NULL;
				t = dm_data_page(r->dst + off, true);
				break;
			default:
				*completed = i;
				return -EINVAL;
			}
			if (!t || (r->kind != GPUSVM_COPY_ZERO_DEVICE && !s)) {
				*completed = i;
				return -EFAULT;
			}
			if (s)
				copy_highpage(t, s);
			else
				clear_highpage(t);
		}
	}
	*completed = n;
	return 0;
}

static int dm_pagemap_create(struct dm_device *d)
{
	struct gpusvm_devmem_ops ops = {
		.ctx = d,
		.alloc = dm_devmem_alloc,
		.release = dm_devmem_release,
		.copy = dm_devmem_copy,
		.now_ns = p_now,
		.dma = { .map_page = p_map_page, .unmap_page = p_unmap_page },
	};

	return gpusvm_pagemap_create(&ops, d->owner_id, d->owner_id, &d->pm);
}

/* The bind callback: write the device page table (under the crate's locks: no sleeping). */
static int dm_bind(void *ctx, const struct gpusvm_range *range,
		   const struct gpusvm_page_entry *entries, size_t n, size_t first)
{
	struct dm_mirror *m = ctx;
	size_t i;
	u64 j;

	for (i = 0; i < n; i++) {
		const struct gpusvm_page_entry *e = &entries[i];
		u64 npages = e->size >> PAGE_SHIFT;
		unsigned long flags = (e->writable ? DM_PTE_WRITE : 0) |
				      (e->protocol == 1 ? DM_PTE_DEVICE : 0);

		for (j = 0; j < npages; j++) {
			unsigned long val = (((e->addr >> PAGE_SHIFT) + j) << DM_PTE_SHIFT) | flags;
			void *old = xa_store(&m->pt, (e->va >> PAGE_SHIFT) + j, xa_mk_value(val),
					     GFP_ATOMIC | __GFP_NOWARN);

			if (xa_is_err(old))
				return xa_err(old);
		}
	}
	return 0;
}

static const struct gpusvm_platform_ops dm_platform_ops = {
	.find_vma = p_find_vma,
	.collect_pages = p_collect,
	.register_notifier = p_register,
	.unregister_notifier = p_unregister,
	.migrate_isolate = p_isolate,
	.migrate_finalize = p_finalize,
	.alloc_system_pages = p_alloc_sys,
	.free_system_pages = p_free_sys,
	.dma = { .map_page = p_map_page, .unmap_page = p_unmap_page },
	.zap = p_zap,
	.now_ns = p_now,
};

/* ---------------------------------------------------------------------------------------- */
/* READ / WRITE                                                                               */
/* ---------------------------------------------------------------------------------------- */

static bool dm_entry_ok(struct dm_mirror *m, unsigned long addr, bool write)
{
	void *e = xa_load(&m->pt, addr >> PAGE_SHIFT);

	return e && (!write || (xa_to_value(e) & DM_PTE_WRITE));
}

/* The page holding the data of a table entry, with a reference (NULL: none). */
static struct page *dm_entry_get_page(struct dm_mirror *m, unsigned long addr, bool write,
				      struct page **ref)
{
	struct page *page = NULL;
	unsigned long v;
	void *e;

	xa_lock(&m->pt);
	e = xa_load(&m->pt, addr >> PAGE_SHIFT);
	if (e && (!write || (xa_to_value(e) & DM_PTE_WRITE))) {
		v = xa_to_value(e);
		*ref = pfn_to_page(v >> DM_PTE_SHIFT);
		/* A device page's data lives in its backing page. */
		page = (v & DM_PTE_DEVICE) ? (*ref)->zone_device_data : *ref;
		if (page)
			get_page(*ref);
	}
	xa_unlock(&m->pt);
	return page;
}

static int dm_fault_missing(struct dm_mirror *m, u64 start, u64 end, bool write, bool *faulted)
{
	u64 a;
	int ret;

	for (a = start; a < end; a += PAGE_SIZE) {
		if (dm_entry_ok(m, a, write))
			continue;
		ret = gpusvm_handle_fault_and_bind(m->svm, a,
						   write ? GPUSVM_ACCESS_WRITE : GPUSVM_ACCESS_READ,
						   start, end, dm_bind, m, NULL);
		if (ret)
			return ret;
		*faulted = true;
	}
	return 0;
}

static int dm_copy(struct dm_mirror *m, u64 start, u64 end, char *buf, bool write)
{
	struct page *page, *ref;
	u64 a;

	for (a = start; a < end; a += PAGE_SIZE, buf += PAGE_SIZE) {
		page = dm_entry_get_page(m, a, write, &ref);
		if (!page)
			return -EAGAIN;
		if (write)
			memcpy_to_page(page, 0, buf, PAGE_SIZE);
		else
			memcpy_from_page(buf, page, 0, PAGE_SIZE);
		put_page(ref);
	}
	return 0;
}

static int dm_read_write(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd, bool write)
{
	u64 start = cmd->addr, size = cmd->npages << PAGE_SHIFT, end = start + size;
	void __user *uptr = u64_to_user_ptr(cmd->ptr);
	bool faulted;
	int tries, ret = 0;
	char *buf;

	buf = kvmalloc(size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if (write && copy_from_user(buf, uptr, size)) {
		ret = -EFAULT;
		goto out;
	}
	if (!mmget_not_zero(m->mm)) {
		ret = -EINVAL;
		goto out;
	}
	for (tries = 0;; tries++) {
		if (tries >= 64 || fatal_signal_pending(current)) {
			ret = -EBUSY;
			break;
		}
		/* One device fault per round, however many ranges it needed (DMIRROR gap 4). */
		faulted = false;
		ret = dm_fault_missing(m, start, end, write, &faulted);
		if (ret)
			break;
		if (faulted)
			cmd->faults++;
		ret = dm_copy(m, start, end, buf, write);
		if (ret != -EAGAIN)
			break;
	}
	mmput(m->mm);
	if (!ret && !write && copy_to_user(uptr, buf, size))
		ret = -EFAULT;
	if (!ret)
		cmd->cpages = cmd->npages;
out:
	kvfree(buf);
	return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* MIGRATE_TO_DEV, SNAPSHOT, RELEASE                                                          */
/* ---------------------------------------------------------------------------------------- */

/* Each allocation of this mirror's device: evict its address window (by address). */
static int dm_evict_allocation(void *ctx, uint64_t va_start, uint64_t va_end,
			       uint64_t live_pages, uint64_t first_dpfn)
{
	struct dm_mirror *m = ctx;
	struct page *backing = pfn_to_page(first_dpfn)->zone_device_data;
	struct gpusvm_range *r = NULL;
	uint64_t a, rs, re;

	if (!backing || page_private(backing) != (unsigned long)m)
		return 0;
	for (a = va_start; a < va_end; a = re) {
		re = a + PAGE_SIZE;
		if (gpusvm_find(m->svm, a, &r) || !r)
			continue;
		if (!gpusvm_range_bounds(r, &rs, &re) && re > a)
			gpusvm_evict(m->svm, r, NULL);
		else
			re = a + PAGE_SIZE;
		gpusvm_range_put(r);
		r = NULL;
	}
	return 0;
}

static int dm_evict_all(struct dm_mirror *m)
{
	return gpusvm_pagemap_allocations(m->dev->pm, dm_evict_allocation, m);
}

/* Whether every page of [start, end) is in a readable VMA. */
static int dm_check_vmas(struct dm_mirror *m, u64 start, u64 end)
{
	struct vm_area_struct *vma;
	u64 a = start;
	int ret = 0;

	mmap_read_lock(m->mm);
	while (a < end) {
		vma = vma_lookup(m->mm, a);
		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;
			break;
		}
		a = vma->vm_end;
	}
	mmap_read_unlock(m->mm);
	return ret;
}

static int dm_migrate_to_dev(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd)
{
	u64 start = cmd->addr, size = cmd->npages << PAGE_SHIFT, end = start + size, a;
	struct gpusvm_range *r;
	struct page *page, *ref;
	char *buf;
	void *e;
	int ret;

	if (!mmget_not_zero(m->mm))
		return -EINVAL;
	ret = dm_check_vmas(m, start, end);
	if (ret)
		goto out_mm;
	/* Moves what can move; what stayed behind shows in the read-back below. */
	ret = gpusvm_prefetch(m->svm, start, size, GPUSVM_PREFETCH_DEVICE, 0);
	if (ret == -ENOMEM || ret == -EINVAL)
		goto out_mm;
	/* Map the migrated ranges in the device table, without faulting. */
	for (a = start; a < end; a += PAGE_SIZE) {
		if (xa_load(&m->pt, a >> PAGE_SHIFT))
			continue;
		r = NULL;
		if (gpusvm_find(m->svm, a, &r) || !r)
			continue;
		gpusvm_bind(m->svm, r, dm_bind, m);
		gpusvm_range_put(r);
	}
	buf = kvmalloc(size, GFP_KERNEL);
	if (!buf) {
		ret = -ENOMEM;
		goto out_mm;
	}
	ret = 0;
	for (a = start; a < end && !ret; a += PAGE_SIZE) {
		e = xa_load(&m->pt, a >> PAGE_SHIFT);
		if (!e || !(xa_to_value(e) & DM_PTE_DEVICE)) {
			ret = -ENOENT;
			break;
		}
		page = dm_entry_get_page(m, a, false, &ref);
		if (!page || !is_device_private_page(ref) || dm_device_of_page(ref) != m->dev) {
			if (page)
				put_page(ref);
			ret = -ENOENT;
			break;
		}
		memcpy_from_page(buf + (a - start), page, 0, PAGE_SIZE);
		put_page(ref);
	}
	if (!ret && copy_to_user(u64_to_user_ptr(cmd->ptr), buf, size))
		ret = -EFAULT;
	if (!ret)
		cmd->cpages = cmd->npages;
	kvfree(buf);
out_mm:
	mmput(m->mm);
	return ret;
}

static u8 dm_snapshot_byte(struct dm_mirror *m, unsigned long hpfn)
{
	struct page *page;
	unsigned int order;
	u8 prot;

	if (hpfn & HMM_PFN_ERROR)
		return HMM_DMIRROR_PROT_ERROR;
	if (!(hpfn & HMM_PFN_VALID))
		return HMM_DMIRROR_PROT_NONE;
	page = hmm_pfn_to_page(hpfn);
	prot = (hpfn & HMM_PFN_WRITE) ? HMM_DMIRROR_PROT_WRITE : HMM_DMIRROR_PROT_READ;
	if (is_device_private_page(page))
		return prot | (page->pgmap->owner == m->dev ? HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL :
							      HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE);
	if (is_zero_pfn(page_to_pfn(page)))
		prot |= HMM_DMIRROR_PROT_ZERO;
	order = hmm_pfn_to_map_order(hpfn);
	if (order == PUD_SHIFT - PAGE_SHIFT)
		prot |= HMM_DMIRROR_PROT_PUD;
	else if (order == PMD_SHIFT - PAGE_SHIFT)
		prot |= HMM_DMIRROR_PROT_PMD;
	return prot;
}

/* What the CPU page table holds, one byte per page, without faulting (module-side walk). */
static int dm_snapshot(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd)
{
	u64 start = cmd->addr, end = start + (cmd->npages << PAGE_SHIFT), i;
	unsigned long *pfns;
	u8 *bytes;
	int ret;

	pfns = kvcalloc(cmd->npages, sizeof(*pfns), GFP_KERNEL);
	bytes = kvmalloc(cmd->npages, GFP_KERNEL);
	if (!pfns || !bytes) {
		ret = -ENOMEM;
		goto out;
	}
	if (!mmget_not_zero(m->mm)) {
		ret = -EINVAL;
		goto out;
	}
	ret = dm_hmm_walk(m, start, end, 0, m->dev, pfns);
	mmput(m->mm);
	if (ret)
		goto out;
	for (i = 0; i < cmd->npages; i++)
		bytes[i] = dm_snapshot_byte(m, pfns[i]);
	if (copy_to_user(u64_to_user_ptr(cmd->ptr), bytes, cmd->npages))
		ret = -EFAULT;
	else
		cmd->cpages = cmd->npages;
out:
	kvfree(pfns);
	kvfree(bytes);
	return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* File operations                                                                            */
/* ---------------------------------------------------------------------------------------- */

static int dm_open(struct inode *inode, struct file *filp)
{
	struct dm_device *d = container_of(inode->i_cdev, struct dm_device, cdev);
	struct gpusvm_platform_ops ops = dm_platform_ops;
	struct gpusvm_config cfg = {
		.mm_start = 0,
		.mm_range = TASK_SIZE_MAX,
		.has_owner = true,
		.owner = d->owner_id,
	};
	struct dm_mirror *m;
	int ret;

	if (!current->mm)
		return -EINVAL;
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	m->dev = d;
	m->mm = current->mm;
	mmgrab(m->mm);
	xa_init(&m->pt);
	spin_lock_init(&m->mig_lock);
	INIT_LIST_HEAD(&m->migrations);
	kref_init(&m->ref);
	init_rwsem(&m->svm_lock);
	ret = mmu_interval_notifier_insert(&m->seq_notifier, m->mm, 0, TASK_SIZE_MAX,
					   &dm_seq_ops);
	if (ret)
		goto err_mm;
	ops.ctx = m;
	ret = gpusvm_create(&ops, &cfg, &m->svm);
	if (ret)
		goto err_notifier;
	ret = gpusvm_set_pagemap(m->svm, d->pm);
	if (ret) {
		gpusvm_destroy(m->svm);
		goto err_notifier;
	}
	filp->private_data = m;
	return 0;

err_notifier:
	mmu_interval_notifier_remove(&m->seq_notifier);
err_mm:
	mmdrop(m->mm);
	kfree(m);
	return ret;
}

static void dm_mirror_free(struct kref *ref)
{
	struct dm_mirror *m = container_of(ref, struct dm_mirror, ref);

	xa_destroy(&m->pt);
	mmdrop(m->mm);
	kfree(m);
}

static void dm_mirror_put(struct dm_mirror *m)
{
	kref_put(&m->ref, dm_mirror_free);
}

static int dm_release(struct inode *inode, struct file *filp)
{
	struct dm_mirror *m = filp->private_data;
	struct gpusvm *svm;

	/* Nothing of this mirror stays in device memory once its file is closed. */
	if (mmget_not_zero(m->mm)) {
		dm_evict_all(m);
		mmput(m->mm);
	}
	down_write(&m->svm_lock);
	svm = m->svm;
	m->svm = NULL;
	up_write(&m->svm_lock);
	gpusvm_destroy(svm);
	mmu_interval_notifier_remove(&m->seq_notifier);
	dm_mirror_put(m);
	return 0;
}

static long dm_ioctl(struct file *filp, unsigned int command, unsigned long arg)
{
	struct dm_mirror *m = filp->private_data;
	void __user *uarg = (void __user *)arg;
	struct hmm_dmirror_cmd cmd;
	int ret;

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if ((cmd.addr & ~PAGE_MASK) || !cmd.npages ||
	    cmd.npages > (TASK_SIZE_MAX >> PAGE_SHIFT) ||
	    cmd.addr + (cmd.npages << PAGE_SHIFT) < cmd.addr)
		return -EINVAL;
	cmd.cpages = 0;
	cmd.faults = 0;

	switch (command) {
	case HMM_DMIRROR_READ:
		ret = dm_read_write(m, &cmd, false);
		break;
	case HMM_DMIRROR_WRITE:
		ret = dm_read_write(m, &cmd, true);
		break;
	case HMM_DMIRROR_MIGRATE_TO_DEV:
		ret = dm_migrate_to_dev(m, &cmd);
		break;
	case HMM_DMIRROR_SNAPSHOT:
		ret = dm_snapshot(m, &cmd);
		break;
	case HMM_DMIRROR_RELEASE:
		if (mmget_not_zero(m->mm)) {
			ret = dm_evict_all(m);
			mmput(m->mm);
		} else {
			ret = -EINVAL;
		}
		break;
	default:
		ret = -EINVAL;
		break;
	}
	if (ret)
		return ret;
	if (copy_to_user(uarg, &cmd, sizeof(cmd)))
		return -EFAULT;
	return 0;
}

static int dm_mmap(struct file *filp, struct vm_area_struct *vma)
{
	unsigned long a;
	struct page *page;
	int ret;

	for (a = vma->vm_start; a < vma->vm_end; a += PAGE_SIZE) {
		page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!page)
			return -ENOMEM;
		ret = vm_insert_page(vma, a, page);
		put_page(page); /* the mapping holds its own reference */
		if (ret)
			return ret;
	}
	return 0;
}

static const struct file_operations dm_fops = {
	.owner = THIS_MODULE,
	.open = dm_open,
	.release = dm_release,
	.mmap = dm_mmap,
	.unlocked_ioctl = dm_ioctl,
	.llseek = default_llseek,
};

/* ---------------------------------------------------------------------------------------- */
/* Module                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static void dm_remove_devices(int n)
{
	while (n-- > 0) {
		device_destroy(dm_class, MKDEV(MAJOR(dm_devt), n));
		cdev_del(&dm_devices[n].cdev);
		gpusvm_pagemap_put(dm_devices[n].pm);
		dm_remove_chunks(&dm_devices[n]);
	}
}

static int __init dm_init(void)
{
	struct device *dev;
	int ret, i;

	ret = gpusvm_host_init(&dm_host_ops);
	if (ret)
		return ret;
	ret = alloc_chrdev_region(&dm_devt, 0, DM_NDEVICES, "gpusvm_dmirror");
	if (ret)
		return ret;
	dm_class = class_create("gpusvm_dmirror");
	if (IS_ERR(dm_class)) {
		ret = PTR_ERR(dm_class);
		goto err_region;
	}
	for (i = 0; i < DM_NDEVICES; i++) {
		struct dm_device *d = &dm_devices[i];

		d->minor = i;
		d->owner_id = i + 1;
		mutex_init(&d->chunk_lock);
		spin_lock_init(&d->free_lock);
		ret = dm_pagemap_create(d);
		if (ret)
			goto err_devices;
		cdev_init(&d->cdev, &dm_fops);
		d->cdev.owner = THIS_MODULE;
		ret = cdev_add(&d->cdev, MKDEV(MAJOR(dm_devt), i), 1);
		if (ret) {
			gpusvm_pagemap_put(d->pm);
			goto err_devices;
		}
		dev = device_create(dm_class, NULL, MKDEV(MAJOR(dm_devt), i), NULL,
				    "hmm_dmirror%d", i);
		if (IS_ERR(dev)) {
			ret = PTR_ERR(dev);
			cdev_del(&d->cdev);
			gpusvm_pagemap_put(d->pm);
			goto err_devices;
		}
	}
	pr_info("gpusvm_dmirror: %d device-private devices, gpusvm through its C ABI\n",
		DM_NDEVICES);
	return 0;

err_devices:
	dm_remove_devices(i);
	class_destroy(dm_class);
err_region:
	unregister_chrdev_region(dm_devt, DM_NDEVICES);
	return ret;
}

static void __exit dm_exit(void)
{
	dm_remove_devices(DM_NDEVICES);
	class_destroy(dm_class);
	unregister_chrdev_region(dm_devt, DM_NDEVICES);
}

module_init(dm_init);
module_exit(dm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test_hmm's ioctl interface served by the gpusvm crate (issue 15)");
