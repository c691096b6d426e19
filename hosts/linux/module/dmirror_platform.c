// SPDX-License-Identifier: GPL-2.0
/*
 * gpusvm_dmirror, the platform facet of one mirror (struct gpusvm_platform_ops): vma_lookup,
 * hmm_range_fault in the retry loop of a sequence notifier, the crate's interval notifiers,
 * identity DMA, the xarray device page table (zap, and the bind callback that fills it), the
 * clock, and migration (migrate_vma_setup in migrate_isolate, migrate_vma_pages/finalize in the
 * last migrate_finalize slice, system pages for the crate).
 */
#include "dmirror.h"

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
int dm_hmm_walk(struct dm_mirror *m, u64 start, u64 end, unsigned long flags,
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

const struct mmu_interval_notifier_ops dm_seq_ops = {
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
int p_map_page(void *ctx, uint64_t pfn, uint8_t order, uint32_t dir, uint64_t *addr)
{
	*addr = pfn << PAGE_SHIFT;
	return 0;
}

void p_unmap_page(void *ctx, uint64_t addr, uint8_t order, uint32_t dir)
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

uint64_t p_now(void *ctx)
{
	return ktime_get_ns();
}

/* ---- migration: migrate_vma_setup in isolate, migrate_vma_pages/finalize in the last slice ---- */

struct dm_device *dm_device_of_page(struct page *page)
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

/* The bind callback: write the device page table (under the crate's locks: no sleeping). */
int dm_bind(void *ctx, const struct gpusvm_range *range,
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

const struct gpusvm_platform_ops dm_platform_ops = {
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
