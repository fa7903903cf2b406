/*
 * memwork: the Linux guest's memory under load, for the scenarios of tests/e2e/src/scenarios/
 * linux_load.rs. Built static by build-linux-rootfs.sh into the guest's initramfs as
 * /bin/memwork; busybox has nothing that fills RAM and checks every word of it, or that forks
 * processes which check their copy-on-write pages and their protections.
 *
 * Everything here is what a guest's shadow page tables must get right (chapter 7): a page
 * mapped where the guest's tables say and nowhere else, copy-on-write broken where Linux
 * breaks it, a write refused once mprotect took write away, an access refused once munmap
 * took the page. A host that kept a stale shadow entry, or gave two guest pages one host page,
 * shows up as a wrong word or an access that should have faulted and did not.
 *
 *   memwork fill MIB       map MIB MiB, write every word twice (a pattern, then its
 *                          complement), and check each word after each pass
 *   memwork storm N WIDTH  N processes, WIDTH at a time, each checking its copy-on-write
 *                          copy of its parent's buffer and its own mmap/mprotect/munmap;
 *                          every fourth one execs this program first
 *   memwork hog            take memory a MiB at a time until the OOM killer ends it
 *   memwork isolate MINE_MASKED MINE_MASK OTHER_MASKED OTHER_MASK MIB
 *                          write a marker (MINE_MASKED xor MINE_MASK, 16 bytes in hex) at the
 *                          start of every page of MIB MiB, say so, wait for a line on stdin,
 *                          then count in all of the guest's RAM (/proc/kcore) the marker and
 *                          the other guest's (OTHER_MASKED xor OTHER_MASK). The other's marker
 *                          is compared through its mask and never written whole: if it is found
 *                          in this guest's RAM, it came from outside.
 *
 * Each command prints one line saying what it checked, or a line saying what went wrong and
 * exits 1 (2 for a command line it does not understand).
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL
#define MIB (1UL << 20)
#define MARKER_BYTES 16

static void fail(const char *format, ...)
{
	va_list args;

	va_start(args, format);
	fputs("memwork: ", stdout);
	vprintf(format, args);
	putchar('\n');
	va_end(args);
	exit(1);
}

static void usage(void)
{
	fputs("usage: memwork fill MIB | storm N WIDTH | hog | "
	      "isolate MINE_MASKED MINE_MASK OTHER_MASKED OTHER_MASK MIB\n", stderr);
	exit(2);
}

static unsigned long number(const char *text)
{
	char *end;
	unsigned long n = strtoul(text, &end, 10);

	if (*text == '\0' || *end != '\0' || n == 0)
		usage();
	return n;
}

static void *map(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		fail("mmap of %zu bytes: %s", bytes, strerror(errno));
	return p;
}

/* The word at index i of a buffer in generation `gen`: distinct for every word and generation,
 * so a word seen at the wrong place, or from another generation, never matches. */
static uint64_t word(uint64_t gen, size_t i)
{
	return (i + 1) * 0x9e3779b97f4a7c15ULL ^ gen * 0xbf58476d1ce4e5b9ULL;
}

static void write_words(uint64_t *p, size_t words, uint64_t gen)
{
	for (size_t i = 0; i < words; i++)
		p[i] = word(gen, i);
}

/* The index of the first word that is not generation `gen`'s, or `words` if all are. */
static size_t first_wrong(const uint64_t *p, size_t words, uint64_t gen)
{
	for (size_t i = 0; i < words; i++)
		if (p[i] != word(gen, i))
			return i;
	return words;
}

static void check_words(const char *what, const uint64_t *p, size_t words, uint64_t gen)
{
	size_t i = first_wrong(p, words, gen);

	if (i != words)
		fail("%s: word %zu (page %zu) is %#llx, expected %#llx", what, i, i * 8 / PAGE,
		     (unsigned long long)p[i], (unsigned long long)word(gen, i));
}

static int fill(unsigned long mib)
{
	size_t words = mib * MIB / 8;
	uint64_t *p = map(mib * MIB);
	uint64_t gen = (uint64_t)getpid() << 32;

	write_words(p, words, gen);
	check_words("fill, first pass", p, words, gen);
	/* The complement, every word changed: a page that two addresses shared would now hold
	 * the later of two writes at one of them. */
	for (size_t i = 0; i < words; i++)
		p[i] = ~p[i];
	for (size_t i = 0; i < words; i++)
		if (p[i] != ~word(gen, i))
			fail("fill, second pass: word %zu (page %zu) is %#llx, expected %#llx", i,
			     i * 8 / PAGE, (unsigned long long)p[i],
			     (unsigned long long)~word(gen, i));
	printf("fill %lu MiB verified\n", mib);
	return 0;
}

/* --- Faults that must happen --- */

static sigjmp_buf fault_jump;

static void on_fault(int sig)
{
	(void)sig;
	siglongjmp(fault_jump, 1);
}

