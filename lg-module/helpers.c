// SPDX-License-Identifier: GPL-2.0
/*
 * Static inline kernel functions, made callable from lg.ko's Rust.
 *
 * Rust cannot call a C `static inline`; the kernel's own Rust support solves this with one-line
 * wrappers in rust/helpers/, and lg.ko does the same for the few it needs that 6.12 does not
 * wrap. No logic lives here: each function is exactly the kernel function it names, but for
 * lg_machine_check, which calls the machine-check handler the way KVM does (below).
 */
#include <linux/cc_platform.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/irqflags.h>
#include <linux/timekeeping.h>
#include <asm/debugreg.h>
#include <asm/desc.h>
#include <asm/fpu/api.h>
#include <asm/gsseg.h>
#include <asm/mce.h>
#include <asm/segment.h>
#include <asm/special_insns.h>
#include <asm/tlbflush.h>
#include <asm/tsc.h>

#include "lg_bindings.h"

unsigned long lg_pa(const void *kaddr) { return __pa(kaddr); }
void *lg_va(unsigned long phys) { return __va(phys); }
unsigned long lg_page_to_phys(struct page *page) { return page_to_phys(page); }
void *lg_current_gdt_rw(void) { return get_current_gdt_rw(); }
unsigned long lg_read_cr4(void) { return __read_cr4(); }
pgd_t *lg_mm_pgd(struct mm_struct *mm) { return mm->pgd; }
struct mm_struct *lg_current_mm(void) { return current->mm; }
unsigned int lg_this_cpu(void) { return raw_smp_processor_id(); }
unsigned int lg_nr_cpu_ids(void) { return nr_cpu_ids; }
void lg_irq_disable(void) { local_irq_disable(); }
void lg_irq_enable(void) { local_irq_enable(); }
void lg_cond_resched(void) { cond_resched(); }
void lg_fpu_begin(void) { kernel_fpu_begin(); }
void lg_fpu_end(void) { kernel_fpu_end(); }
void lg_load_fs_gs(unsigned short fs, unsigned short gs) { loadsegment(fs, fs); load_gs_index(gs); }
void lg_load_kernel_ss(void) { loadsegment(ss, __KERNEL_DS); }
bool lg_host_has_pti(void) { return boot_cpu_has(X86_FEATURE_PTI); }
unsigned int lg_tsc_khz(void) { return tsc_khz; }
u64 lg_ktime_get_real_ns(void) { return ktime_get_real_ns(); }
void lg_prepare_to_sleep(void) { set_current_state(TASK_INTERRUPTIBLE); }
void lg_finish_sleep(void) { __set_current_state(TASK_RUNNING); }
unsigned long lg_idt_base(void) { struct desc_ptr idt; store_idt(&idt); return idt.address; }
void lg_mutex_init(struct mutex *lock) { mutex_init(lock); }
int lg_mutex_lock_killable(struct mutex *lock) { return mutex_lock_killable(lock); }
bool lg_host_encrypts_memory(void) { return cc_platform_has(CC_ATTR_MEM_ENCRYPT); }
bool lg_host_has_lam(void) { return cpu_feature_enabled(X86_FEATURE_LAM); }
bool lg_cpu_has_xfd(void) { return cpu_feature_enabled(X86_FEATURE_XFD); }
bool lg_hw_breakpoint_active(void) { return hw_breakpoint_active(); }
void lg_hw_breakpoint_restore(void) { hw_breakpoint_restore(); }

/*
 * A machine check that arrived while a guest ran. Re-raising it with `int $18` would run the
 * handler as if the kernel itself had been interrupted, and a memory error in the guest's RAM,
 * which is the launcher's user memory and recoverable, would be fatal there. So, like KVM, hand
 * the handler a frame from user mode: the error is charged to the launcher, not to the kernel.
 */
void lg_machine_check(void)
{
#ifdef CONFIG_X86_MCE
	struct pt_regs regs = {
		.cs = 3,
		.flags = X86_EFLAGS_IF,
	};

	do_machine_check(&regs);
#endif
}
