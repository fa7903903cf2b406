/* SPDX-License-Identifier: GPL-2.0 */
/* The C declarations lg.ko needs beyond what 6.12's kernel::bindings has (see Kbuild). */
#include <linux/miscdevice.h>
