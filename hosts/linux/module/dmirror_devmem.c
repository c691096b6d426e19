// SPDX-License-Identifier: GPL-2.0
/*
 * gpusvm_dmirror, device memory (struct gpusvm_devmem_ops, one gpusvm pagemap per device):
 * memremap_pages MEMORY_DEVICE_PRIVATE chunks, each device page paired with a backing system
 * page that holds its data; the dev_pagemap_ops (page_free, migrate_to_ram) forwarded to the
 * crate; allocation, release and copies.
 */
#include "dmirror.h"

/* ---- device memory: memremap_pages chunks, each device page paired with a backing page ---- */

static void dm_devmem_page_free(struct page *page)
{
	struct dm_device *d = dm_device_of_page(page);

	gpusvm_pagemap_page_free(d->pm, page_to_pfn(page));
}

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

void dm_remove_chunks(struct dm_device *d)
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

int dm_pagemap_create(struct dm_device *d)
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
