// thpsim lab: can a per-VMA-lock THP fault land between __split_vma()'s vma_adjust_trans_huge() and its
// vma_start_write()? (series v3 02/24 moved the PMD split to the top of __split_vma, before the VMA is
// write-locked; upstream splits after vma_start_write, so no fault can run on the VMA in between.)
//
// Each round maps a fresh 4 MiB MADV_HUGEPAGE region [b, b+4M) whose second PMD is faulted first (so the VMA has
// an anon_vma and its faults run under the per-VMA lock). Thread F write-faults b[0] (the first PMD is none: a
// THP fault, do_huge_pmd_anonymous_page); the main thread, a few microseconds later, splits the VMA at b+1M and
// b+1M+4K with madvise(MADV_NOHUGEPAGE), which changes VMA flags only and so never splits a PMD after the VMA
// split. If the THP fault installed its huge PMD after __split_vma's PMD check but before vma_start_write, the
// huge PMD [b, b+2M) straddles the new boundary: smaps then shows AnonHugePages in the 1 MiB VMA [b, b+1M).
//
// Usage: race_split_vma [ROUNDS] [MAX_DELAY_US]. Prints one line per hit and a summary; exit 0 when no round
// hit, 1 when one did, 2 on a setup error. Needs 2 CPUs. Part of thpsim (GPL-2.0 kernel interfaces only).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MB (1UL << 20)
#define PMD (2 * MB)

static char *volatile region;
static atomic_int go, done;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	sched_setaffinity(0, sizeof(s), &s);
}

static void *faulter(void *arg)
{
	int last = 0;
	(void)arg;
	pin(1);
	for (;;) {
		int g;
		while ((g = atomic_load(&go)) == last)
			;
		if (g < 0)
			return NULL;
		last = g;
		region[0] = 1;                          /* the THP fault on the none PMD [b, b+2M) */
		atomic_store(&done, g);
	}
}

/* Rss and AnonHugePages (kB) of the VMA [lo, hi); both -1 if there is no such VMA */
static void vma_kb(unsigned long lo, unsigned long hi, long *rss, long *ahp)
{
	char line[512];
	int in = 0;
	FILE *f = fopen("/proc/self/smaps", "r");
	*rss = *ahp = -1;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = (a == lo && b == hi);
			continue;
		}
		if (in)
			sscanf(line, "Rss: %ld kB", rss);
		if (in && sscanf(line, "AnonHugePages: %ld kB", ahp) == 1)
			break;
	}
	fclose(f);
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 2000;
	long max_delay = argc > 2 ? atol(argv[2]) : 200;
	long hits = 0, early = 0, late = 0;
	pthread_t t;

	setvbuf(stdout, NULL, _IONBF, 0);       /* a hit may be followed by a kernel BUG (CONFIG_DEBUG_VM) */
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
		fprintf(stderr, "race_split_vma: needs 2 CPUs (boot the guest with --cpus 2)\n");
		return 2;
	}
	pin(0);
	if (pthread_create(&t, NULL, faulter, NULL)) {
		fprintf(stderr, "race_split_vma: pthread_create failed\n");
		return 2;
	}
	for (long r = 1; r <= rounds; r++) {
		char *m = mmap(NULL, 8 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED) {
			fprintf(stderr, "race_split_vma: mmap: %s\n", strerror(errno));
			return 2;
		}
		char *b = (char *)(((uintptr_t)m + PMD - 1) & ~(PMD - 1));
		if (b > m)
			munmap(m, b - m);
		munmap(b + 4 * MB, m + 8 * MB - (b + 4 * MB));
		if (madvise(b, 4 * MB, MADV_HUGEPAGE)) {
			fprintf(stderr, "race_split_vma: MADV_HUGEPAGE: %s\n", strerror(errno));
			return 2;
		}
		b[PMD] = 1;                              /* the anon_vma, and the second PMD's THP */
		region = b;
		uint64_t delay = (uint64_t)(r % (max_delay + 1)) * 1000;
		atomic_store(&go, (int)r);
		uint64_t t0 = now_ns();
		while (now_ns() - t0 < delay)
			;
		if (madvise(b + MB, 4096, MADV_NOHUGEPAGE)) {
			fprintf(stderr, "race_split_vma: MADV_NOHUGEPAGE: %s\n", strerror(errno));
			return 2;
		}
		while (atomic_load(&done) != (int)r)
			;
		long rss, ahp;
		vma_kb((unsigned long)b, (unsigned long)b + MB, &rss, &ahp);
		if (ahp > 0) {
			hits++;
			printf("hit: round %ld, delay %lu us: the 1 MiB VMA [%p, +1M) shows AnonHugePages %ld kB "
			       "(a huge PMD straddles the VMA boundary at +1M)\n", r, (unsigned long)(delay / 1000),
			       (void *)b, ahp);
		} else if (rss >= 1024) {
			early++;        /* the THP came first and __split_vma split it */
		} else {
			late++;         /* the fault came after the VMA split: a 4 KiB page */
		}
		munmap(b, 4 * MB);
	}
	atomic_store(&go, -1);
	pthread_join(t, NULL);
	printf("race_split_vma: %ld rounds: %ld hits, %ld THP faults before the split, %ld faults after it "
	       "(delays 0..%ld us)\n", rounds, hits, early, late, max_delay);
	return hits ? 1 : 0;
}
