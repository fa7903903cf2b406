/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The Switcher: where the host becomes the guest and back.
 *
 * This is the only code that runs in both worlds. Everything between lg_switcher_start and
 * lg_switcher_end is copied by lg.ko into the text pages of the Switcher window, which is
 * mapped at the same address in the host and in every guest, so it keeps running across the
 * moment CR3 changes. It is position-independent: every reference is to itself, or to the
 * per-CPU block whose address it is given (on the way in) or finds from the GDT register (on
 * the way out: the stack pointer may be on an IST stack). The layout of the window is
 * described in lg-module/src/layout.rs; every number this file shares with the host comes from
 * layout.h beside it, generated from the Rust.
 *
 * The way in, switch_to_guest(block), called by the host with interrupts off:
 *   save the host's callee-saved registers and flags; park the host stack pointer in the host
 *   page and the host CR3 in MSR_KERNEL_GS_BASE (readable only at CPL 0: a ring-1 guest can
 *   neither rdmsr nor swapgs); load the guest's GDT and TSS, no LDT at all, the guest's IDT;
 *   the guest's DS, ES, FS and GS selectors, then its FS and GS bases; the guest's CR3 and a
 *   CR4 without PGE or SMAP; pop the guest's registers; iretq to ring 1.
 *
 * The way out, through any of 256 stubs: the CPU has pushed the guest's RIP, CS, RFLAGS, RSP
 * and SS at TSS.RSP0, the top of the regs page; the stub adds an error code and the vector;
 * the common exit pushes the general registers, so the whole frame now lies in the regs page,
 * and saves the guest's segment selectors and bases beside it. Then: back to the host CR3
 * (from the MSR), host GS base first and the host's GDT entry 15 (a host NMI handler may run
 * from here on), host IDT, host GDT and TSS, host stack, host flags, return. The host's LDT,
 * if it has one, is lg.ko's to reload (lg-module/run.rs).
 *
 * One trap may not leave: the #UD stub goes to ud_exit first, which delivers a user `syscall`
 * to the guest's own handler without leaving its address space when lg.ko armed it for this
 * trip (lg-module/src/fast_syscall.rs), and otherwise joins the common exit.
 *
 * The order of both paths is chosen so that, whatever instant an NMI arrives, the IDT, GDT
 * and TSS in force agree with each other: docs/world-switch.md walks through it.
 */
#include <linux/linkage.h>
#include <asm/msr-index.h>
#include <asm/processor-flags.h>

#include "layout.h"

/* Byte 5 of a TSS descriptor holds its type; bit 1 of the type is "busy". */
#define TSS_DESC_TYPE_BYTE	(TSS_SELECTOR + 5)
#define TSS_BUSY		0x02

/* wrmsr of the 64-bit value at \mem into MSR \msr. Clobbers rax, rcx, rdx. */
.macro WRMSR_FROM msr, mem
	movl	$\msr, %ecx
	movl	\mem, %eax
	movl	4+\mem, %edx
	wrmsr
.endm

/*
 * \reg = this CPU's block, found from the GDT register: whenever the Switcher's IDT is loaded,
 * so is the guest GDT of this CPU's state page. Not from the stack pointer, which a trap taken
 * on an IST stack (a nested NMI, a breakpoint in the window) leaves somewhere else, where
 * rounding down would find a page the guest can write and take it for the regs page. sgdt
 * writes 10 bytes just below the stack pointer; nothing else changes.
 */
.macro BLOCK_FROM_GDT reg
	subq	$16, %rsp
	sgdt	(%rsp)
	movq	2(%rsp), \reg
	addq	$16, %rsp
	subq	$(BLOCK_STATE + STATE_GDT), \reg
.endm

/* Load segment register \sreg from the word at \mem, unless it holds that already. Clobbers ax. */
.macro LOAD_SELECTOR sreg, mem
	movw	%\sreg, %ax
	cmpw	\mem, %ax
	je	.Lloaded_\@
	movw	\mem, %\sreg
