/* SPDX-License-Identifier: GPL-2.0 */
/* The C declarations lg.ko needs beyond what 6.12's kernel::bindings has (see Kbuild). */
#include <linux/miscdevice.h>

/* helpers.c */
unsigned long lg_pa(const void *kaddr);
void *lg_va(unsigned long phys);
unsigned long lg_page_to_phys(struct page *page);
void *lg_current_gdt_rw(void);
unsigned long lg_read_cr4(void);
pgd_t *lg_mm_pgd(struct mm_struct *mm);
struct mm_struct *lg_current_mm(void);
unsigned int lg_this_cpu(void);
unsigned int lg_nr_cpu_ids(void);
void lg_irq_disable(void);
void lg_irq_enable(void);
void lg_cond_resched(void);
void lg_fpu_begin(void);
void lg_fpu_end(void);
void lg_load_fs_gs(unsigned short fs, unsigned short gs);
void lg_load_kernel_ss(void);
bool lg_host_has_pti(void);
unsigned int lg_tsc_khz(void);
u64 lg_ktime_get_real_ns(void);
void lg_prepare_to_sleep(void);
void lg_finish_sleep(void);
unsigned long lg_idt_base(void);
void lg_mutex_init(struct mutex *lock);
int lg_mutex_lock_killable(struct mutex *lock);
bool lg_host_encrypts_memory(void);
bool lg_host_has_lam(void);
bool lg_cpu_has_xfd(void);
bool lg_hw_breakpoint_active(void);
void lg_hw_breakpoint_restore(void);
void lg_machine_check(void);

/* switcher/switcher.S */
extern const char lg_switcher_start[], lg_switcher_end[];
extern const unsigned long lg_switcher_offsets[3];
void lg_reraise(unsigned int vector);
