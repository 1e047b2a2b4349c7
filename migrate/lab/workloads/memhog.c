/* memhog: a memory workload for migration tests and benchmarks.
 *
 *   memhog MIB [DIRTY_MB_PER_S [TICK_MS [random|text]]]
 *
 * Holds MIB MiB of pseudo-random pages and rewrites DIRTY_MB_PER_S of them per second. Every page's content is a
 * function of (page index, generation), so the whole buffer can be verified at any time. ``text`` fills pages
 * with what a database's or cache's memory looks like instead: "key=value;" records of 48 words and numbers below
 * 100, picked by the same generator (zstd level 1 shrinks 64 MiB of them 3.6x in 1 MiB chunks, level 3 3.8x;
 * random pages it cannot shrink). It verifies a slice of
 * the pages at every tick, so that each second covers them all (like a program that keeps working on all of its
 * memory, not one that stops for a full sweep), and after each full pass prints "verified <pages> gen <total
 * rewrites>", or "CORRUPT page <n>" (then exits 3).
 * Every TICK_MS (default 5) it appends a CLOCK_REALTIME timestamp (microseconds) to /tmp/ticks (the
 * workload's own view of time: a gap there is the migration's downtime as the workload saw it).
 * Static, no libc beyond the basics: it runs in the busybox test image.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static int text;   /* pages of text-like records rather than random bits */

static const char *WORDS[48] = {
    "customer", "order", "status", "active", "pending", "shipped", "id", "name", "email", "total", "price",
    "quantity", "created", "updated", "session", "user", "cart", "item", "country", "city", "street", "zip",
    "payment", "card", "visa", "invoice", "discount", "tax", "currency", "eur", "usd", "product", "category",
    "books", "garden", "kitchen", "toys", "rating", "review", "comment", "true", "false", "null", "token",
    "expires", "region", "warehouse", "stock"};

#define RECORDS (48 * 100)
static char records[RECORDS][24];   /* "word=N;", made once: a page is then memcpy's, as cheap as random bits */
static int record_len[RECORDS];

static void make_records(void) {
    for (int i = 0; i < RECORDS; i++)
        record_len[i] = snprintf(records[i], sizeof records[i], "%s=%d;", WORDS[i % 48], i / 48);
}

static void text_page(uint8_t *page, uint64_t x) {
    int pos = 0;
    while (pos < PAGE) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int r = (int)(x % RECORDS), n = record_len[r];
        if (n > PAGE - pos) n = PAGE - pos;
        memcpy(page + pos, records[r], (size_t)n);
        pos += n;
    }
}

static uint64_t fill(uint64_t *p, uint64_t index, uint64_t gen, int check) {
    uint64_t x = (index + 1) * 0x9E3779B97F4A7C15ULL ^ (gen + 1) * 0xBF58476D1CE4E5B9ULL;
    if (text) {
        uint64_t want[PAGE / 8];
        text_page((uint8_t *)want, x);
        if (check) return memcmp(p, want, PAGE) != 0;
        memcpy(p, want, PAGE);
        return 0;
    }
    for (int i = 0; i < PAGE / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (check) { if (p[i] != x) return 1; } else p[i] = x;
    }
    return 0;
}

static double now(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: memhog MIB [DIRTY_MB_PER_S [TICK_MS [random|text]]]\n"); return 2; }
    text = argc > 4 && strcmp(argv[4], "text") == 0;
    if (text) make_records();
    uint64_t pages = (uint64_t)atol(argv[1]) * 1024 * 1024 / PAGE;
    double dirty = argc > 2 ? atof(argv[2]) : 0;
    int tick_ms = argc > 3 ? atoi(argv[3]) : 5;
    uint8_t *buf = malloc(pages * PAGE);
    uint32_t *gen = calloc(pages, sizeof *gen);
    if (pages && (!buf || !gen)) { fprintf(stderr, "memhog: out of memory\n"); return 1; }
    for (uint64_t i = 0; i < pages; i++) fill((uint64_t *)(buf + i * PAGE), i, 0, 0);
    FILE *ticks = fopen("/tmp/ticks", "a");
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %llu pages\n", (unsigned long long)pages);
    uint64_t next = 0, rewrites = 0, vpos = 0;
    uint64_t slice = pages ? (pages * (uint64_t)tick_ms + 999) / 1000 : 0;   /* all pages once a second */
    double last = now(CLOCK_MONOTONIC), owed = 0;
    for (;;) {
        usleep(tick_ms * 1000);
        double t = now(CLOCK_MONOTONIC);
        if (ticks) { fprintf(ticks, "%.6f\n", now(CLOCK_REALTIME)); fflush(ticks); }
        owed += (t - last) * dirty * 1e6 / PAGE;
        last = t;
        for (; owed >= 1 && pages; owed -= 1, rewrites++) {
            gen[next]++;
            fill((uint64_t *)(buf + next * PAGE), next, gen[next], 0);
            next = (next + 1) % pages;
        }
        for (uint64_t k = 0; k < slice; k++, vpos++) {
            if (fill((uint64_t *)(buf + vpos * PAGE), vpos, gen[vpos], 1)) {
                printf("CORRUPT page %llu\n", (unsigned long long)vpos);
                return 3;
            }
            if (vpos + 1 == pages) {
                printf("verified %llu gen %llu\n", (unsigned long long)pages, (unsigned long long)rewrites);
                vpos = (uint64_t)-1;   /* the loop's increment makes it 0 */
            }
        }
    }
}