.Lloaded_\@:
.endm

/* rdmsr of MSR \msr into the 64-bit slot at \mem. Clobbers rax, rcx, rdx. */
.macro RDMSR_TO msr, mem
	movl	$\msr, %ecx
	rdmsr
	movl	%eax, \mem
	movl	%edx, 4+\mem
.endm

/*
 * The text copied into the window. It lives in a data section: its only executable copy is
 * the one in the window.
 */
	.section .rodata.lguest_switcher, "a"
	.balign PAGE
SYM_DATA_START(lg_switcher_start)

/* void switch_to_guest(void *block): %rdi = this CPU's block, in the window. */
switch_to_guest:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	pushfq
	leaq	BLOCK_HOST(%rdi), %rbp
	movq	%rsp, HOST_RSP(%rbp)
	/*
	 * From here the stack is the regs page: should anything fault, its frame lands where the
	 * exit path looks, never on the host's stack.
	 */
	leaq	(BLOCK_REGS + REGS_FRAME)(%rdi), %rsp
	sgdt	HOST_GDTR(%rbp)
	sidt	HOST_IDTR(%rbp)

	/* Park the host CR3 where only ring 0 can read it. */
	movq	%cr3, %rax
	movq	%rax, %rdx
	shrq	$32, %rdx
	movl	$MSR_KERNEL_GS_BASE, %ecx
	wrmsr

	/* The guest's GDT and TSS. ltr wants an available TSS: clear the busy bit first. */
	leaq	BLOCK_STATE(%rdi), %rbx
	lgdt	STATE_GDTR(%rbx)
	andb	$~TSS_BUSY, (STATE_GDT + TSS_DESC_TYPE_BYTE)(%rbx)
	movw	$TSS_SELECTOR, %ax
	ltr	%ax
	/*
	 * No LDT. The host's, if the launcher made one with modify_ldt, would stay in LDTR, and the
	 * CPU would read its descriptors at the host's linear address through the guest's page
	 * tables: whatever the guest mapped there, a call gate to ring 0 included.
	 */
	xorl	%eax, %eax
	lldt	%ax
	/* The guest's IDT: from now on every trap and interrupt comes to our stubs. */
	lidt	STATE_IDTR(%rbx)
	/*
	 * And so no host handler can run until the exit path loads the host's IDT again: GDT entry
	 * 15 may now say the guest's CPU number instead of this CPU's, which a host NMI handler
	 * reads there (with lsl) wherever this GDT is loaded with the host's IDT.
	 */
	movq	HOST_GUEST_CPUNODE(%rbp), %rax
	movq	%rax, (STATE_GDT + GDT_CPUNODE)(%rbx)

	/*
	 * The guest's data segment selectors, each only if it is not loaded already: a segment
	 * load is dear under emulation, and a guest's are mostly null, as the host's are. The host
	 * checked that each loads from this GDT without a fault.
	 */
	LOAD_SELECTOR ds, HOST_GUEST_SELECTORS(%rbp)
	LOAD_SELECTOR es, (HOST_GUEST_SELECTORS + 2)(%rbp)
	LOAD_SELECTOR fs, (HOST_GUEST_SELECTORS + 4)(%rbp)
	LOAD_SELECTOR gs, (HOST_GUEST_SELECTORS + 6)(%rbp)

	/*
	 * Only now, with no host code left to run, the guest's FS and GS bases (after the
	 * selectors, whose loads set bases of their own).
	 */
	WRMSR_FROM MSR_FS_BASE, HOST_GUEST_FS_BASE(%rbp)
	WRMSR_FROM MSR_GS_BASE, HOST_GUEST_GS_BASE(%rbp)

	/*
	 * The guest's address space. CR4 without PGE flushes the host's global TLB entries,
	 * which would otherwise survive the CR3 switch and let ring 1 read host memory; without
	 * SMAP, the guest kernel may reach its own user pages. The exit path puts the host's CR4
	 * back right after its CR3, before any host code runs.
	 */
	movq	HOST_GUEST_CR4(%rbp), %rax
	movq	HOST_GUEST_CR3(%rbp), %rbx
	movq	%rbx, %cr3
	movq	%rax, %cr4

	/* The guest's registers, then iretq to ring 1 (the host checked the frame). */
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	addq	$16, %rsp		/* vector and error code */
	iretq

