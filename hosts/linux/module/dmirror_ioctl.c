// SPDX-License-Identifier: GPL-2.0
/*
 * gpusvm_dmirror, the ioctls that do the work: READ / WRITE (fault the missing pages in, then
 * copy through the device page table), MIGRATE_TO_DEV, RELEASE (evict) and the SNAPSHOT walk.
 * The dispatch is dm_ioctl in dmirror_main.c.
 */
#include "dmirror.h"

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

int dm_read_write(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd, bool write)
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

int dm_evict_all(struct dm_mirror *m)
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

int dm_migrate_to_dev(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd)
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
int dm_snapshot(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd)
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
