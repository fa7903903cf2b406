/* SPDX-License-Identifier: GPL-2.0 */
/* The Switcher lives in switcher/ at the top of the repository; lg.ko links it in from here. */
#include "../switcher/switcher.S"