/*
 * The way out. Every stub leaves the stack as [vector, error code, CPU frame] and jumps here.
 */
common_exit:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	cld

	BLOCK_FROM_GDT %rbx
	addq	$BLOCK_REGS, %rbx

	/*
	 * A trap from ring 0 is a fault inside the Switcher itself (its frame is on the regs page,
	 * but not at the top): note the vector plus one, so the host kills the guest instead of
	 * trusting the frame; note 0 otherwise. Written on every exit, so nothing the guest left
	 * in this (guest-writable) word survives.
	 */
	xorl	%eax, %eax
	testb	$3, F_CS(%rsp)
	jnz	1f
	movq	F_VECTOR(%rsp), %rax
	incq	%rax
1:
	movq	%rax, REGS_SWITCHER_FAULT(%rbx)
	/* The guest's data segment selectors, before the host's DS and ES come back. */
	movw	%ds, REGS_SELECTORS(%rbx)
	movw	%es, (REGS_SELECTORS + 2)(%rbx)
	movw	%fs, (REGS_SELECTORS + 4)(%rbx)
	movw	%gs, (REGS_SELECTORS + 6)(%rbx)
	RDMSR_TO MSR_FS_BASE, REGS_FS_BASE(%rbx)
	RDMSR_TO MSR_GS_BASE, REGS_GS_BASE(%rbx)
	/*
	 * CR2 only for a page fault: otherwise it holds the last fault anywhere on this CPU, maybe
	 * another process's, and this page is the guest's to read.
	 */
	xorl	%eax, %eax
	cmpq	$VECTOR_PAGE_FAULT, F_VECTOR(%rsp)
	jne	2f
	movq	%cr2, %rax
2:
	movq	%rax, REGS_CR2(%rbx)

	/* Back to the host's address space: the CR3 we parked on the way in. */
	movl	$MSR_KERNEL_GS_BASE, %ecx
	rdmsr
	shlq	$32, %rdx
	orq	%rdx, %rax
	movq	%rax, %cr3
	leaq	(BLOCK_HOST - BLOCK_REGS)(%rbx), %rbp
	movq	HOST_CR4(%rbp), %rax
	movq	%rax, %cr4

	/*
	 * The host's GS base before the host's IDT: from that lidt on, a host NMI handler may run,
	 * and it must find the kernel's per-CPU base. The host CR3 stays parked in
	 * KERNEL_GS_BASE until then, in case anything here faults into common_exit again.
	 */
	WRMSR_FROM MSR_GS_BASE, HOST_GS_BASE(%rbp)
	WRMSR_FROM MSR_FS_BASE, HOST_FS_BASE(%rbp)
	/* This CPU's number back in GDT entry 15, for the same host handlers. */
	movq	HOST_CPUNODE(%rbp), %rax
	movq	%rax, (BLOCK_STATE - BLOCK_REGS + STATE_GDT + GDT_CPUNODE)(%rbx)
	lidt	HOST_IDTR(%rbp)
	WRMSR_FROM MSR_KERNEL_GS_BASE, HOST_KERNEL_GS_BASE(%rbp)

	/* The host's TSS: through the writable GDT alias, since ltr sets the busy bit. */
	lgdt	HOST_GDTR_RW(%rbp)
	movq	(HOST_GDTR_RW + 2)(%rbp), %rax
	andb	$~TSS_BUSY, TSS_DESC_TYPE_BYTE(%rax)
	movw	$TSS_SELECTOR, %ax
	ltr	%ax
	lgdt	HOST_GDTR(%rbp)
	movw	HOST_DS(%rbp), %ax
	movw	%ax, %ds
	movw	HOST_ES(%rbp), %ax
	movw	%ax, %es

	movq	HOST_RSP(%rbp), %rsp
	popfq
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * The fast path for a user `syscall`, which is a #UD while a guest runs (EFER.SCE is off): when
 * the host armed it for this trip (the state page's STATE_FAST_*, which the guest can read but
 * not write), the system call is delivered here, in the guest's address space, and the guest
 * resumes at its handler without the host ever running. lg-module/src/fast_syscall.rs is the
 * same thing in Rust, tested against the host's slow path, and argues why nothing here can
 * fault: the frame's pages were checked writable and supervisor-only in the shadow before the
 * trip, the lguest_data page is mapped in this block, and the instruction bytes are the ones
 * the CPU has just fetched. Anything that is not an armed user `syscall` leaves like any trap,
 * with every register as it came.
 *
 * Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS; below them, six saved registers.
 */
