/*
 * mpitest: a small MPI program for sifrun's MPI tests and benchmark.
 *
 *   mpitest allreduce       sum of ranks (and a vector) checked on every rank
 *   mpitest ring            a token passed once around all ranks, checked
 *   mpitest pingpong [-r N] ranks 0 and 1: 8 B latency and 1 MiB bandwidth,
 *                           medians over N repetitions (default 31), one
 *                           JSON line on stdout from rank 0
 *   mpitest shm             Open MPI only: proves that ranks on one node talk
 *                           through the vader shared-memory BTL (see shm())
 *
 * Every subcommand prints one line per rank ("rank R of N on HOST <test> ok",
 * or the JSON line for pingpong) and exits non-zero on every rank when any
 * rank saw a wrong result, so a failure cannot hide behind one good rank.
 *
 * Built inside the test images (tests/mpi/ via ci/build-mpi-images) with
 * the image's mpicc, and on the host with mpicc.openmpi / mpicc.mpich for the
 * inside-vs-outside benchmark. Plain C99 + POSIX, no other dependencies.
 */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int rank, size;
static char host[MPI_MAX_PROCESSOR_NAME];

/* Combine every rank's verdict: returns the process exit status (0 only when
 * all ranks passed). Collective: every rank must call it. */
static int verdict(int local_ok, const char *test)
{
    int all_ok = 0;
    MPI_Allreduce(&local_ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (local_ok)
        printf("rank %d of %d on %s %s ok\n", rank, size, host, test);
    else
        printf("rank %d of %d on %s %s FAILED\n", rank, size, host, test);
    fflush(stdout);
    return all_ok ? 0 : 1;
}

static int allreduce(void)
{
    /* Scalar: sum of ranks 0..n-1 is n(n-1)/2. */
    long mine = rank, sum = -1;
    long expect = (long)size * (size - 1) / 2;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    int ok = (sum == expect);
    if (!ok)
        fprintf(stderr, "rank %d: allreduce sum %ld, expected %ld\n", rank, sum, expect);

    /* Vector (64 KiB): element i is rank + i on every rank, so the sum is
     * n*i + n(n-1)/2. Exercises a multi-fragment message, not just an eager
     * scalar. */
    enum { LEN = 8192 };
    static long in[LEN], out[LEN];
    for (long i = 0; i < LEN; i++)
        in[i] = rank + i;
    MPI_Allreduce(in, out, LEN, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    for (long i = 0; i < LEN; i++) {
        if (out[i] != size * i + expect) {
            fprintf(stderr, "rank %d: allreduce element %ld is %ld, expected %ld\n",
                    rank, i, out[i], size * i + expect);
            ok = 0;
            break;
        }
    }
    return verdict(ok, "allreduce");
}

/* Rank 0 starts a token at 0; every rank checks that it holds the sum of the
 * ranks before it, adds its own rank and passes it on. Back at rank 0 the
 * token must be n(n-1)/2; rank 0 then broadcasts what it got so every rank
 * knows the whole lap was right. */
static int ring(void)
{
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    long token = 0, expect_here = (long)rank * (rank - 1) / 2;
    long total = (long)size * (size - 1) / 2;
    int ok = 1;

    if (size == 1) {
        token = 0;
    } else if (rank == 0) {
        MPI_Send(&token, 1, MPI_LONG, next, 0, MPI_COMM_WORLD);
        MPI_Recv(&token, 1, MPI_LONG, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
        MPI_Recv(&token, 1, MPI_LONG, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (token != expect_here) {
            fprintf(stderr, "rank %d: ring token %ld, expected %ld\n", rank, token, expect_here);
            ok = 0;
        }
        token += rank;
        MPI_Send(&token, 1, MPI_LONG, next, 0, MPI_COMM_WORLD);
    }
    MPI_Bcast(&token, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    if (token != total) {
        if (rank == 0)
            fprintf(stderr, "ring: token came back as %ld, expected %ld\n", token, total);
        ok = 0;
    }
    return verdict(ok, "ring");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Time `iters` round trips of `len` bytes between ranks 0 and 1 of `pair`;
 * returns the elapsed seconds on rank 0 (0 on rank 1). Rank 0 stamps each
 * message with the iteration number and rank 1 increments the first byte, so
 * rank 0 can check every reply: a transport that lost, stale-read or
 * reordered data fails the run. */
static double roundtrips(MPI_Comm pair, unsigned char *buf, int len, int iters, int *ok)
{
    int me;
    MPI_Comm_rank(pair, &me);
    MPI_Barrier(pair);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (me == 0) {
            buf[0] = (unsigned char)i;
            buf[len - 1] = (unsigned char)(i ^ 0x5a);
            MPI_Send(buf, len, MPI_BYTE, 1, 1, pair);
            MPI_Recv(buf, len, MPI_BYTE, 1, 1, pair, MPI_STATUS_IGNORE);
            if (buf[0] != (unsigned char)(i + 1) || buf[len - 1] != (unsigned char)(i ^ 0x5a))
                *ok = 0;
        } else {
            MPI_Recv(buf, len, MPI_BYTE, 0, 1, pair, MPI_STATUS_IGNORE);
            buf[0]++;
            MPI_Send(buf, len, MPI_BYTE, 0, 1, pair);
        }
    }
    return me == 0 ? MPI_Wtime() - t0 : 0;
}

static int pingpong(int reps)
{
    enum { SMALL = 8, LARGE = 1 << 20, SMALL_ITERS = 1000, LARGE_ITERS = 50 };
    int ok = 1;
    if (size < 2) {
        if (rank == 0)
            fprintf(stderr, "pingpong needs at least 2 ranks\n");
        return 2;
    }
    /* Ranks other than 0 and 1 take no part; a communicator of just the two
     * keeps the barriers in roundtrips() between them. */
    MPI_Comm pair;
    MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : MPI_UNDEFINED, rank, &pair);
    char peer_host[MPI_MAX_PROCESSOR_NAME] = "";
    if (rank < 2) {
        MPI_Sendrecv(host, sizeof host, MPI_CHAR, 1 - rank, 2, peer_host, sizeof peer_host,
                     MPI_CHAR, 1 - rank, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        unsigned char *buf = calloc(LARGE, 1);
        double *lat = calloc(reps, sizeof *lat), *bw = calloc(reps, sizeof *bw);
        if (!buf || !lat || !bw) {
            fprintf(stderr, "rank %d: out of memory\n", rank);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        /* Warm up: connection setup, registration caches, page faults. */
        roundtrips(pair, buf, SMALL, 100, &ok);
        roundtrips(pair, buf, LARGE, 5, &ok);
        for (int r = 0; r < reps; r++) {
            double t = roundtrips(pair, buf, SMALL, SMALL_ITERS, &ok);
            lat[r] = t / (2.0 * SMALL_ITERS) * 1e6; /* one-way, microseconds */
            t = roundtrips(pair, buf, LARGE, LARGE_ITERS, &ok);
            bw[r] = t > 0 ? 2.0 * LARGE_ITERS * LARGE / t / 1e6 : 0; /* MB/s (10^6 B/s) */
        }
        if (rank == 0) {
            char version[MPI_MAX_LIBRARY_VERSION_STRING];
            int vlen;
            MPI_Get_library_version(version, &vlen);
            version[strcspn(version, "\n,\"\\")] = '\0'; /* first line, JSON-safe */
            for (char *c = version; *c; c++)
                if ((unsigned char)*c < 0x20)
                    *c = ' '; /* MPICH separates with a tab */
            /* median() sorts, so afterwards [0] is the minimum latency and
             * [reps - 1] the maximum bandwidth. */
            double lat_median = median(lat, reps), bw_median = median(bw, reps);
            printf("{\"test\":\"pingpong\",\"ok\":%s,\"ranks\":%d,\"host0\":\"%s\",\"host1\":\"%s\","
                   "\"same_node\":%s,\"reps\":%d,\"latency_bytes\":%d,\"latency_iters\":%d,"
                   "\"latency_us_median\":%.3f,\"latency_us_min\":%.3f,"
                   "\"bandwidth_bytes\":%d,\"bandwidth_iters\":%d,"
                   "\"bandwidth_MBps_median\":%.1f,\"bandwidth_MBps_max\":%.1f,\"mpi\":\"%s\"}\n",
                   ok ? "true" : "false", size, host, peer_host,
                   strcmp(host, peer_host) == 0 ? "true" : "false", reps, SMALL, SMALL_ITERS,
                   lat_median, lat[0], LARGE, LARGE_ITERS, bw_median, bw[reps - 1], version);
            fflush(stdout);
        }
        free(buf);
        free(lat);
        free(bw);
        MPI_Comm_free(&pair);
    }
    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (!ok)
        fprintf(stderr, "rank %d: pingpong data check failed\n", rank);
    return all_ok ? 0 : 1;
}

#ifdef OPEN_MPI
/* Current value of an enum-typed MPI_T control variable as its name (for
 * example "cma"), or "?" when it cannot be read. */
static void cvar_enum_value(const char *name, char *out, int outlen)
{
    int provided, index, value, count, items, item_value, len;
    MPI_Datatype dtype;
    MPI_T_enum etype = MPI_T_ENUM_NULL;
    MPI_T_cvar_handle handle;
    char ename[64];

    snprintf(out, outlen, "?");
    if (MPI_T_init_thread(MPI_THREAD_SINGLE, &provided) != MPI_SUCCESS)
        return;
    if (MPI_T_cvar_get_index(name, &index) == MPI_SUCCESS &&
        MPI_T_cvar_get_info(index, NULL, NULL, NULL, &dtype, &etype, NULL, NULL, NULL, NULL) ==
            MPI_SUCCESS &&
        dtype == MPI_INT && etype != MPI_T_ENUM_NULL &&
        MPI_T_cvar_handle_alloc(index, NULL, &handle, &count) == MPI_SUCCESS) {
        if (MPI_T_cvar_read(handle, &value) == MPI_SUCCESS) {
            snprintf(out, outlen, "%d", value); /* unless the enum names it */
            len = sizeof ename;
            MPI_T_enum_get_info(etype, &items, ename, &len);
            for (int i = 0; i < items; i++) {
                len = sizeof ename;
                if (MPI_T_enum_get_item(etype, i, &item_value, ename, &len) == MPI_SUCCESS &&
                    item_value == value) {
                    snprintf(out, outlen, "%s", ename);
                    break;
                }
            }
        }
        MPI_T_cvar_handle_free(&handle);
    }
    MPI_T_finalize();
}

/* Number of distinct vader segment files mapped into this process. */
static int vader_segments_mapped(void)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096], seen[16][512];
    int n = 0;
    if (!maps)
        return -1;
    while (fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (!path || !strstr(path, "/vader_segment."))
            continue;
        path[strcspn(path, " \n")] = '\0'; /* drop " (deleted)" and newline */
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= strcmp(seen[i], path) == 0;
        if (!dup && n < 16)
            snprintf(seen[n++], sizeof seen[0], "%s", path);
    }
    fclose(maps);
    return n;
}

/*
 * shm: prove that ranks on one node exchanged data through shared memory.
 *
 * What makes this convincing, step by step:
 *  1. main() forces Open MPI's point-to-point stack to pml=ob1 with
 *     btl=self,vader (via OMPI_MCA_* before MPI_Init, overriding anything in
 *     the environment). "self" only delivers a process's messages to itself,
 *     so between two different ranks vader (shared memory, plus CMA/xpmem for
 *     large messages) is the only path left: no tcp, no ucx, no ofi. If the
 *     ranks could not share memory (separate /dev/shm, different nodes, a
 *     private mount namespace each), ob1 finds no BTL to reach the peer and
 *     the run fails ("unreachable"), it does not silently fall back.
 *  2. All ranks must be in one MPI_COMM_TYPE_SHARED communicator.
 *  3. Every rank sends 8 B and 4 MiB (above vader's eager and rendezvous
 *     limits, so the single-copy path is used when there is one) to the next
 *     rank and checks every byte it receives from the previous one.
 *  4. Positive evidence, not just absence of failure: after the exchange each
 *     rank's /proc/self/maps must contain at least two distinct
 *     vader_segment.* files (its own and a peer's): the peer's memory
 *     segment really is mapped into this process.
 *  5. The single-copy mechanism vader chose (cma, xpmem, knem or none) is
 *     read back through MPI_T and printed; "cma" means large messages moved
 *     by process_vm_readv between the ranks, which also needs them to see
 *     each other's PIDs.
 * Output per rank: "rank R of N on HOST shm ok pml=ob1 btl=self,vader
 * single_copy=cma segments_mapped=2".
 */
static int shm(void)
{
    enum { BIG = 4 << 20 };
    int ok = 1, local_size;
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local_size);
    MPI_Comm_free(&node);
    if (size < 2 || local_size != size) {
        if (rank == 0)
            fprintf(stderr, "shm needs >= 2 ranks, all on one node (got %d ranks, %d on this node)\n",
                    size, local_size);
        return verdict(0, "shm");
    }

    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    long small_out = 1000 + rank, small_in = -1;
    MPI_Sendrecv(&small_out, 1, MPI_LONG, next, 3, &small_in, 1, MPI_LONG, prev, 3,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (small_in != 1000 + prev) {
        fprintf(stderr, "rank %d: small message %ld, expected %d\n", rank, small_in, 1000 + prev);
        ok = 0;
    }
    unsigned char *out = malloc(BIG), *in = malloc(BIG);
    if (!out || !in)
        MPI_Abort(MPI_COMM_WORLD, 2);
    for (int i = 0; i < BIG; i++)
        out[i] = (unsigned char)(i * 7 + rank);
    memset(in, 0, BIG);
    MPI_Sendrecv(out, BIG, MPI_BYTE, next, 4, in, BIG, MPI_BYTE, prev, 4, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
    for (int i = 0; i < BIG; i++) {
        if (in[i] != (unsigned char)(i * 7 + prev)) {
            fprintf(stderr, "rank %d: large message wrong at byte %d\n", rank, i);
            ok = 0;
            break;
        }
    }
    free(out);
    free(in);

    int segments = vader_segments_mapped();
    if (segments < 2) {
        fprintf(stderr, "rank %d: %d vader segment(s) mapped, expected own + peer's\n", rank,
                segments);
        ok = 0;
    }
    char single_copy[64];
    cvar_enum_value("btl_vader_single_copy_mechanism", single_copy, sizeof single_copy);

    int all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    printf("rank %d of %d on %s shm %s pml=%s btl=%s single_copy=%s segments_mapped=%d\n", rank,
           size, host, ok ? "ok" : "FAILED", getenv("OMPI_MCA_pml"), getenv("OMPI_MCA_btl"),
           single_copy, segments);
    fflush(stdout);
    return all_ok ? 0 : 1;
}
#endif

static int usage(void)
{
    fprintf(stderr, "usage: mpitest allreduce | ring | pingpong [-r REPS] | shm\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *test = argv[1];
    int reps = 31;
    if (strcmp(test, "pingpong") == 0 && argc == 4 && strcmp(argv[2], "-r") == 0) {
        reps = atoi(argv[3]);
        if (reps < 1)
            return usage();
    } else if (argc != 2) {
        return usage();
    }
    if (strcmp(test, "shm") == 0) {
#ifdef OPEN_MPI
        /* Must happen before MPI_Init, which reads the MCA parameters. */
        setenv("OMPI_MCA_pml", "ob1", 1);
        setenv("OMPI_MCA_btl", "self,vader", 1);
#else
        fprintf(stderr, "mpitest shm: only implemented for Open MPI (vader)\n");
        return 2;
#endif
    } else if (strcmp(test, "allreduce") != 0 && strcmp(test, "ring") != 0 &&
               strcmp(test, "pingpong") != 0) {
        return usage();
    }

    int len;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);

    int status;
    if (strcmp(test, "allreduce") == 0)
        status = allreduce();
    else if (strcmp(test, "ring") == 0)
        status = ring();
    else if (strcmp(test, "pingpong") == 0)
        status = pingpong(reps);
    else
#ifdef OPEN_MPI
        status = shm();
#else
        status = 2;
#endif

    MPI_Finalize();
    return status;
}
