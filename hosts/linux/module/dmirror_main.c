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
 *   devmem    memremap_pages device-private chunks, each page backed by a system page
 *
 * The files:
 *   dmirror.h           the structures, and what one file calls in another
 *   dmirror_main.c      the devices, the file operations and ioctl dispatch, module init/exit
 *   dmirror_host.c      the host facet: allocation and locks
 *   dmirror_platform.c  the platform facet, migration, the bind callback
 *   dmirror_devmem.c    device memory and its dev_pagemap_ops
 *   dmirror_ioctl.c     READ/WRITE, MIGRATE_TO_DEV, RELEASE, SNAPSHOT
 */
#include "dmirror.h"

/* ---------------------------------------------------------------------------------------- */
/* Devices                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static dev_t dm_devt;
static struct class *dm_class;
static struct dm_device dm_devices[DM_NDEVICES];

struct dm_device *dm_device_of_owner(const void *owner)
{
	int i;

	for (i = 0; i < DM_NDEVICES; i++)
		if (owner == &dm_devices[i])
			return &dm_devices[i];
	return NULL;
}

void *dm_owner_ptr(u32 owner_id)
{
	if (owner_id == 0 || owner_id > DM_NDEVICES)
		return NULL;
	return &dm_devices[owner_id - 1];
}

bool dm_mmap_held(struct dm_mirror *m)
{
	return READ_ONCE(m->mmap_holder) == current;
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

void dm_mirror_put(struct dm_mirror *m)
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