/* PKRU's access-disable bit for protection key 0 */
#define PKRU_AD_KEY0	1
#define UD_SAVED	(6 * 8)
#define UD_RCX		(3 * 8)
#define UD_RIP		(UD_SAVED + 16)
#define UD_CS		(UD_SAVED + 24)
#define UD_RFLAGS	(UD_SAVED + 32)
#define UD_RSP		(UD_SAVED + 40)
#define UD_SS		(UD_SAVED + 48)
/* The six registers ud_exit works with, saved on entry and restored on either way out. */
.macro UD_RESTORE
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
.endm
ud_exit:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	/*
	 * From 64-bit user mode only: anything else is a fault of the guest kernel's, or of ours,
	 * and in compatibility mode `syscall` stays a #UD, as on Intel's CPUs.
	 */
	cmpq	$GUEST_USER_CS, UD_CS(%rsp)
	jne	ud_slow
	BLOCK_FROM_GDT %rbx
	cmpq	$0, (BLOCK_STATE + STATE_FAST_VECTOR)(%rbx)
	je	ud_slow

	/*
	 * The instruction, `0f 05`. Protection keys can forbid even the kernel to read a user
	 * page, and the guest chooses PKRU: if it denies access to key 0, the only key a shadow
	 * entry has, that bit is lifted for the read (%edi keeps the guest's PKRU, never 0 since
	 * its key-0 AD bit is set; 0 when nothing was changed, as with CR4.PKE off, where rdpkru
	 * and wrpkru do not exist). Only then: under
	 * TCG a wrpkru flushes the whole software TLB, and Linux's processes allow key 0. The
	 * second byte is read only after the first is 0x0f: a one-byte opcode may end the last
	 * mapped page.
	 */
	xorl	%edi, %edi
	movq	%cr4, %rax
	btq	$X86_CR4_PKE_BIT, %rax
	jnc	1f
	xorl	%ecx, %ecx
	rdpkru
	testl	$PKRU_AD_KEY0, %eax
	jz	1f
	movl	%eax, %edi
	andl	$~PKRU_AD_KEY0, %eax
	xorl	%edx, %edx
	wrpkru
1:
	xorl	%esi, %esi
	movq	UD_RIP(%rsp), %rax
	cmpb	$0x0f, (%rax)
	jne	2f
	cmpb	$0x05, 1(%rax)
	jne	2f
	incl	%esi
2:
	testl	%edi, %edi
	jz	3f
	movl	%edi, %eax
	xorl	%ecx, %ecx
	xorl	%edx, %edx
	wrpkru
