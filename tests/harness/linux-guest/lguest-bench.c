// SPDX-License-Identifier: GPL-2.0
/*
 * lguest-bench: what the Linux guest's everyday operations cost, measured from its user space.
 *
 * The same static binary runs in the same guest image natively (QEMU's machine) and under lg.ko,
 * so the two sets of figures differ only by what the guest's kernel pays for being a guest: an
 * exit to the host for every system call (`syscall` is a #UD at ring 3 under lg.ko), a shadow
 * page table fill for every first touch of a page, a rebuilt lower half for every page-table
 * switch. ./lguest-dev bench sets them side by side (tests/harness/bench.sh).
 *
 * Each figure is printed as "bench <name> <value>": TSC cycles per operation, the median of
 * five timings, or MB/s for the disk and the network, round trips per second for the network's
 * round trips. The init script runs it as `lguest.run=bench`.
 *
 * Usage: lguest-bench [--peer ADDRESS] [DISK]. With DISK (the guest's scratch disk, /dev/vda),
 * its first 16 MiB are written over and read back for the disk figures: never name a disk that
 * holds anything. With --peer, the TCP figures: 8 MiB sent to the peer, as much received from
 * it, and one-byte round trips, over connections to ADDRESS (IPv4), where `lguest-e2e tcp-peer`
 * (tests/e2e/src/tcp_peer.rs) listens on the host's side of the guest's network card.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#define TIMINGS 5

static uint64_t cycles(void)
{
	unsigned int cpu;

	return __rdtscp(&cpu);
}

static double seconds(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec + now.tv_nsec / 1e9;
}

static void fail(const char *what)
{
	perror(what);
	exit(1);
}

static int by_value(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int by_rate(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Time `op` run `count` times, TIMINGS times over; print the median cycles per run. */
static void measure(const char *name, void (*op)(void), int count)
{
	uint64_t per_op[TIMINGS];
	int timing, i;

	op(); /* the first run pays for faulting everything in */
	for (timing = 0; timing < TIMINGS; timing++) {
		uint64_t start = cycles();

		for (i = 0; i < count; i++)
			op();
		per_op[timing] = (cycles() - start) / count;
	}
	qsort(per_op, TIMINGS, sizeof(per_op[0]), by_value);
	printf("bench %s %llu\n", name, (unsigned long long)per_op[TIMINGS / 2]);
	fflush(stdout);
}

/* A system call that does nothing but enter and leave the kernel. */
static void null_syscall(void)
{
	syscall(SYS_getppid);
}

static void reap(pid_t child)
{
	int status;

	if (child < 0)
		fail("fork");
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		fprintf(stderr, "lguest-bench: a child failed\n");
		exit(1);
	}
}

/* A process created and gone: its page tables copied, switched to, torn down. */
static void fork_exit(void)
{
	pid_t child = fork();

	if (child == 0)
		_exit(0);
	reap(child);
}

/* The same, with a new program in between: busybox's `true`, a new address space. */
static void fork_exec(void)
{
	pid_t child = fork();

	if (child == 0) {
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	reap(child);
}

static int ping[2], pong[2];

/* One byte there and back between two processes: two context switches. */
static void pipe_round_trip(void)
{
	char byte = 0;

	if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1)
		fail("pipe");
}

/* A fresh page: mapped, touched (a page fault), unmapped. */
static void page_fault(void)
{
	volatile char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (page == MAP_FAILED)
		fail("mmap");
	page[0] = 1;
	munmap((void *)page, 4096);
}

#define GZIP_INPUT "/tmp/lguest-bench.txt"
#define GZIP_BYTES (2 << 20)

/* busybox gzip over 2 MiB of text: a small job of user-space work, a process and its I/O. */
static void gzip_2mib(void)
{
	pid_t child = fork();

	if (child == 0) {
		int out = open("/dev/null", O_WRONLY);

		if (out < 0 || dup2(out, 1) < 0)
			_exit(126);
		execl("/bin/gzip", "gzip", "-c", GZIP_INPUT, (char *)NULL);
		_exit(127);
	}
	reap(child);
}

