/* SPDX-License-Identifier: GPL-2.0 */
/*
 * gpusvm_dmirror's internal header: the kernel, test_hmm and gpusvm headers, the device,
 * mirror, migration and notifier structures, and what one file of the module calls in another
 * (dmirror_main.c has the map of the files).
 */
#ifndef GPUSVM_DMIRROR_H
#define GPUSVM_DMIRROR_H

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

/* dmirror_main.c */
struct dm_device *dm_device_of_owner(const void *owner);
void *dm_owner_ptr(u32 owner_id);
bool dm_mmap_held(struct dm_mirror *m);
void dm_mirror_put(struct dm_mirror *m);

/* dmirror_host.c */
extern const struct gpusvm_host_ops dm_host_ops;

/* dmirror_platform.c */
int dm_hmm_walk(struct dm_mirror *m, u64 start, u64 end, unsigned long flags,
		void *owner, unsigned long *pfns);
extern const struct mmu_interval_notifier_ops dm_seq_ops;
int p_map_page(void *ctx, uint64_t pfn, uint8_t order, uint32_t dir, uint64_t *addr);
void p_unmap_page(void *ctx, uint64_t addr, uint8_t order, uint32_t dir);
uint64_t p_now(void *ctx);
struct dm_device *dm_device_of_page(struct page *page);
int dm_bind(void *ctx, const struct gpusvm_range *range,
	    const struct gpusvm_page_entry *entries, size_t n, size_t first);
extern const struct gpusvm_platform_ops dm_platform_ops;

/* dmirror_devmem.c */
void dm_remove_chunks(struct dm_device *d);
int dm_pagemap_create(struct dm_device *d);

/* dmirror_ioctl.c */
int dm_read_write(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd, bool write);
int dm_evict_all(struct dm_mirror *m);
int dm_migrate_to_dev(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd);
int dm_snapshot(struct dm_mirror *m, struct hmm_dmirror_cmd *cmd);

#endif /* GPUSVM_DMIRROR_H */