3:
	testl	%esi, %esi
	jz	ud_slow
	/* syscall_vec, read once: still the vector the host armed? */
	movq	(BLOCK_DATA + DATA_SYSCALL_VEC)(%rbx), %rax
	cmpq	(BLOCK_STATE + STATE_FAST_VECTOR)(%rbx), %rax
	jne	ud_slow

	/*
	 * Deliver. The frame on the guest's kernel stack: RIP past the instruction, CS, RFLAGS
	 * with the virtual interrupt flag for IF, RSP, SS; RCX and R11 as SYSCALL sets them. The
	 * #UD saved RFLAGS with RF set; the instruction completes, so RF is clear from here on.
	 */
	movq	(BLOCK_STATE + STATE_FAST_FRAME)(%rbx), %rdx
	movq	UD_RIP(%rsp), %rax
	addq	$2, %rax
	movq	%rax, (%rdx)
	movq	%rax, UD_RCX(%rsp)
	movq	UD_CS(%rsp), %rax
	movq	%rax, 8(%rdx)
	movq	UD_RFLAGS(%rsp), %r11
	andq	$~X86_EFLAGS_RF, %r11
	movq	%r11, %rax
	andq	$~X86_EFLAGS_IF, %rax
	cmpq	$0, (BLOCK_DATA + DATA_IRQ_ENABLED)(%rbx)
	je	4f
	orq	$X86_EFLAGS_IF, %rax
4:
	movq	%rax, 16(%rdx)
	movq	UD_RSP(%rsp), %rax
	movq	%rax, 24(%rdx)
	movq	UD_SS(%rsp), %rax
	movq	%rax, 32(%rdx)
	/* An interrupt gate turns the virtual interrupt flag off. */
	cmpq	$0, (BLOCK_STATE + STATE_FAST_CLEARS_IF)(%rbx)
	je	5f
	movq	$0, (BLOCK_DATA + DATA_IRQ_ENABLED)(%rbx)
5:
	/*
	 * The CPU's frame becomes the way into the handler at ring 1, on the frame just written,
	 * with RFLAGS as SYSCALL leaves them for a kernel (interrupts::SYSCALL_FLAGS_MASK: TF, DF,
	 * IOPL, AC and NT clear) and as the host's check of every entry leaves them
	 * (traps::sane_rflags).
	 */
	movq	(BLOCK_STATE + STATE_FAST_HANDLER)(%rbx), %rax
	movq	%rax, UD_RIP(%rsp)
	movq	$GUEST_KERNEL_CS, UD_CS(%rsp)
	movq	%r11, %rax
	orq	$(X86_EFLAGS_FIXED | X86_EFLAGS_IF), %rax
	andq	$~(X86_EFLAGS_TF | X86_EFLAGS_DF | X86_EFLAGS_IOPL | X86_EFLAGS_NT | \
		X86_EFLAGS_VM | X86_EFLAGS_AC), %rax
	movq	%rax, UD_RFLAGS(%rsp)
	movq	%rdx, UD_RSP(%rsp)
	movq	$GUEST_KERNEL_SS, UD_SS(%rsp)
	UD_RESTORE
	addq	$16, %rsp		/* vector and error code */
	iretq

ud_slow:
	UD_RESTORE
	jmp	common_exit

/*
 * NMI, double fault and machine check arrive on IST stacks (block pages 9-11), so that they
 * have a good stack even in the middle of a switch. From the guest, their frame moves to the
 * regs page and they leave like any trap. From the Switcher itself, an NMI or machine check is
 * noted for the host to re-raise and the interrupted switch carries on; a double fault always
 * leaves (its frame moved too, so the exit path sees ring 0 in it and the guest dies).
 *
 * \pending is the MSR_TSC_AUX bit for "arrived inside the Switcher" (0 for the double fault,
 * which never resumes): a register, because memory the Switcher can write in the guest's
 * address space is memory the guest can write too, and the host must not re-raise an NMI or
 * machine check on the guest's say-so. Linux keeps only its CPU and node numbers in the low bits.
 */
