/* SPDX-License-Identifier: GPL-2.0 */
/* gpusvm.h includes the C standard headers; inside the kernel, linux/types.h has the types. */
#ifndef GPUSVM_SHIM_STDINT_H
#define GPUSVM_SHIM_STDINT_H
#include <linux/types.h>
#endif
