/* A CPU burner for the profile tests: spins in nettrace_spin_c (or, with
 * "syscalls", reads /dev/zero in nettrace_read_zero; with "sleep", spins
 * 500 ms and sleeps 500 ms with nanosleep in nettrace_sleep_c, in turn) for
 * argv[2] seconds. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void nettrace_spin_c(double until)
{
	while (now() < until)
		for (unsigned long i = 0; i < 1000000; i++)
			sink += i * i;
}

__attribute__((noinline)) void nettrace_read_zero(double until)
{
	static char buf[1 << 20];
	int fd = open("/dev/zero", O_RDONLY);

	while (now() < until)
		if (read(fd, buf, sizeof(buf)) < 0)
			exit(1);
}

__attribute__((noinline)) void nettrace_sleep_c(double until)
{
	struct timespec half = { 0, 500000000 };

	while (now() < until) {
		nettrace_spin_c(now() + 0.5);
		nanosleep(&half, NULL);
	}
}

int main(int argc, char **argv)
{
	double secs = argc > 2 ? atof(argv[2]) : 30;
	double until = now() + secs;

	if (argc > 1 && strcmp(argv[1], "syscalls") == 0)
		nettrace_read_zero(until);
	else if (argc > 1 && strcmp(argv[1], "sleep") == 0)
		nettrace_sleep_c(until);
	else
		nettrace_spin_c(until);
	return 0;
}
