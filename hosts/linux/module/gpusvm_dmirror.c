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
#include <linux/kernel.h>
#include <linux/mm.h>
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

struct dm_device {
	struct cdev cdev;
	unsigned int minor;
	u32 owner_id; /* the crate's owner id (minor + 1); the kernel's owner is this struct */
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

static int p_collect(void *ctx, const struct gpusvm_collect_request *req,
		     struct gpusvm_cpu_page *out, size_t n)
{
	struct dm_mirror *m = ctx;
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	bool lock = !dm_mmap_held(m);
	struct hmm_range range = {
		.notifier = &m->seq_notifier,
		.start = req->start,
		.end = req->end,
		.default_flags = req->fault ?
			(HMM_PFN_REQ_FAULT | (req->write ? HMM_PFN_REQ_WRITE : 0)) : 0,
		.dev_private_owner = req->has_owner ? dm_owner_ptr(req->owner) : NULL,
	};
	unsigned long *pfns;
	size_t i;
	int ret;

	if (req->end <= req->start || (req->end - req->start) >> PAGE_SHIFT != n)
		return -EINVAL;
	pfns = kvcalloc(n, sizeof(*pfns), GFP_KERNEL);
	if (!pfns)
		return -ENOMEM;
	range.hmm_pfns = pfns;
	if (!mmget_not_zero(m->mm)) {
		kvfree(pfns);
		return -EFAULT;
	}
	for (;;) {
		if (time_after(jiffies, timeout)) {
			ret = -EBUSY;
			break;
		}
		range.notifier_seq = mmu_interval_read_begin(&m->seq_notifier);
		if (lock)
			mmap_read_lock(m->mm);
		ret = hmm_range_fault(&range);
		if (lock)
			mmap_read_unlock(m->mm);
		if (ret == -EBUSY)
			continue;
		if (ret)
			break;
		if (mmu_interval_check_retry(&m->seq_notifier, range.notifier_seq))
			continue;
		break;
	}
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

	if (end <= start)
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
/* File operations                                                                            */
/* ---------------------------------------------------------------------------------------- */

static int dm_open(struct inode *inode, struct file *filp)
{
	struct dm_device *d = container_of(inode->i_cdev, struct dm_device, cdev);
	struct gpusvm_platform_ops ops = {
		.find_vma = p_find_vma,
		.collect_pages = p_collect,
		.register_notifier = p_register,
		.unregister_notifier = p_unregister,
		.dma = { .map_page = p_map_page, .unmap_page = p_unmap_page },
		.zap = p_zap,
		.now_ns = p_now,
	};
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
	ret = mmu_interval_notifier_insert(&m->seq_notifier, m->mm, 0, TASK_SIZE_MAX,
					   &dm_seq_ops);
	if (ret)
		goto err_mm;
	ops.ctx = m;
	ret = gpusvm_create(&ops, &cfg, &m->svm);
	if (ret)
		goto err_notifier;
	filp->private_data = m;
	return 0;

err_notifier:
	mmu_interval_notifier_remove(&m->seq_notifier);
err_mm:
	mmdrop(m->mm);
	kfree(m);
	return ret;
}

static int dm_release(struct inode *inode, struct file *filp)
{
	struct dm_mirror *m = filp->private_data;

	gpusvm_destroy(m->svm);
	mmu_interval_notifier_remove(&m->seq_notifier);
	xa_destroy(&m->pt);
	mmdrop(m->mm);
	kfree(m);
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
		cdev_init(&d->cdev, &dm_fops);
		d->cdev.owner = THIS_MODULE;
		ret = cdev_add(&d->cdev, MKDEV(MAJOR(dm_devt), i), 1);
		if (ret)
			goto err_devices;
		dev = device_create(dm_class, NULL, MKDEV(MAJOR(dm_devt), i), NULL,
				    "hmm_dmirror%d", i);
		if (IS_ERR(dev)) {
			ret = PTR_ERR(dev);
			cdev_del(&d->cdev);
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