/* Words from a fixed pseudo-random sequence: text gzip has work to do on. */
static void write_gzip_input(void)
{
	static const char *const words[] = {
		"the ", "guest ", "kernel ", "runs ", "at ", "ring ", "one ",
		"and ", "asks ", "the ", "host ", "for ", "what ", "it ", "may ",
		"not ", "do ", "itself\n",
	};
	FILE *out = fopen(GZIP_INPUT, "w");
	uint32_t state = 1;
	long written = 0;

	if (!out)
		fail(GZIP_INPUT);
	while (written < GZIP_BYTES) {
		const char *word;

		state = state * 1103515245 + 12345;
		word = words[(state >> 16) % (sizeof(words) / sizeof(words[0]))];
		if (fputs(word, out) < 0)
			fail(GZIP_INPUT);
		written += strlen(word);
	}
	if (fclose(out))
		fail(GZIP_INPUT);
}

#define DISK_CHUNK (256 << 10)
#define DISK_BYTES (16 << 20)

/* Sequential direct I/O over the first 16 MiB of the disk, one way; MB/s. */
static double disk_mbps(const char *disk, int writing)
{
	int fd = open(disk, (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
	void *buffer;
	double start;
	long done;

	if (fd < 0)
		fail(disk);
	if (posix_memalign(&buffer, 4096, DISK_CHUNK))
		fail("posix_memalign");
	memset(buffer, 0x5a, DISK_CHUNK);
	start = seconds();
	for (done = 0; done < DISK_BYTES; done += DISK_CHUNK) {
		ssize_t moved = writing ? write(fd, buffer, DISK_CHUNK) :
					  read(fd, buffer, DISK_CHUNK);

		if (moved != DISK_CHUNK)
			fail(disk);
	}
	if (writing && fsync(fd))
		fail(disk);
	close(fd);
	free(buffer);
	return DISK_BYTES / (seconds() - start) / 1e6;
}

static void disk_bench(const char *disk)
{
	double mbps[TIMINGS];
	int way, timing;

	for (way = 1; way >= 0; way--) {
		for (timing = 0; timing < TIMINGS; timing++)
			mbps[timing] = disk_mbps(disk, way);
		qsort(mbps, TIMINGS, sizeof(mbps[0]), by_rate);
		printf("bench blk-%s-mbps %.0f\n", way ? "write" : "read",
		       mbps[TIMINGS / 2]);
		fflush(stdout);
	}
}

/* The port, and the requests, of tests/e2e/src/tcp_peer.rs. */
#define TCP_PORT 5001
#define TCP_SINK 's'
#define TCP_SOURCE 'r'
#define TCP_ECHO 'e'
#define TCP_CHUNK (64 << 10)
#define TCP_BYTES (8 << 20)
#define TCP_ROUND_TRIPS 200

static void write_all(int fd, const void *bytes, size_t count, const char *what)
{
	const char *next = bytes;

	while (count) {
		ssize_t done = write(fd, next, count);

		if (done <= 0)
			fail(what);
		next += done;
		count -= done;
	}
}

/* A connection to the peer for `request`, the request sent; Nagle off, as the peer has it. */
static int tcp_connect(struct sockaddr_in *peer, char request)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	if (fd < 0)
		fail("socket");
	if (connect(fd, (struct sockaddr *)peer, sizeof(*peer)))
		fail("connect to the TCP peer");
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
		fail("TCP_NODELAY");
	write_all(fd, &request, 1, "send the request");
	return fd;
}

/* TCP_BYTES to the peer, until it says it has them all; MB/s. */
static double tcp_send_mbps(struct sockaddr_in *peer)
{
	static char chunk[TCP_CHUNK];
	double start = seconds();
	int fd = tcp_connect(peer, TCP_SINK);
	uint64_t got = 0;
	long sent;

	for (sent = 0; sent < TCP_BYTES; sent += TCP_CHUNK)
		write_all(fd, chunk, TCP_CHUNK, "send to the TCP peer");
	if (shutdown(fd, SHUT_WR))
		fail("shutdown");
	if (read(fd, &got, sizeof(got)) != sizeof(got))
		fail("read the TCP peer's count");
	if (got != TCP_BYTES) {
		fprintf(stderr, "lguest-bench: sent %d bytes, the peer read %llu\n", TCP_BYTES,
			(unsigned long long)got);
		exit(1);
	}
	close(fd);
	return TCP_BYTES / (seconds() - start) / 1e6;
}

/* TCP_BYTES from the peer, to the end of the stream; MB/s. */
static double tcp_receive_mbps(struct sockaddr_in *peer)
{
	static char chunk[TCP_CHUNK];
	double start = seconds();
	int fd = tcp_connect(peer, TCP_SOURCE);
	uint32_t count = TCP_BYTES; /* little-endian, as x86 has it */
	long received = 0;
	ssize_t moved;

	write_all(fd, &count, sizeof(count), "send the count");
	while ((moved = read(fd, chunk, TCP_CHUNK)) > 0)
		received += moved;
	if (moved < 0)
		fail("receive from the TCP peer");
	if (received != TCP_BYTES) {
		fprintf(stderr, "lguest-bench: asked for %d bytes, received %ld\n", TCP_BYTES,
			received);
		exit(1);
	}
	close(fd);
	return TCP_BYTES / (seconds() - start) / 1e6;
}

/* TCP_ROUND_TRIPS bytes, each sent to the echo and read back before the next; per second. */
static double tcp_round_trips(int fd)
{
	double start = seconds();
	char byte = 0;
	int trip;

	for (trip = 0; trip < TCP_ROUND_TRIPS; trip++) {
		write_all(fd, &byte, 1, "send to the echo");
		if (read(fd, &byte, 1) != 1)
			fail("read from the echo");
	}
	return TCP_ROUND_TRIPS / (seconds() - start);
}

/*
 * To a hundredth: under lg.ko a TCP figure can be below 1 MB/s, where a whole number would say
 * nothing.
 */
static void print_median(const char *name, double *figures)
{
	qsort(figures, TIMINGS, sizeof(figures[0]), by_rate);
	printf("bench %s %.2f\n", name, figures[TIMINGS / 2]);
	fflush(stdout);
}

static void tcp_bench(const char *address)
{
	struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(TCP_PORT) };
	double figures[TIMINGS];
	int timing, echo;

	if (inet_pton(AF_INET, address, &peer.sin_addr) != 1) {
		fprintf(stderr, "lguest-bench: '%s' is not an IPv4 address\n", address);
		exit(1);
	}
	for (timing = 0; timing < TIMINGS; timing++)
		figures[timing] = tcp_send_mbps(&peer);
	print_median("tcp-send-mbps", figures);
	for (timing = 0; timing < TIMINGS; timing++)
		figures[timing] = tcp_receive_mbps(&peer);
	print_median("tcp-receive-mbps", figures);
	/* One connection for all the timings: a round trip, not a handshake, is what is timed. */
	echo = tcp_connect(&peer, TCP_ECHO);
	for (timing = 0; timing < TIMINGS; timing++)
		figures[timing] = tcp_round_trips(echo);
	close(echo);
	print_median("tcp-round-trips-per-s", figures);
}

