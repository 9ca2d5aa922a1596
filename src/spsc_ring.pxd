# cython: language_level=3
"""C-level API of the lock-free single-producer/single-consumer uint64 ring.

Other Cython modules can use the ring without the Python class and without
any runtime import (everything here is a struct, inline functions or extern
declarations)::

    from spsc_ring cimport spsc_ring_t, spsc_ring_create, spsc_try_push

Build them with ``include_dirs=["src"]`` and Cython ``include_path=["src"]``.

Contract: exactly one thread calls the producer functions (``spsc_try_push``,
``spsc_close``) and exactly one thread calls ``spsc_try_pop`` at any time.
"""

from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc


cdef extern from "atomics.h" nogil:
    uint64_t recs_load_acquire(const uint64_t *p)
    uint64_t recs_load_relaxed(const uint64_t *p)
    void recs_store_release(uint64_t *p, uint64_t v)
    void recs_cpu_relax()
    void *recs_aligned_alloc(size_t size)


# Layout: one 64-byte cache line each for the read-only fields, the
# consumer-owned fields and the producer-owned fields (no false sharing).
# The struct is allocated 64-byte aligned by spsc_ring_create.
ctypedef struct spsc_ring_t:
    # read-only after creation
    uint64_t *buffer
    uint64_t mask
    uint64_t capacity
    char _pad0[40]
    # consumer line
    uint64_t head         # next index to pop (written by consumer only)
    uint64_t cached_tail  # consumer's last seen tail
    char _pad1[48]
    # producer line
    uint64_t tail         # next index to push (written by producer only)
    uint64_t cached_head  # producer's last seen head
    uint64_t closed       # 0/1, set once by close
    char _pad2[40]


cdef inline spsc_ring_t *spsc_ring_create(uint64_t capacity) noexcept nogil:
    """Allocate a ring; capacity must be a power of two >= 1. NULL on OOM."""
    cdef spsc_ring_t *r = <spsc_ring_t *> recs_aligned_alloc(sizeof(spsc_ring_t))
    if r == NULL:
        return NULL
    r.buffer = <uint64_t *> malloc(capacity * sizeof(uint64_t))
    if r.buffer == NULL:
        free(r)
        return NULL
    r.capacity = capacity
    r.mask = capacity - 1
    r.head = 0
    r.cached_tail = 0
    r.tail = 0
    r.cached_head = 0
    r.closed = 0
    return r


cdef inline void spsc_ring_destroy(spsc_ring_t *r) noexcept nogil:
    if r != NULL:
        free(r.buffer)
        free(r)


cdef inline bint spsc_try_push(spsc_ring_t *r, uint64_t value) noexcept nogil:
    """Producer: append value; False if the ring is full."""
    cdef uint64_t tail = recs_load_relaxed(&r.tail)
    if tail - r.cached_head >= r.capacity:
        r.cached_head = recs_load_acquire(&r.head)
        if tail - r.cached_head >= r.capacity:
            return False
    r.buffer[tail & r.mask] = value
    recs_store_release(&r.tail, tail + 1)
    return True


cdef inline bint spsc_try_pop(spsc_ring_t *r, uint64_t *out) noexcept nogil:
    """Consumer: remove the oldest value into out[0]; False if empty."""
    cdef uint64_t head = recs_load_relaxed(&r.head)
    if head == r.cached_tail:
        r.cached_tail = recs_load_acquire(&r.tail)
        if head == r.cached_tail:
            return False
    out[0] = r.buffer[head & r.mask]
    recs_store_release(&r.head, head + 1)
    return True


cdef inline void spsc_close(spsc_ring_t *r) noexcept nogil:
    """Mark the producer finished (values already pushed stay poppable)."""
    recs_store_release(&r.closed, 1)


cdef inline bint spsc_is_closed(spsc_ring_t *r) noexcept nogil:
    return recs_load_acquire(&r.closed) != 0


cdef inline uint64_t spsc_size(spsc_ring_t *r) noexcept nogil:
    """Approximate number of values in the ring (exact when quiescent)."""
    cdef uint64_t head = recs_load_acquire(&r.head)
    cdef uint64_t tail = recs_load_acquire(&r.tail)
    cdef uint64_t n = tail - head
    return n if n <= r.capacity else r.capacity