/* Whether reading (or writing, if `write`) the byte at `p` faults. */
static int faults(volatile char *p, int write)
{
	struct sigaction action = { .sa_handler = on_fault };
	int faulted;

	sigemptyset(&action.sa_mask);
	sigaction(SIGSEGV, &action, NULL);
	faulted = sigsetjmp(fault_jump, 1);
	if (!faulted) {
		if (write)
			*p = 1;
		else
			(void)*p;
	}
	signal(SIGSEGV, SIG_DFL);
	return faulted;
}

/* A process's own memory, mapped, protected and unmapped: what each process of the storm does,
 * exec'd or not. `id` makes its words its own. The second round's mapping most likely lands
 * where the first's was: a shadow entry left from the first would show the first's words. */
static void own_memory(uint64_t id)
{
	const size_t pages = 4, words = pages * PAGE / 8;

	for (int round = 0; round < 2; round++) {
		uint64_t gen = id << 8 | (uint64_t)round << 1;
		char *p = map(pages * PAGE);

		write_words((uint64_t *)p, words, gen);
		check_words("own pages", (uint64_t *)p, words, gen);
		if (mprotect(p, pages * PAGE, PROT_READ))
			fail("mprotect read-only: %s", strerror(errno));
		check_words("own pages read-only", (uint64_t *)p, words, gen);
		if (!faults(p + PAGE, 1))
			fail("a write to a page mprotect made read-only did not fault");
		if (mprotect(p + pages / 2 * PAGE, pages / 2 * PAGE, PROT_NONE))
			fail("mprotect none: %s", strerror(errno));
		if (!faults(p + (pages - 1) * PAGE, 0))
			fail("a read of a page mprotect made inaccessible did not fault");
		if (mprotect(p, pages * PAGE, PROT_READ | PROT_WRITE))
			fail("mprotect read-write: %s", strerror(errno));
		check_words("own pages made writable again", (uint64_t *)p, words, gen);
		write_words((uint64_t *)p, words, gen | 1);
		check_words("own pages rewritten", (uint64_t *)p, words, gen | 1);
		if (munmap(p, pages * PAGE))
			fail("munmap: %s", strerror(errno));
		if (!faults(p + 2 * PAGE, 0))
			fail("a read of an unmapped page did not fault");
	}
}

/* The buffer a storm's parent shares, copy-on-write, with each child it forks. */
#define SHARED_PAGES 8
#define SHARED_WORDS (SHARED_PAGES * PAGE / 8)
#define EXEC_EVERY 4

/* One child of the storm: its copy of the parent's buffer is generation `seen`, whatever the
 * parent writes meanwhile; what it writes there stays its own. */
static void storm_child(uint64_t *shared, uint64_t seen, uint64_t id)
{
	char number_text[24];

	check_words("a child's copy-on-write copy", shared, SHARED_WORDS, seen);
	write_words(shared, SHARED_WORDS, 1000000 + id);
	sched_yield();
	check_words("a child's own copy after its write", shared, SHARED_WORDS, 1000000 + id);
	if (id % EXEC_EVERY == 0) {
		snprintf(number_text, sizeof(number_text), "%llu", (unsigned long long)id);
		execl("/proc/self/exe", "memwork", "exec-child", number_text, (char *)NULL);
		fail("exec of /proc/self/exe: %s", strerror(errno));
	}
	own_memory(id);
	exit(0);
}

static int storm(unsigned long n, unsigned long width)
{
	uint64_t *shared = map(SHARED_PAGES * PAGE);
	uint64_t gen = 1;
	unsigned long started = 0, execs = 0;

	write_words(shared, SHARED_WORDS, gen);
	while (started < n) {
		unsigned long batch = 0;

		for (; batch < width && started < n; batch++, started++) {
			pid_t pid = fork();

			if (pid < 0)
				fail("fork: %s", strerror(errno));
			if (pid == 0)
				storm_child(shared, gen, started);
			if (started % EXEC_EVERY == 0)
				execs++;
		}
		/* The parent's write breaks copy-on-write on its side while the children check
		 * theirs. */
		gen++;
		write_words(shared, SHARED_WORDS, gen);
		for (; batch > 0; batch--) {
			int status;

			if (wait(&status) < 0)
				fail("wait: %s", strerror(errno));
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
				fail("a child ended with status %#x after %lu processes", status,
				     started);
		}
		check_words("the parent's buffer after its children", shared, SHARED_WORDS, gen);
	}
	printf("storm %lu processes, %lu exec'd: copy-on-write, mprotect and munmap checked\n", n,
	       execs);
	return 0;
}

static int hog(void)
{
	struct sysinfo info;
	unsigned long taken = 0, most;

	if (sysinfo(&info))
		fail("sysinfo: %s", strerror(errno));
	most = 4 * info.totalram * info.mem_unit / MIB;
	for (; taken < most; taken++) {
		char *p = map(MIB);

		for (size_t off = 0; off < MIB; off += PAGE)
			p[off] = 1;
	}
	fail("hog: took %lu MiB, four times the guest's RAM, and was never killed", taken);
	return 1;
}

/* --- Markers --- */

static void hex_bytes(const char *text, unsigned char out[MARKER_BYTES])
{
	if (strlen(text) != 2 * MARKER_BYTES)
		usage();
	for (int i = 0; i < MARKER_BYTES; i++)
		if (sscanf(text + 2 * i, "%2hhx", &out[i]) != 1)
			usage();
}