int main(int argc, char **argv)
{
	const char *peer = NULL;
	pid_t echo;

	if (argc > 2 && !strcmp(argv[1], "--peer")) {
		peer = argv[2];
		argv += 2;
		argc -= 2;
	}
	if (argc > 2) {
		fprintf(stderr, "usage: lguest-bench [--peer ADDRESS] [DISK]\n");
		return 2;
	}

	measure("null-syscall", null_syscall, 2000);
	measure("fork-exit", fork_exit, 20);
	measure("fork-exec", fork_exec, 10);

	if (pipe(ping) || pipe(pong))
		fail("pipe");
	echo = fork();
	if (echo == 0) {
		char byte;

		close(ping[1]);
		close(pong[0]);
		while (read(ping[0], &byte, 1) == 1)
			if (write(pong[1], &byte, 1) != 1)
				_exit(1);
		_exit(0);
	}
	if (echo < 0)
		fail("fork");
	close(ping[0]);
	close(pong[1]);
	measure("pipe-round-trip", pipe_round_trip, 200);
	close(ping[1]);
	reap(echo);

	measure("page-fault", page_fault, 200);
	write_gzip_input();
	measure("gzip-2mib", gzip_2mib, 1);
	unlink(GZIP_INPUT);
	if (argc > 1)
		disk_bench(argv[1]);
	if (peer)
		tcp_bench(peer);
	printf("bench done\n");
	return 0;
}