.macro IST_EXIT pending
	/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
	.if \pending
	testb	$3, 24(%rsp)
	jz	2f
	.endif
	pushq	%rax
	pushq	%rbx
	BLOCK_FROM_GDT %rbx
	addq	$(BLOCK_REGS + REGS_FRAME + F_VECTOR), %rbx
	.irp word, 0, 1, 2, 3, 4, 5, 6
	movq	(16 + \word * 8)(%rsp), %rax
	movq	%rax, (\word * 8)(%rbx)
	.endr
	movq	%rbx, %rax
	popq	%rbx
	xchgq	%rax, (%rsp)		/* rax restored, its slot holds the new stack pointer */
	popq	%rsp
	jmp	common_exit
	.if \pending
2:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	movl	$MSR_TSC_AUX, %ecx
	rdmsr
	orl	$\pending, %eax
	wrmsr
	popq	%rdx
	popq	%rcx
	popq	%rax
	/*
	 * The Switcher was interrupted with host values in registers (the host CR3, the host GS
	 * base); what we pushed of them must not stay on a stack the guest can read.
	 */
	movq	$0, -8(%rsp)
	movq	$0, -16(%rsp)
	movq	$0, -24(%rsp)
	addq	$16, %rsp
	iretq
	.endif
.endm

nmi_exit:
	IST_EXIT AUX_NMI_PENDING
double_fault_exit:
	IST_EXIT 0
machine_check_exit:
	IST_EXIT AUX_MC_PENDING

/*
 * 256 stubs, 16 bytes apart, so the IDT's gate for vector n points to stubs + 16 * n. The CPU
 * pushes an error code for the exceptions in ERROR_CODE_VECTORS (8, 10-14, 17, 21, 29 and 30);
 * the other stubs push a zero so every frame has the same shape.
 */
	.balign 16
stubs:
	vector = 0
	.rept 256
	.if vector < 32
	error_code = (ERROR_CODE_VECTORS >> vector) & 1
	.else
	error_code = 0
	.endif
	.if !error_code
	pushq	$0
	.endif
	pushq	$vector
	.if vector == VECTOR_NMI
	jmp	nmi_exit
	.elseif vector == VECTOR_INVALID_OPCODE
	jmp	ud_exit
	.elseif vector == VECTOR_DOUBLE_FAULT
	jmp	double_fault_exit
	.elseif vector == VECTOR_MACHINE_CHECK
	jmp	machine_check_exit
	.else
	jmp	common_exit
	.endif
	.balign 16
	vector = vector + 1
	.endr

SYM_DATA_END_LABEL(lg_switcher_start, SYM_L_GLOBAL, lg_switcher_end)

/*
 * What lg.ko needs to know about the text above: where the entry and the stubs are, and where
 * the text ends (offsets from lg_switcher_start).
 */
	.section .rodata, "a"
	.balign 8
SYM_DATA_START(lg_switcher_offsets)
	.quad	switch_to_guest - lg_switcher_start
	.quad	stubs - lg_switcher_start
	.quad	lg_switcher_end - lg_switcher_start
SYM_DATA_END(lg_switcher_offsets)

/*
 * void lg_reraise(unsigned int vector): deliver an interrupt the guest's run took from the
 * host to the host's own handler, as if it had arrived now: `int $vector` through the host's
 * IDT. Called with interrupts off, right after the switch back. A table of 256 `int $n; ret`
 * entries, 8 bytes apart, because `int` takes only an immediate.
 */
	.text
SYM_FUNC_START(lg_reraise)
	movl	%edi, %eax
	andl	$0xff, %eax
	shll	$3, %eax
	leaq	reraise_table(%rip), %rdx
	addq	%rdx, %rax
	jmp	*%rax
	.balign 8
reraise_table:
	vector = 0
	.rept 256
	.balign 8
	int	$vector
	ret
	vector = vector + 1
	.endr
SYM_FUNC_END(lg_reraise)