/* A marker kept as two halves, `masked` and `mask`, whose xor is the marker. */
struct marker {
	unsigned char masked[MARKER_BYTES], mask[MARKER_BYTES];
	unsigned long found;
};

static int marker_at(const struct marker *m, const unsigned char *p)
{
	for (int i = 0; i < MARKER_BYTES; i++)
		if ((p[i] ^ m->mask[i]) != m->masked[i])
			return 0;
	return 1;
}

/* The direct map, where /proc/kcore shows RAM: between page_offset_base (4-level paging,
 * no KASLR) and the vmalloc area. */
#define DIRECT_MAP_START 0xffff888000000000ULL
#define DIRECT_MAP_END 0xffffc90000000000ULL
#define CHUNK MIB

/* Counts both markers in every RAM segment of /proc/kcore; returns the bytes scanned. */
static unsigned long scan_ram(struct marker *markers, int count)
{
	int fd = open("/proc/kcore", O_RDONLY);
	Elf64_Ehdr header;
	unsigned long scanned = 0;
	unsigned char *buf = map(CHUNK + MARKER_BYTES);

	if (fd < 0)
		fail("open /proc/kcore: %s", strerror(errno));
	if (pread(fd, &header, sizeof(header), 0) != sizeof(header) ||
	    memcmp(header.e_ident, ELFMAG, SELFMAG))
		fail("/proc/kcore has no ELF header");
	for (int i = 0; i < header.e_phnum; i++) {
		Elf64_Phdr ph;
		size_t carried = 0;

		if (pread(fd, &ph, sizeof(ph), header.e_phoff + i * sizeof(ph)) != sizeof(ph))
			fail("/proc/kcore: program header %d: %s", i, strerror(errno));
		if (ph.p_type != PT_LOAD || ph.p_vaddr < DIRECT_MAP_START ||
		    ph.p_vaddr >= DIRECT_MAP_END)
			continue;
		for (uint64_t off = 0; off < ph.p_filesz; off += CHUNK) {
			size_t want = ph.p_filesz - off < CHUNK ? ph.p_filesz - off : CHUNK;
			ssize_t got = pread(fd, buf + carried, want, ph.p_offset + off);
			size_t have;

			if (got != (ssize_t)want)
				fail("/proc/kcore: reading RAM at %#llx: %s",
				     (unsigned long long)(ph.p_vaddr + off),
				     got < 0 ? strerror(errno) : "short read");
			have = carried + want;
			for (size_t at = 0; at + MARKER_BYTES <= have; at++)
				for (int m = 0; m < count; m++)
					if ((buf[at] ^ markers[m].mask[0]) == markers[m].masked[0] &&
					    marker_at(&markers[m], buf + at))
						markers[m].found++;
			/* A marker may straddle two chunks: keep the last bytes for the next. */
			carried = have < MARKER_BYTES - 1 ? have : MARKER_BYTES - 1;
			memmove(buf, buf + have - carried, carried);
			scanned += want;
		}
	}
	close(fd);
	return scanned;
}

static int isolate(char **argv)
{
	struct marker markers[2] = { 0 };
	unsigned long mib = number(argv[4]);
	unsigned char *marked, mine[MARKER_BYTES];
	char line[16];
	unsigned long scanned;

	hex_bytes(argv[0], markers[0].masked);
	hex_bytes(argv[1], markers[0].mask);
	hex_bytes(argv[2], markers[1].masked);
	hex_bytes(argv[3], markers[1].mask);
	for (int i = 0; i < MARKER_BYTES; i++)
		mine[i] = markers[0].masked[i] ^ markers[0].mask[i];
	marked = map(mib * MIB);
	for (size_t off = 0; off < mib * MIB; off += PAGE)
		memcpy(marked + off, mine, MARKER_BYTES);
	printf("isolate: marked %lu pages\n", mib * MIB / PAGE);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		fail("isolate: stdin ended before the line that starts the scan");
	scanned = scan_ram(markers, 2);
	/* The marked pages are still there: the scan found them while they were. */
	if (marked[0] != mine[0])
		fail("isolate: the marked pages changed during the scan");
	printf("isolate: scanned %lu MiB, own marker %lu times, the other's %lu times\n",
	       scanned / MIB, markers[0].found, markers[1].found);
	return 0;
}

int main(int argc, char **argv)
{
	/* Line by line even into a pipe: a child's output must not sit in a buffer it copied. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 3 && !strcmp(argv[1], "fill"))
		return fill(number(argv[2]));
	if (argc == 4 && !strcmp(argv[1], "storm"))
		return storm(number(argv[2]), number(argv[3]));
	if (argc == 2 && !strcmp(argv[1], "hog"))
		return hog();
	if (argc == 7 && !strcmp(argv[1], "isolate"))
		return isolate(argv + 2);
	/* A storm's child after its exec: a new image, with memory of its own to check. */
	if (argc == 3 && !strcmp(argv[1], "exec-child")) {
		own_memory(strtoull(argv[2], NULL, 10));
		return 0;
	}
	usage();
	return 2;
}
