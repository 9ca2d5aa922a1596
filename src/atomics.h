/* Minimal C11-style atomics for the SPSC ring (GCC/Clang __atomic builtins). */
#ifndef RECS_ATOMICS_H
#define RECS_ATOMICS_H

#include <stdint.h>
#include <stdlib.h>

#if !defined(__GNUC__)
#error "atomics.h needs GCC or Clang (__atomic builtins)"
#endif

#define RECS_CACHE_LINE 64

static inline uint64_t recs_load_acquire(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint64_t recs_load_relaxed(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void recs_store_release(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Hint to the CPU that we are in a spin-wait loop. */
static inline void recs_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
#endif
}

/* Cache-line aligned allocation; returns NULL on failure. Free with free(). */
static inline void *recs_aligned_alloc(size_t size) {
    void *p = NULL;
    if (posix_memalign(&p, RECS_CACHE_LINE, size) != 0) {
        return NULL;
    }
    return p;
}

#endif /* RECS_ATOMICS_H */
